"""LR schedule: the planned curve over the whole run, where we are, what actually happened, and
after a change by hand the re-planned remainder. ReduceLROnPlateau has no future to plan: it
shows its history, the current value and its patience counter."""

from __future__ import annotations

import textwrap

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static
from tui_trainer.text.format import lr_text
from tui_trainer.ui.view import RunView
from tui_trainer.text.plot import braille_plot

PLAN_COLORS = ("dodger_blue1", "cyan", "magenta", "white")


def thin(xs: list, ys: list, points: int) -> tuple[list, list]:
    """At most about `points` points, the last one kept (where the marker is)."""
    stride = max(1, len(xs) // max(1, points))
    if stride == 1:
        return list(xs), list(ys)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _legend(items: list[tuple[str, str]], now: str, width: int) -> Text:
    """The legend: one line when it fits (with several groups "plan fc" becomes "fc"); otherwise
    as many lines as it needs, an entry never cut in the middle (the plot gives up the rows)."""
    def entries(short: bool) -> list[Text]:
        out = []
        for label, style in items:
            t = Text(no_wrap=True)
            t.append("━ ", style=style)
            t.append(label.removeprefix("plan ") if short else label)
            out.append(t)
        marker = Text(no_wrap=True)
        marker.append("│ ", style="red")
        # a note longer than the pane ("now (not plannable: ...)") breaks between words, never inside one
        marker.append("\n  ".join(textwrap.wrap(now, max(10, width - 2))) if len(now) + 2 > width else now)
        return [*out, marker]

    for short in (False, True):
        parts = entries(short)
        if sum(p.cell_len for p in parts) + 2 * (len(parts) - 1) <= width:
            return Text("  ").join(parts)
    lines: list[list[Text]] = [[]]
    for part in entries(True):
        used = sum(p.cell_len for p in lines[-1]) + 2 * len(lines[-1])
        if lines[-1] and used + part.cell_len > width:
            lines.append([])
        lines[-1].append(part)
    text = Text("\n").join(Text("  ").join(line) for line in lines)
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _x_end(view: RunView) -> int:
    """The plot's last step: the run's; a run of unknown length (a loader with no len) grows with it."""
    return max(view.started.plan.total_steps, view.step, 1)


class LrPane(Vertical):
    def compose(self):
        yield Static(id="lr-plot")
        yield Static(id="lr-numbers")

    def on_mount(self) -> None:
        self.border_title = "LR schedule"
        self.border_subtitle = "l lower · L undo"

    def draw(self, view: RunView, what: str) -> None:
        s = view.started
        if s is None:
            return
        numbers = self._numbers(view)
        lines = numbers.plain.count("\n")
        self.query_one("#lr-numbers", Static).update(numbers, layout=lines != getattr(self, "_lines", None))
        self._lines = lines
        plot = self.query_one("#lr-plot", Static)
        width, height = plot.size.width, plot.size.height
        if width < 8 or height < 3:
            return
        # Redraw only when something visible moved: the marker's column, the history, a manual
        # change, the size.
        history = view.lr_history[0] if view.lr_history else None
        signature = (s, view.manual_factor, width, height, int(view.step * width / _x_end(view)),
                     (len(history) // 8, history.stride) if history else None)
        if signature == getattr(self, "_drawn", None):
            return
        self._drawn = signature
        plot.update(self._plot(view, width, height), layout=False)

    def _plot(self, view: RunView, width: int, height: int) -> Text:
        plan = view.started.plan
        points = 2 * width  # a braille cell is 2 dots wide: more points only cost time
        series, legend = [], []
        if not plan.adaptive:
            for g, (name, lrs) in enumerate(list(zip(plan.groups, plan.lrs))[:len(PLAN_COLORS)]):
                series.append((*thin(list(plan.steps), list(lrs), points), PLAN_COLORS[g]))
                legend.append((f"plan {name}" if len(plan.groups) > 1 else "plan", PLAN_COLORS[g]))
            if view.manual_factor != 1.0:
                xs, ys = view.replanned(0)
                if xs:
                    series.append((*thin(xs, ys, points), "orange1"))
                    legend.append(("re-planned", "orange1"))
        history = view.lr_history[0] if view.lr_history else None
        if history is not None and len(history):
            series.append((*thin(history.xs, history.ys, points), "green3"))
            legend.append(("actual", "green3"))
        top = max((max(ys) for _, ys, _ in series if ys), default=0.0) or 1.0
        why = plan.note or "ReduceLROnPlateau: history only, no planned future"
        text = _legend(legend, "now" if not plan.adaptive else f"now ({why})", width)
        rows = text.plain.count("\n") + 1
        text.append("\n")
        text.append_text(braille_plot(series, width, max(2, height - rows), (0, _x_end(view)),
                                      (0.0, top * 1.05), marker=(view.step, "red")))
        return text

    def _numbers(self, view: RunView) -> Text:
        s = view.started
        text = Text()
        for name, lr in zip(s.plan.groups, view.lrs):
            text.append(f"{name}: ", style="bold")
            text.append(f"{lr_text(lr)}  ")
        if view.manual_factor != 1.0:
            text.append(f"\nby hand ×{view.manual_factor:g} ({len(view.manual_changes)} change"
                        f"{'s' if len(view.manual_changes) != 1 else ''}, last at step "
                        f"{view.manual_changes[-1][0] if view.manual_changes else '-'})", style="yellow")
        last = view.last_epoch
        if s.plan.adaptive and last is not None and last.plateau is not None:
            bad, patience = last.plateau
            text.append(f"\nplateau: no improvement {bad}/{patience} epochs", style="yellow" if bad else "")
        return text
