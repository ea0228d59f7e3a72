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


def thin(xs: list[float], ys: list[float], points: int) -> tuple[list[float], list[float]]:
    """At most about `points` points, evenly strided, the last one kept."""
    stride = max(1, len(xs) // max(1, points))
    if stride == 1:
        return list(xs), list(ys)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


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


def ranges(lines: list[Line]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The x and y ranges that hold every point (y padded by 5%), or None with no points."""
    xs = [x for line in lines for x in line.xs]
    ys = [y for line in lines for y in line.ys if math.isfinite(y)]
    if not xs or not ys:
        return None
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.1 or 1.0
    return (x0, x1), (y0 - pad, y1 + pad)


def overlay(lines: list[Line], width: int, height: int, empty: str = "no points yet") -> Text:
    """The legend, then every line on one plot (later lines drawn over earlier ones) filling
    `height` rows in all."""
    text = legend(lines, width)
    rows = text.plain.count("\n") + 1
    text.append("\n")
    found = ranges(lines)
    if found is None:
        text.append(empty, style="grey62")
        return text
    x_range, y_range = found
    points = 2 * width  # a braille cell is 2 dots wide: more points only cost time
    series = [(*thin(line.xs, line.ys, points), line.style) for line in lines]
    text.append_text(braille_plot(series, width, max(3, height - rows), x_range, y_range))
    return text
