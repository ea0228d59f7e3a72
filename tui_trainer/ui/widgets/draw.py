"""Small text drawings: a progress bar and a sparkline scaled from zero. (The braille line plot is
`run.textplot`: `tui-trainer preview` draws it too.)"""

from __future__ import annotations

from rich.text import Text

BLOCKS = " ▁▂▃▄▅▆▇█"


def bar(fraction: float, width: int) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    text = Text("━" * full, style="green3")
    text.append("━" * (width - full), style="grey30")
    return text


def bar2(inner: float, outer: float, width: int) -> Text:
    """A bar of two fractions of one whole, `inner` <= `outer` (allocated within reserved memory):
    `inner` bright, the rest of `outer` dim, the rest of the whole grey."""
    clamp = lambda f: min(max(f, 0.0), 1.0)  # noqa: E731
    first = int(clamp(inner) * width)
    second = max(first, int(clamp(outer) * width))
    text = Text("━" * first, style="green3")
    text.append("━" * (second - first), style="dark_olive_green3")
    text.append("━" * (width - second), style="grey30")
    return text


def spark(values: list[float], width: int, top: float | None = None) -> str:
    """The last `width` values as one line of blocks, 0 at the bottom, `top` (or the max) at the top.
    (Textual's Sparkline scales from the minimum, which makes a steady memory line look like a cliff.)"""
    values = values[-width:]
    if not values:
        return ""
    top = top or max(values) or 1.0
    return "".join(BLOCKS[min(8, max(1, round(8 * v / top)))] for v in values)
