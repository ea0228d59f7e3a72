"""Loss: a chart of the whole run (train loss smoothed over its raw min-max band, validation
points; `m` cycles through every metric the run reports, `g` a log scale for losses), and the
epoch table: validation and [[metrics]] per epoch, best so far, early stop."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from tui_trainer.text.format import metric_text
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.loss_chart import TRAIN, chart, chart_metrics, display_name, is_loss

CHART_ROWS = 6  # the chart's least height: 5 rows of braille (20 dots) and the x axis; the table gives way


class LossPane(Vertical):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metric = TRAIN  # what the chart shows (`m`)
        self.log_scale = False  # `g`: for losses

    def compose(self):
        yield Static(id="loss-legend")
        yield Static(id="loss-chart")
        yield Static(id="loss-epochs")

    def on_mount(self) -> None:
        self.border_title = "Loss"
        self.border_subtitle = "m metric · g log"

    # ------------------------------------------------------------------ keys (called by the app)

    def next_metric(self, view: RunView) -> str:
        """Show the next of `chart_metrics` (after the last, the train loss again)."""
        names = chart_metrics(view)
        at = names.index(self.metric) if self.metric in names else -1
        self.metric = names[(at + 1) % len(names)]
        return self.metric

    def toggle_log(self) -> bool:
        self.log_scale = not self.log_scale
        return self.log_scale

    @property
    def title(self) -> str:
        """What the chart shows: "Loss · val_dice", "Loss · train loss · log"."""
        log = " · log" if self.log_scale and is_loss(self.metric) else ""
        return f"Loss · {display_name(self.metric)}{log}"

    # ------------------------------------------------------------------ drawing

    def on_resize(self) -> None:
        # shown at last (a small terminal's key 3) or resized: a draw before the layout had no room
        if getattr(self, "_view", None) is not None:
            self.draw(self._view, "loss")

    def draw(self, view: RunView, what: str) -> None:
        self._view = view
        if self.border_title != self.title:
            self.border_title = self.title
        shown = (len(view.epochs), view.epochs[-1].epoch if view.epochs else 0, self.size)
        if shown != getattr(self, "_epochs_shown", None):  # the table changes once an epoch
            self._epochs_shown = shown
            text = self._epochs(view)
            lines = text.plain.count("\n")
            self.query_one("#loss-epochs", Static).update(text, layout=lines != getattr(self, "_epoch_lines", None))
            self._epoch_lines = lines
        # the chart's box from the pane's (the table's height is its lines), not from its own size,
        # which is only laid out again after this call when the table grew
        self._draw_chart(view, self.size.width, self.size.height - 1 - (self._epoch_lines + 1))

    def _draw_chart(self, view: RunView, width: int, height: int) -> None:
        if width < 8 or height < 2:
            return
        # only when something visible moved: new losses or epochs, the metric, the scale, the size
        signature = (self.metric, self.log_scale, width, height, view.loss.added, len(view.epochs))
        if signature == getattr(self, "_drawn", None):
            return
        self._drawn = signature
        legend, text = chart(view, self.metric, self.log_scale, width, height)
        self.query_one("#loss-legend", Static).update(legend, layout=False)
        self.query_one("#loss-chart", Static).update(text, layout=False)

    def _epochs(self, view: RunView) -> Text:
        """Fixed-width lines, not a rich Table: with short epochs this redraws several times a
        second, and a Table in a Static is measured and rendered again by every layout pass."""
        if not view.epochs:
            return Text("validation after the first epoch", style="grey50")
        width = self.size.width
        last = view.last_epoch
        table = plan_table(width, view.has_val_acc, view.metric_names, last.monitor if last is not None else None)
        pad = " " * table.gap
        text = Text()
        header = f"{'epoch':>{table.epoch_width}}{pad}{'train':>7}{pad}{'val loss':>8}"
        if table.acc:
            header += f"{pad}{'val acc':>7}"
        for name in table.metrics:
            header += f"{pad}{metric_header(name):>{METRIC_WIDTH}}"
        text.append(header, style="bold")
        if table.hidden:
            text.append(table.more, style="grey50")
        # what the legend and the chart (at least CHART_ROWS, and 60% of the pane) leave: the header
        # and the last epoch always; then the best line, the early-stop line and more epochs
        height = self.size.height
        room = height - 1 - max(CHART_ROWS, int(0.6 * (height - 1))) - 2
        best = last is not None and last.best is not None and room >= 1
        early = bool(last is not None and last.patience) and room >= 1 + best
        rows = max(1, 1 + room - best - early)
        for e in list(view.epochs)[-rows:]:
            line = f"\n{e.epoch:>{table.epoch_width}}{pad}{_f(e.train_loss):>7}{pad}{_f(e.val_loss):>8}"
            if table.acc:
                acc = f"{100 * e.val_acc:.1f}%" if e.val_acc is not None else "-"
                line += f"{pad}{acc:>7}"
            for name in table.metrics:
                line += f"{pad}{metric_text(e.metrics.get(name), METRIC_WIDTH):>{METRIC_WIDTH}}"
            text.append(line)
            if e.improved:
                text.append(table.marker, style="green3")
        if best:
            text.append("\n" + _fit([f"best {last.monitor} {last.best:.4f} @ epoch {last.best_epoch}",
                                      f"best {last.monitor} {last.best:.4f} @ {last.best_epoch}"], width),
                        style="green3")
        if early:
            style = "yellow" if last.bad_epochs else ""
            text.append(f"\nearly stop: no improvement {last.bad_epochs}/{last.patience}", style=style)
        return text


METRIC_WIDTH = 7  # a metric column: 4 significant digits of a score (0.8123, -0.8123, 1.235e5)
_BUILTIN = ("train_loss", "val_loss", "val_acc")  # their own columns, never a metric column
# the widths tried in order, roomiest first: (gap between columns, epoch column, best marker)
_LEVELS = ((2, 6, "  ★ best"), (2, 6, " ★"), (1, 5, " ★"))


@dataclass(frozen=True)
class TablePlan:
    gap: int
    epoch_width: int
    marker: str  # after an improved epoch's row
    acc: bool  # the val acc column
    metrics: tuple[str, ...]  # the metric columns shown (monitor names), in the run's order
    hidden: int  # metrics left out for want of room: "+N more"
    more: str = ""  # what the header says about them: "  +2 more", or " +2" where that does not fit

    @property
    def width(self) -> int:
        """Of the widest row (an improved epoch's)."""
        gap = self.gap
        return (self.epoch_width + gap + 7 + gap + 8 + (gap + 7 if self.acc else 0)
                + len(self.metrics) * (gap + METRIC_WIDTH) + len(self.marker))

    @property
    def header_width(self) -> int:
        gap = self.gap
        return (self.epoch_width + gap + 7 + gap + 8 + (gap + 7 if self.acc else 0)
                + len(self.metrics) * (gap + METRIC_WIDTH) + len(self.more))


def plan_table(width: int, acc: bool, names, monitor: str | None) -> TablePlan:
    """The epoch table's columns for a pane `width` wide: every metric if they fit (roomiest
    spacing that does), else as many as fit, the monitored one always, dropping from the right,
    with "+N more" after the header. A run without metrics gets today's table (level 0)."""
    names = [n for n in names if n not in _BUILTIN]
    must = [monitor] if monitor in names else []
    others = [n for n in names if n not in must]
    found: TablePlan | None = None
    for gap, epoch_width, marker in _LEVELS:
        for k in range(len(others), -1, -1):
            keep = set(must + others[:k])
            chosen = tuple(n for n in names if n in keep)
            hidden = len(others) - k
            mores = (f"  +{hidden} more", f" +{hidden} more") if hidden else ("",)
            if hidden and k == 0:
                mores += (f" +{hidden}",)  # the words make way for the monitored metric, not for another
            plans = [TablePlan(gap, epoch_width, marker, acc, chosen, hidden, more) for more in mores]
            plan = next((p for p in plans if p.width <= width and p.header_width <= width), None)
            if plan is not None:
                break
        else:
            continue  # not even the monitored metric fits this way
        if plan.hidden == 0:
            return plan
        if found is None or plan.hidden < found.hidden:
            found = plan
    if found is not None:
        return found
    gap, epoch_width, marker = _LEVELS[-1]  # too narrow for anything: the least, overflowing
    return TablePlan(gap, epoch_width, marker, acc, tuple(must), len(others), f" +{len(others)}" if others else "")


def metric_header(name: str) -> str:
    """A metric column's header: its key (val_dice -> dice), cut to the column with an ellipsis."""
    key = name.removeprefix("val_")
    return key if len(key) <= METRIC_WIDTH else key[:METRIC_WIDTH - 1] + "…"


def _fit(variants: list[str], width: int) -> str:
    """The first of `variants` that fits `width`, else the last."""
    return next((v for v in variants if len(v) <= width), variants[-1])


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
