"""Loss: train-loss sparklines (raw and smoothed), validation and [[metrics]] per epoch, best so far,
early stop."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui_trainer.text.format import metric_text
from tui_trainer.ui.view import RunView


class LossPane(Vertical):
    def compose(self):
        yield Static(id="loss-raw-label", classes="spark-label")
        yield Sparkline([], id="loss-raw")
        yield Static(id="loss-smooth-label", classes="spark-label")
        yield Sparkline([], id="loss-smooth")
        yield Static(id="loss-epochs")

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def draw(self, view: RunView, what: str) -> None:
        width = max(10, self.size.width - 2)
        raw = list(view.recent)[-width * 2:]
        smooth = list(view.smoothed)[-width * 2:]
        self.query_one("#loss-raw", Sparkline).data = raw
        self.query_one("#loss-smooth", Sparkline).data = smooth
        last = f"{raw[-1]:.4f}" if raw else "-"
        self.query_one("#loss-raw-label", Static).update(
            Text.assemble(("train loss ", "bold"), f"{last}", (f"  (last {len(raw)} steps)", "grey50")), layout=False)
        ema = f"{smooth[-1]:.4f}" if smooth else "-"
        self.query_one("#loss-smooth-label", Static).update(
            Text.assemble(("smoothed ", "bold"), ema, ("  (EMA 0.9)", "grey50")), layout=False)
        shown = (len(view.epochs), view.epochs[-1].epoch if view.epochs else 0, self.size)
        if shown != getattr(self, "_epochs_shown", None):  # the table changes once an epoch
            self._epochs_shown = shown
            text = self._epochs(view)
            lines = text.plain.count("\n")
            self.query_one("#loss-epochs", Static).update(text, layout=lines != getattr(self, "_epoch_lines", None))
            self._epoch_lines = lines

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
        rows = max(1, self.size.height - 9)  # what the labels, sparklines, header and footer leave
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
        if last is not None and last.best is not None:
            text.append("\n" + _fit([f"best {last.monitor} {last.best:.4f} @ epoch {last.best_epoch}",
                                      f"best {last.monitor} {last.best:.4f} @ {last.best_epoch}"], width),
                        style="green3")
        if last is not None and last.patience:
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
