"""Header: run name, device, state, epoch/step with a bar, samples/s, the share of time spent
waiting for data (`data 34%`, loud above DATA_WAIT_LOUD: the run is input-bound), ETA, loud warning
badges.

A run of many ranks says how many beside the device ("NVIDIA H200 · 16 ranks on 2 nodes"; samples/s
count the global batch), in a shorter form ("×16 on 2 nodes", "×16") when the long one would push
the state off a narrow screen."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_trainer.text.format import duration
from tui_trainer.ui.widgets.draw import bar
from tui_trainer.ui.view import RunView

DATA_WAIT_LOUD = 0.2  # above this share of wall time waiting for batches, the figure stands out

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
    def on_resize(self) -> None:
        if getattr(self, "_view", None) is not None:  # what fits depends on the width
            self.draw(self._view, "header")

    def draw(self, view: RunView, what: str) -> None:
        self._view = view
        s = view.started
        top = Text()
        top.append(" tui-trainer ", style="bold reverse")
        top.append(f" {s.run_name if s else '…'} ", style="bold")
        state = view.final.status if view.final is not None and hasattr(view.final, "status") else view.state
        link_down = state.startswith("reconnecting")  # "reconnecting… (n)": an ssh:// link retrying
        badge = f" {state} " if link_down else f" {state.upper().replace('_', ' ')} "
        if s:
            forms = world_forms(s.world, s.nodes)
            room = self.size.width - top.cell_len - len(badge) - 1  # the badge whole, before any "…"
            device = next((d for d in (f" {s.device_name}{w} · amp {s.amp} " for w in forms) if len(d) <= room),
                          f" {s.device_name}{forms[-1]} · amp {s.amp} ")
            top.append(device, style="cyan")
        label = "disconnected" if link_down else view.state if view.state in STATE_STYLE else "running"
        top.append(badge, style=STATE_STYLE.get(label, ""))
        for short in (False, True):  # "812/s" for "812 samples/s" when the line would not fit whole
            pace = pace_text(view, short)
            if pace.cell_len + top.cell_len <= self.size.width:
                break
        top.append_text(pace)

        line = Text()
        total = view.total_steps
        epochs = s.epochs if s else 0
        of_epochs, of_steps = f"/{epochs}" if epochs else "", f"/{total}" if total else ""
        line.append(f" epoch {view.epoch}{of_epochs}  step {view.step}{of_steps} ")
        if total:  # unknown (a loader with no len, a loop without run.epochs): no bar to fill
            width = max(10, min(40, self.size.width - 60))  # leave room for a warning badge
            line.append_text(bar(view.step / total, width))
            line.append(f" {100 * view.step / total:3.0f}% ")
        for badge in view.badges[:2]:
            line.append(f" ⚠ {badge} ", style="bold black on yellow")
        joined = Text("\n").join([top, line])
        joined.no_wrap, joined.overflow = True, "ellipsis"  # crop at draw time, whatever the width
        self.update(joined, layout=False)  # fixed size: no layout pass for a new number


def pace_text(view: RunView, short: bool = False) -> Text:
    """samples/s, the input wait (`data 34%`, loud when the run is input-bound), ETA, a manual LR."""
    text = Text()
    if view.samples_per_s:
        text.append(f"  {view.samples_per_s:,.0f}{'/s' if short else ' samples/s'}", style="bold")
    wait = view.machine.data_wait
    if wait is not None and view.final is None:  # the loop's figure, while it runs
        if wait > DATA_WAIT_LOUD:  # input-bound: the figure on a coloured ground
            text.append(" ")
            text.append(f" {data_wait_text(wait)} ", style="bold black on dark_orange")
        else:
            text.append(f"  {data_wait_text(wait)}")
    if view.eta_s is not None and view.state in ("running", "paused"):
        text.append(f"  ETA {duration(view.eta_s)}")
    if view.manual_factor != 1.0:
        text.append(f"  LR ×{view.manual_factor:g} by hand", style="yellow")
    return text


def data_wait_text(wait: float) -> str:
    return f"data {100 * wait:.0f}%"


def world_forms(world: int, nodes: int) -> list[str]:
    """What follows the device name, longest first: nothing in one process."""
    if world <= 1:
        return [""]
    on = f" on {nodes} nodes" if nodes > 1 else ""
    return [f" · {world} ranks{on}", f" ×{world}{on}", f" ×{world}"]
