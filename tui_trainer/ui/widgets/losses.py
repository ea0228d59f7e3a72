"""Loss: train-loss sparklines (raw and smoothed), validation per epoch, best so far, early stop."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

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
        text = Text()
        text.append(f"{'epoch':>6}  {'train':>7}  {'val loss':>8}  {'val acc':>7}", style="bold")
        rows = max(1, self.size.height - 9)  # what the labels, sparklines, header and footer leave
        for e in list(view.epochs)[-rows:]:
            acc = f"{100 * e.val_acc:.1f}%" if e.val_acc is not None else "-"
            text.append(f"\n{e.epoch:>6}  {_f(e.train_loss):>7}  {_f(e.val_loss):>8}  {acc:>7}")
            if e.improved:
                text.append("  ★ best", style="green3")
        last = view.last_epoch
        if last is not None and last.best is not None:
            text.append(f"\nbest {last.monitor} {last.best:.4f} @ epoch {last.best_epoch}", style="green3")
        if last is not None and last.patience:
            style = "yellow" if last.bad_epochs else ""
            text.append(f"\nearly stop: no improvement {last.bad_epochs}/{last.patience}", style=style)
        return text


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
