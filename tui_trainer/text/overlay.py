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


def ranges(lines: list[Line], floor: bool = True) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The x and y ranges that hold every point (y padded by 5%; with `floor`, not below 0 when no
    value is), or None with no points."""
    xs = [x for line in lines for x in line.xs]
    ys = [y for line in lines for y in line.ys if math.isfinite(y)]
    if not xs or not ys:
        return None
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.1 or 1.0
    low = y0 - pad if not floor or y0 - pad >= 0 or y0 < 0 else 0.0  # a loss never goes below 0
    return (x0, x1), (low, y1 + pad)


def overlay(lines: list[Line], width: int, height: int, empty: str = "no points yet", log: bool = False,
            with_legend: bool = True) -> Text:
    """The legend (unless `with_legend` is False), then every line on one plot (later lines drawn
    over earlier ones) filling `height` rows in all. `log`: a log10 y axis (values <= 0 are left
    out), labelled in the values."""
    if with_legend:
        text = legend(lines, width)
        rows = text.plain.count("\n") + 1
        text.append("\n")
    else:
        text, rows = Text(no_wrap=True, overflow="ellipsis"), 0
    if log:
        lines = [Line(line.label, *_log10(line.xs, line.ys), line.style, line.note, line.marks) for line in lines]
    found = ranges(lines, floor=not log)
    if found is None:
        text.append(empty if not log else f"{empty} (above 0, for the log scale)", style="grey62")
        return text
    x_range, y_range = found
    points = 2 * width  # a braille cell is 2 dots wide: more points only cost time
    series = [(*thin(line.xs, line.ys, points), line.style) for line in lines]
    plot = braille_plot(series, width, max(3, height - rows), x_range, y_range)
    if log:  # the labels of the values are wider than those of their logs: give the plot fewer columns
        extra = _label_width(y_range) - plot.plain.find("┤")
        if extra > 0:
            plot = braille_plot(series, width - extra, max(3, height - rows), x_range, y_range)
    plot = _mark(plot, [line for line in lines if line.marks], x_range, y_range)
    text.append_text(_relabel(plot, y_range) if log else plot)
    return text


def _log10(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    kept = [(x, math.log10(y)) for x, y in zip(xs, ys) if y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def _value(v: float) -> str:
    return f"{v:.3g}" if 0.01 <= abs(v) < 1e4 else f"{v:.1e}"


def _label_width(y_range: tuple[float, float]) -> int:
    y0, y1 = y_range
    return max(len(_value(10 ** v)) for v in (y0, (y0 + y1) / 2, y1)) + 1


def _relabel(plot: Text, y_range: tuple[float, float]) -> Text:
    """A plot of log10 values with its y labels written as the values themselves (10**label). The
    plot labels its first, middle and last rows (text/plot.py); its axis is rebuilt at the new width."""
    lines = plot.split("\n", include_separator=False)
    rows = len(lines) - 1
    left = lines[0].plain.find("┤") + 1
    y0, y1 = y_range
    labels = {0: _value(10 ** y1), rows // 2: _value(10 ** ((y0 + y1) / 2)), rows - 1: _value(10 ** y0)}
    label_w = _label_width(y_range)
    out = Text(no_wrap=plot.no_wrap, overflow=plot.overflow)
    for r, line in enumerate(lines):
        if r < rows:
            out.append(labels[r].rjust(label_w - 1) + " ┤" if r in labels else " " * label_w + "│", style="grey62")
            out.append_text(line[left:])
            out.append("\n")
        else:  # the x axis: its labels start after the y axis
            out.append(" " * (label_w + 1 - left) if label_w + 1 >= left else "")
            out.append_text(line[max(0, left - label_w - 1):])
    return out


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
