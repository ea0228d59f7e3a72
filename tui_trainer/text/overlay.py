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
    plot = braille_plot(series, width, max(3, height - rows), x_range, y_range)
    text.append_text(_mark(plot, [line for line in lines if line.marks], x_range, y_range))
    return text


MARK = "●"


def _mark(plot: Text, lines: list[Line], x_range: tuple[float, float], y_range: tuple[float, float]) -> Text:
    """Each point of `lines` as a dot in its colour on the braille plot, where the plot put it, when
    there are few enough points to tell apart (at most one per 3 columns); later lines over earlier.
    The plot's geometry is read from its own text: every row is the axis's width then the cells."""
    rows = plot.plain.split("\n")[:-1]  # the last row is the x axis
    if not lines or not rows:
        return plot
    left = rows[0].find("┤") + 1
    cols = len(rows[0]) - left
    (x0, x1), (y0, y1) = x_range, y_range
    dots_w, dots_h = cols * 2, len(rows) * 4
    sx = (dots_w - 1) / (x1 - x0) if x1 > x0 else 0.0
    sy = (dots_h - 1) / (y1 - y0) if y1 > y0 else 0.0
    at: dict[int, str] = {}
    for line in lines:
        if len(line.xs) > cols // 3:
            continue
        for x, y in zip(line.xs, line.ys):
            col = round((x - x0) * sx) // 2
            row = (dots_h - 1 - round((min(max(y, y0), y1) - y0) * sy)) // 4
            if 0 <= col < cols and 0 <= row < len(rows):
                at[row * (len(rows[0]) + 1) + left + col] = line.style
    if not at:
        return plot
    out = Text(no_wrap=plot.no_wrap, overflow=plot.overflow)
    start = 0
    for offset in sorted(at):
        out.append_text(plot[start:offset])
        out.append(MARK, style=at[offset])
        start = offset + 1
    out.append_text(plot[start:])
    return out
