"""The Loss pane's chart as text (tui_trainer/ui/widgets/loss_chart.py) from a RunView fed real
events: which metrics the key cycles through, what the legend says, a spike that survives a long
run, and the log scale."""

from __future__ import annotations

import math

from tests.helpers.factories import T0, epoch_end, run_started
from tui_trainer.engine import events as ev
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.loss_chart import chart, chart_metrics, is_loss


def fed(steps: int = 200, per_report: int = 10, spike_at: int | None = None, monitor: str = "val_loss",
        epochs_every: int = 50) -> RunView:
    view = RunView()
    view.apply(run_started(monitor=monitor, total_steps=steps))
    for step in range(per_report, steps + 1, per_report):
        first = step - per_report + 1
        losses = tuple(50.0 if s == spike_at else 2.0 * math.exp(-s / (steps / 4)) + 0.1
                       for s in range(first, step + 1))
        view.apply(ev.StepReport(step, 1, first, losses, (0.1,), 10.0, 1.0, time=T0 + step))
        if step % epochs_every == 0:
            e = step // epochs_every
            view.apply(epoch_end(e, step=step, val_loss=1.0 / e, val_acc=0.5 + 0.05 * e, monitor=monitor,
                                 metrics={"val_dice": 0.4 + 0.1 * e, "val_iou": 0.3 + 0.1 * e}))
    return view


def dots(plot_line: str) -> int:
    """Braille dots drawn in one line of a plot (its axis label and tick left out)."""
    return sum(bin(ord(ch) - 0x2800).count("1") for ch in plot_line if 0x2800 < ord(ch) <= 0x28FF)


def test_the_metric_key_cycles_train_loss_then_the_monitor_then_the_rest_in_the_runs_order():
    assert chart_metrics(fed(monitor="val_iou")) == ["train_loss", "val_iou", "val_loss", "val_acc", "val_dice"]
    assert chart_metrics(fed()) == ["train_loss", "val_loss", "val_acc", "val_dice", "val_iou"]
    assert chart_metrics(fed(steps=20)) == ["train_loss"], "no epoch ended yet: nothing else to show"
    assert is_loss("train_loss") and is_loss("val_loss") and not is_loss("val_acc") and not is_loss("val_dice")


def test_train_loss_chart_says_what_it_shows_and_fills_its_box():
    legend, plot = chart(fed(), "train_loss", False, 64, 10)
    assert legend.plain == "━ train loss, smoothed 0.1448  ⣿ raw 0.1366  ● val loss 0.2500"
    lines = plot.plain.split("\n")
    assert len(lines) == 10 and max(len(line) for line in lines) <= 64
    assert lines[-1].split() == ["0", "100", "200"], "x: the steps of the run so far"
    assert plot.plain.count("●") == 4, "validation: a point at each epoch's last step"
    assert chart(fed(), "train_loss", False, 60, 10)[0].plain == "━ smooth 0.1448  ⣿ raw 0.1366  ● val 0.2500"
    assert chart(fed(), "train_loss", False, 30, 10)[0].plain == "━ 0.1448  ⣿ 0.1366  ● 0.2500"


def test_a_one_step_spike_is_still_drawn_after_a_million_steps():
    view = fed(steps=1_000_000, per_report=100, spike_at=123_457, epochs_every=200_000)
    assert view.loss.per_bucket > 100 and len(view.loss) <= RunView.LOSS_BUCKETS
    _, plot = chart(view, "train_loss", False, 60, 10)
    lines = plot.plain.split("\n")
    assert lines[0].split()[0] == "52.5", "the y axis reaches the spike (50, plus 5%)"
    assert dots(lines[0]) > 0, "the spike reaches the top row"
    assert lines[-1].split() == ["0", "5.0e+05", "1.0e+06"], "the whole run"
    column = lines[0].index("┤") + 1 + round(123_457 / 1_000_000 * (len(lines[0]) - lines[0].index("┤") - 2))
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in lines[0][column - 1:column + 2]), "where it happened"


def test_log_scale_for_losses_only():
    view = fed(spike_at=100)
    _, linear = chart(view, "train_loss", False, 60, 10)
    _, log = chart(view, "train_loss", True, 60, 10)
    labels = [line.split("┤")[0].strip() for line in log.plain.split("\n") if "┤" in line]
    assert labels[0] == "57.5" and labels[-1] == "0.119", "log: labels in the loss's own units"
    assert labels[1] == f"{math.sqrt(57.5 * 0.11878):.3g}", "the middle label is the geometric mean"
    # on a linear axis the small losses are squashed into the bottom rows; a log axis spreads them
    bottom_half = lambda text: sum(dots(line) for line in text.plain.split("\n")[4:9])
    top_half = lambda text: sum(dots(line) for line in text.plain.split("\n")[:4])
    assert top_half(log) > top_half(linear)
    assert bottom_half(linear) > 0
    _, acc_linear = chart(view, "val_acc", False, 60, 10)
    _, acc_log = chart(view, "val_acc", True, 60, 10)
    assert acc_log.plain == acc_linear.plain, "accuracy is never drawn on a log scale"


def test_epoch_metric_chart():
    legend, plot = chart(fed(), "val_dice", False, 60, 10)
    assert legend.plain == "━● val_dice 0.8000  min 0.5000  max 0.8000"
    assert plot.plain.count("●") == 4 and plot.plain.split("\n")[-1].split() == ["0", "100", "200"]
    assert chart(fed(steps=20), "val_dice", False, 60, 10)[0].plain.startswith("val_dice: no value yet")
    assert chart(RunView(), "train_loss", False, 60, 10)[0].plain == "the chart starts with the first report"


def test_a_long_run_of_epochs_shows_the_latest_value_and_the_whole_range():
    view = RunView()
    view.apply(run_started(monitor="val_dice"))
    for e in range(1, 2001):  # 2,000 epochs: the 512-bucket history merged twice
        view.apply(epoch_end(e, step=10 * e, metrics={"val_dice": 0.1 + e / 10_000}, monitor="val_dice"))
    history = view.epoch_history["val_dice"]
    assert history.per_bucket == 4 and len(history) <= RunView.METRIC_BUCKETS
    legend, plot = chart(view, "val_dice", False, 60, 10)
    assert legend.plain == "━● val_dice 0.3000  min 0.1001  max 0.3000", "the last epoch's, not a bucket's mean"
    assert plot.plain.split("\n")[-1].split() == ["0", "1.0e+04", "2.0e+04"]
