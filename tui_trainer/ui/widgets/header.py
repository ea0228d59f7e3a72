"""Header: run name, device, state, epoch/step with a bar, samples/s, ETA, loud warning badges."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_trainer.text.format import duration
from tui_trainer.ui.widgets.draw import bar
from tui_trainer.ui.view import RunView

STATE_STYLE = {
    "starting": "bold black on grey70",
    "running": "bold black on green3",
    "paused": "bold black on yellow",
    "stopping": "bold black on magenta",
    "finished": "bold black on dodger_blue1",
    "failed": "bold white on red3",
    "disconnected": "bold white on grey35",
    "dead": "bold white on grey35",
}


class RunHeader(Static):
    def draw(self, view: RunView, what: str) -> None:
        s = view.started
        top = Text()
        top.append(" tui-trainer ", style="bold reverse")
        top.append(f" {s.run_name if s else '…'} ", style="bold")
        if s:
            top.append(f" {s.device_name} · amp {s.amp} ", style="cyan")
        state = view.final.status if view.final is not None and hasattr(view.final, "status") else view.state
        label = view.state if view.state in STATE_STYLE else "running"
        top.append(f" {state.upper().replace('_', ' ')} ", style=STATE_STYLE.get(label, ""))
        if view.samples_per_s:
            top.append(f"  {view.samples_per_s:,.0f} samples/s", style="bold")
        if view.eta_s is not None and view.state in ("running", "paused"):
            top.append(f"  ETA {duration(view.eta_s)}")
        if view.manual_factor != 1.0:
            top.append(f"  LR ×{view.manual_factor:g} by hand", style="yellow")

        line = Text()
        total = view.total_steps or 1
        epochs = s.epochs if s else 0
        line.append(f" epoch {view.epoch}/{epochs}  step {view.step}/{view.total_steps} ")
        width = max(10, min(40, self.size.width - 60))  # leave room for a warning badge
        line.append_text(bar(view.step / total, width))
        line.append(f" {100 * view.step / total:3.0f}% ")
        for badge in view.badges[:2]:
            line.append(f" ⚠ {badge} ", style="bold black on yellow")
        joined = Text("\n").join([top, line])
        joined.no_wrap, joined.overflow = True, "ellipsis"  # crop at draw time, whatever the width
        self.update(joined, layout=False)  # fixed size: no layout pass for a new number
