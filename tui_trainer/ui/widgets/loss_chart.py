"""The Loss pane's chart of the whole run, as rich Text (no Textual here, so it is cheap to test).

`train_loss`: the per-step loss as a faint min-max band (a spike stays visible however long the
run), its EMA as the line over it, validation loss as "●" at each epoch's last step. Any other
name: that per-epoch series (val_loss, val_acc, each [[metrics]] entry) as a line with its points.
The history is the view's bounded `MinMaxSeries`, gathered into at most one column per braille
dot at draw time, so a draw costs about the same at step 100 and at step 1,000,000.
"""

from __future__ import annotations

from rich.text import Text

from tui_trainer.text.format import metric_text
from tui_trainer.text.plot import braille_plot
from tui_trainer.ui.view import MinMaxSeries, RunView

RAW, SMOOTH, VAL, METRIC = "grey42", "gold1", "deep_sky_blue1", "green3"
TRAIN = "train_loss"


def chart_metrics(view: RunView) -> list[str]:
    """What the metric key cycles through: the train loss first (with the validation points),
    then the monitored metric, the validation loss, val acc and every [[metrics]] entry in the
    run's order, each once it has a value."""
    names = [TRAIN]
    monitor = view.started.monitor if view.started is not None else None
    for name in (monitor, "val_loss", "val_acc", *view.metric_names):
        if name and name not in names and name in view.epoch_history:
            names.append(name)
    return names


def is_loss(name: str) -> bool:
    """The log scale is for losses (accuracy and scores in [0, 1] read better linear)."""
    return name == TRAIN or name.endswith("loss")


def display_name(name: str) -> str:
    return {"train_loss": "train loss", "val_loss": "val loss", "val_acc": "val acc"}.get(name, name)


def chart(view: RunView, metric: str, log: bool, width: int, height: int) -> tuple[Text, Text]:
    """(the legend line, the plot `width` x `height`) of `metric` over the run so far."""
    log = log and is_loss(metric)
    if metric == TRAIN:
        return _train_chart(view, log, width, height)
    return _epoch_chart(view, metric, log, width, height)


def _extent(view: RunView, *histories: MinMaxSeries | None) -> tuple[float, float] | None:
    """The x range the chart spans: from the run's start (or resume) step to the latest point."""
    firsts = [h.xs[0] - h.per_bucket for h in histories if h is not None and len(h)]  # where a first bucket began
    lasts = [h.xs[-1] for h in histories if h is not None and len(h)]
    if not firsts:
        return None
    x0 = view.started.start_step if view.started is not None else max(0.0, min(firsts))
    x0 = min(x0, max(0.0, min(firsts)))
    return x0, max(max(lasts), x0 + 1)


def _band(xs: list[float], lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """Each column's min and max as a zigzag line: drawn, it fills the band between them."""
    bx: list[float] = []
    by: list[float] = []
    for x, a, b in zip(xs, lo, hi):
        bx.append(x)
        by.append(a)
        if b != a:
            bx.append(x)
            by.append(b)
    return bx, by


def _y_range(lows: list[float], highs: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(lows), max(highs)
    if log:
        positive = [v for v in lows if v > 0] or [v for v in highs if v > 0] or [1.0]
        lo = max(min(positive), hi * 1e-12) if hi > 0 else min(positive)
        return lo / 1.15, max(hi, lo) * 1.15
    span = hi - lo or abs(hi) * 0.1 or 1.0
    y0 = lo - 0.05 * span
    if lo >= 0 > y0:
        y0 = 0.0  # a loss (or a score) never below 0: no negative axis
    return y0, hi + 0.05 * span


def _latest(view: RunView, name: str) -> float | None:
    """The latest epoch's value of `name` (a bucket's mean is not it once buckets hold several)."""
    e = view.last_epoch
    value = None if e is None else {"val_loss": e.val_loss, "val_acc": e.val_acc}.get(name, e.metrics.get(name))
    history = view.epoch_history.get(name)
    return value if value is not None else history.last if history is not None else None


def _legend(variants: list[list[tuple[str, str, str]]], width: int) -> Text:
    """The first variant (a list of (style, glyph, words) entries) that fits `width`, else the last."""
    for entries in variants:
        if sum(len(g) + bool(g) + len(w) for _, g, w in entries) + 2 * (len(entries) - 1) <= width:
            break
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (style, glyph, words) in enumerate(entries):
        if i:
            text.append("  ")
        if glyph:
            text.append(glyph, style=style)
            text.append(" ")
        text.append(words, style="" if glyph else "grey62")
    return text


def _train_chart(view: RunView, log: bool, width: int, height: int) -> tuple[Text, Text]:
    val = view.epoch_history.get("val_loss")
    span = _extent(view, view.loss, val)
    if span is None:
        return Text("the chart starts with the first report", style="grey50"), Text()
    n = 2 * width  # a braille cell is 2 dots wide: more columns only cost time
    xs, lo, hi, mean = view.loss.columns(n)
    sx, _, _, smooth = view.loss_ema.columns(n)
    if len(view.loss) > n:  # about a column per dot: each one's min-max range, filled
        bands, series = [(xs, lo, hi, RAW)], [(sx, smooth, SMOOTH)]
    else:  # fewer points than dots: the raw loss is a line through them
        bands, series = [], [(xs, mean, RAW), (sx, smooth, SMOOTH)]
    points = []
    lows, highs = lo + smooth, hi + smooth
    if val is not None and len(val):
        vx, vlo, vhi = list(val.xs), list(val.lo), list(val.hi)
        points.append((*_band(vx, vlo, vhi), VAL))
        lows += vlo
        highs += vhi
    ema, last = metric_text(view.ema), metric_text(view.last_loss)
    vals = [metric_text(_latest(view, "val_loss"))] if points else []
    legend = _legend([  # the roomiest that fits
        [(SMOOTH, "━", f"train loss, smoothed {ema}"), (RAW, "⣿", f"raw {last}"),
         *[(VAL, "●", f"val loss {v}") for v in vals]],
        [(SMOOTH, "━", f"smooth {ema}"), (RAW, "⣿", f"raw {last}"), *[(VAL, "●", f"val {v}") for v in vals]],
        [(SMOOTH, "━", ema), (RAW, "⣿", last), *[(VAL, "●", v) for v in vals]],
    ], width)
    plot = braille_plot(series, width, height, span, _y_range(lows, highs, log), points=points, bands=bands,
                        log_y=log)
    return legend, plot


def _epoch_chart(view: RunView, metric: str, log: bool, width: int, height: int) -> tuple[Text, Text]:
    history = view.epoch_history.get(metric)
    span = _extent(view, view.loss, history)  # the train loss's steps too: the same x axis as its chart
    if history is None or not len(history) or span is None:
        return Text(f"{display_name(metric)}: no value yet (after the first epoch)", style="grey50"), Text()
    xs, lo, hi, means = history.columns(2 * width)  # at most a column per dot: a bounded draw
    series = [(*_band(xs, lo, hi), METRIC)]
    points = [(xs, means, METRIC)]
    name = display_name(metric)
    last, low, high = metric_text(_latest(view, metric)), metric_text(min(lo)), metric_text(max(hi))
    legend = _legend([
        [(METRIC, "━●", f"{name} {last}"), ("", "", f"min {low}"), ("", "", f"max {high}")],
        [(METRIC, "━●", last), ("", "", f"min {low}"), ("", "", f"max {high}")],
        [(METRIC, "━●", last)],
    ], width)
    plot = braille_plot(series, width, height, span, _y_range(lo, hi, log), points=points, log_y=log)
    return legend, plot
