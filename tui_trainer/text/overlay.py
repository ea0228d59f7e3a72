"""Several runs' curves on one braille plot, one colour and one legend entry each (`tui-trainer
compare`). Plain rich Text on top of text/plot.py: ranges shared by every curve, each curve thinned
to what the plot can show, and a legend that wraps whole entries onto more lines."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text

from tui_trainer.text.plot import braille_plot

RUN_COLORS = ("dodger_blue1", "orange1", "green3", "magenta", "yellow", "cyan")


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    style: str
    note: str = ""  # after the label in the legend: the last value
    marks: bool = False  # mark each point with a dot (per-epoch values: few points joined by lines)


def thin(xs: list[float], ys: list[float], points: int) -> tuple[list[float], list[float]]:
    """At most about `points` points: consecutive points averaged in equal buckets (x of a bucket's
    last point), so a noisy curve is drawn as its mean per column rather than a sample of it; the
    first and last points kept as they are."""
    n = len(xs)
    size = -(-n // max(1, points))  # ceil
    if size <= 1:
        return list(xs), list(ys)
    out_x, out_y = [xs[0]], [ys[0]]
    for start in range(1, n - 1, size):
        end = min(start + size, n - 1)
        out_x.append(xs[end - 1])
        out_y.append(sum(ys[start:end]) / (end - start))
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


def legend(lines: list[Line], width: int) -> Text:
    """"━ label note" per line, on one row when they fit, else wrapped between entries; an entry
    longer than the width is cut with an ellipsis."""
    entries = []
    for line in lines:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("━ ", style=line.style)
        t.append(line.label)
        if line.note:
            t.append(f" {line.note}", style="grey62")
        entries.append(t)
    rows: list[list[Text]] = [[]]
    for entry in entries:
        used = sum(e.cell_len for e in rows[-1]) + 2 * len(rows[-1])
        if rows[-1] and used + entry.cell_len > width:
            rows.append([])
        rows[-1].append(entry)
    out = Text("\n").join(Text("  ").join(row) for row in rows)
    out.no_wrap, out.overflow = True, "ellipsis"
    return out


def ranges(lines: list[Line], log: bool = False) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The x and y ranges that hold every point, or None with no points. Linear: y padded by 5%, not
    below 0 when no value is (a loss). `log`: only values above 0 count, padded by a factor."""
    xs = [x for line in lines for x, y in zip(line.xs, line.ys) if not log or y > 0]
    ys = [y for line in lines for y in line.ys if math.isfinite(y) and (not log or y > 0)]
    if not xs or not ys:
        return None
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    if log:
        return (x0, x1), (y0 / 1.1, y1 * 1.1)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.1 or 1.0
    low = y0 - pad if y0 - pad >= 0 or y0 < 0 else 0.0  # a loss never goes below 0
    return (x0, x1), (low, y1 + pad)


def overlay(lines: list[Line], width: int, height: int, empty: str = "no points yet", log: bool = False,
            with_legend: bool = True) -> Text:
    """The legend (unless `with_legend` is False), then every line on one plot (later lines drawn
    over earlier ones) filling `height` rows in all. A line with `marks` and at most one point per 3
    columns gets a "●" at each point. `log`: a log10 y axis labelled in the values (values <= 0 are
    left out)."""
    if with_legend:
        text = legend(lines, width)
        rows = text.plain.count("\n") + 1
        text.append("\n")
    else:
        text, rows = Text(no_wrap=True, overflow="ellipsis"), 0
    found = ranges(lines, log)
    if found is None:
        text.append(empty if not log else f"{empty} (above 0, for the log scale)", style="grey62")
        return text
    x_range, y_range = found
    points = 2 * width  # a braille cell is 2 dots wide: more points only cost time
    series = [(*thin(line.xs, line.ys, points), line.style) for line in lines]
    marks = [(line.xs, line.ys, line.style) for line in lines if line.marks and len(line.xs) <= width // 3]
    text.append_text(braille_plot(series, width, max(3, height - rows), x_range, y_range, points=marks, log_y=log))
    return text
