"""A line plot in braille dots as rich Text: the app's LR pane and `tui-trainer preview` both draw
it (`.plain` is fit for a log file). Pure Python and linear in the points."""

from __future__ import annotations

import math

from rich.text import Text

# Braille: a cell is 2 dots wide and 4 high; bit of dot (column, row).
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if 0.01 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}"


def _log_label(value: float) -> str:
    return _label(10 ** value)


def braille_plot(series: list[tuple[list[float], list[float], str]], width: int, height: int,
                 x_range: tuple[float, float], y_range: tuple[float, float],
                 marker: tuple[float, str] | None = None,
                 points: list[tuple[list[float], list[float], str]] = (),
                 bands: list[tuple[list[float], list[float], list[float], str]] = (),
                 log_y: bool = False) -> Text:
    """Lines through (xs, ys) of each series in braille dots, later series drawn over earlier ones,
    a y axis with three labels, an x axis with first/middle/last, and an optional vertical marker.
    `bands`: (xs, lows, highs, style), drawn first: at each x every dot from low to high, joined to
    the previous x's range (a raw signal's min-max envelope, one x per dot column).
    `points`: (xs, ys, style) drawn last as a "●" in their cell (validation once an epoch).
    `log_y`: a log10 y axis (y_range and the labels stay in the data's units; y <= 0 is left out).

    Pure Python and linear in the number of points: a few milliseconds where plotext took ~100.
    """
    label = _log_label if log_y else _label
    if log_y:
        def logs(xs, ys):
            kept = [(x, math.log10(y)) for x, y in zip(xs, ys) if y > 0]
            return [x for x, _ in kept], [y for _, y in kept]

        series = [(*logs(xs, ys), style) for xs, ys, style in series]
        points = [(*logs(xs, ys), style) for xs, ys, style in points]
        bands = [([x for x, h in zip(xs, his) if h > 0],
                  [math.log10(v) if v > 0 else -math.inf for v, h in zip(los, his) if h > 0],  # to the bottom
                  [math.log10(h) for h in his if h > 0], style) for xs, los, his, style in bands]
        low = (math.log10(y_range[0]) if y_range[0] > 0  # else the lowest positive value drawn
               else min((min(ys) for _, ys, _ in (*series, *points) if ys), default=0.0))
        high = math.log10(y_range[1]) if y_range[1] > 0 else low + 1.0
        y_range = (low, high if high > low else low + 1.0)
    label_w = max(len(label(v)) for v in (y_range[1], (y_range[0] + y_range[1]) / 2, y_range[0])) + 1
    cols, rows = max(4, width - label_w - 1), max(2, height - 1)
    dots_w, dots_h = cols * 2, rows * 4
    x0, x1 = x_range
    y0, y1 = y_range
    sx = (dots_w - 1) / (x1 - x0) if x1 > x0 else 0.0
    sy = (dots_h - 1) / (y1 - y0) if y1 > y0 else 0.0
    bits = [[0] * cols for _ in range(rows)]
    owner = [[-1] * cols for _ in range(rows)]
    styles = [style for *_, style in bands] + [style for *_, style in series]

    def row_of(y: float) -> int:
        return dots_h - 1 - round((min(max(y, y0), y1) - y0) * sy)

    for who, (xs, los, his, _style) in enumerate(bands):
        prev = None
        for x, lo, hi in zip(xs, los, his):
            px = round((x - x0) * sx)
            if not 0 <= px < dots_w:
                continue
            top, bottom = row_of(hi), row_of(lo)
            if prev is not None:  # joined to the previous range, as a line would be
                top, bottom = min(top, prev[1]), max(bottom, prev[0])
            prev = (row_of(hi), row_of(lo))
            col, side = px >> 1, px & 1
            for r in range(top >> 2, (bottom >> 2) + 1):
                mask = 0
                for d in range(max(top, 4 * r) & 3, (min(bottom, 4 * r + 3) & 3) + 1):
                    mask |= _BRAILLE_BITS[d][side]
                bits[r][col] |= mask
                owner[r][col] = who

    for who, (xs, ys, _style) in enumerate(series, start=len(bands)):
        prev = None
        for x, y in zip(xs, ys):
            px, py = round((x - x0) * sx), row_of(y)
            if prev is None:
                qx, qy, n = px, py, 0
            else:
                qx, qy = prev
                n = max(abs(px - qx), abs(py - qy), 1)
            for i in range(1 if n else 0, n + 1):  # the dots from the last point to this one (inlined: hot)
                ax, ay = (qx + (px - qx) * i // n, qy + (py - qy) * i // n) if n else (px, py)
                if 0 <= ax < dots_w and 0 <= ay < dots_h:
                    r, c = ay >> 2, ax >> 1
                    bits[r][c] |= _BRAILLE_BITS[ay & 3][ax & 1]
                    owner[r][c] = who
            prev = (px, py)
    glyphs: dict[tuple[int, int], str] = {}
    for xs, ys, style in points:
        for x, y in zip(xs, ys):
            if y0 <= y <= y1 or y0 == y1:
                px, py = round((x - x0) * sx), row_of(y)
                if 0 <= px < dots_w and 0 <= py < dots_h:
                    glyphs[py // 4, px // 2] = style
    marker_col = None
    if marker is not None and x1 > x0:
        marker_col = min(cols - 1, max(0, round((marker[0] - x0) * sx) // 2))
    text = Text()
    y_labels = {0: label(y1), rows // 2: label((y0 + y1) / 2), rows - 1: label(y0)}
    for r in range(rows):
        text.append(y_labels.get(r, "").rjust(label_w - 1) + " ┤" if r in y_labels else " " * label_w + "│",
                    style="grey62")
        run, run_style = [], None  # cells of one style go into one append
        for c in range(cols):
            if (r, c) in glyphs:
                cell, style = "●", glyphs[r, c]
            elif c == marker_col and not bits[r][c]:
                cell, style = "│", marker[1]
            elif bits[r][c]:
                cell, style = chr(0x2800 + bits[r][c]), marker[1] if c == marker_col else styles[owner[r][c]]
            else:
                cell, style = " ", None
            if style != run_style and run:
                text.append("".join(run), style=run_style or "")
                run = []
            run.append(cell)
            run_style = style
        if run:
            text.append("".join(run), style=run_style or "")
        text.append("\n")
    left, mid, right = _label(x0), _label((x0 + x1) / 2), _label(x1)
    axis = " " * (label_w + 1) + left
    axis += mid.center(max(0, cols - len(left) - len(right)))
    axis += right
    text.append(axis[: label_w + 1 + cols], style="grey62")
    return text
