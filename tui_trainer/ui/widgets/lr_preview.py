"""LR schedule: the planned curve over the whole run, where we are, what actually happened, and
after a change by hand the re-planned remainder. ReduceLROnPlateau has no future to plan: it
shows its history, the current value and its patience counter."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from tui_trainer.run.format import lr_text
from tui_trainer.ui.view import RunView

PLAN_COLORS = ("blue", "cyan", "magenta", "white")


class LrPane(Vertical):
    def compose(self):
        yield PlotextPlot(id="lr-plot")
        yield Static(id="lr-numbers")

    def on_mount(self) -> None:
        self.border_title = "LR schedule"
        self.border_subtitle = "l lower · L undo"

    def update_from(self, view: RunView) -> None:
        s = view.started
        if s is None:
            return
        self.query_one("#lr-numbers", Static).update(self._numbers(view))
        # Redraw the plot only when something visible moved: the marker's column, the history's
        # length bucket, a manual change, the size. plotext is the costliest thing we draw.
        width = max(1, self.size.width)
        signature = (s, view.manual_factor, width, self.size.height,
                     int(view.step * width / max(1, s.plan.total_steps)), len(view.lr_history[0]) // 8
                     if view.lr_history else 0, view.lr_history[0].stride if view.lr_history else 0)
        if signature == getattr(self, "_drawn", None):
            return
        self._drawn = signature
        plt = self.query_one(PlotextPlot).plt
        plt.clear_data()
        plt.clear_figure()
        plan = s.plan
        if not plan.adaptive:
            for g, (name, lrs) in enumerate(list(zip(plan.groups, plan.lrs))[:len(PLAN_COLORS)]):
                plt.plot(list(plan.steps), list(lrs), color=PLAN_COLORS[g], marker="braille",
                         label=f"plan {name}" if len(plan.groups) > 1 else "plan")
            if view.manual_factor != 1.0:
                xs, ys = view.replanned(0)
                if xs:
                    plt.plot(xs, ys, color="orange", marker="braille", label="re-planned")
        for g, series in enumerate(view.lr_history[:1]):
            if len(series):
                plt.plot(series.xs, series.ys, color="green", marker="braille", label="actual")
        if view.step:
            plt.vline(view.step, color="red")
        plt.xlim(0, max(plan.total_steps, 1))
        plt.ylim(0, None)
        plt.xfrequency(3)
        plt.yfrequency(3)
        plt.title("ReduceLROnPlateau: history only (no planned future)" if plan.adaptive else "")
        self.query_one(PlotextPlot).refresh()

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
