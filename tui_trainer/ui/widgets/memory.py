"""Memory: what the machine is doing, each number over a chart of its recent history (`Track`s,
ui/memory_history.py; every chart from 0, the newest on the right, orange where the input wait was
above 20%). CPU: the process's RSS, its CPU use of the cores it may use, the host's available
memory, the input wait. CUDA: allocated / reserved / peak of the device's total as bars, then
allocated, input wait, utilisation (NVML), CPU use, RSS, host memory. `fit_tracks` picks the
densest form the pane's rows allow: stacked charts of 1-4 rows, else a row a track
(`RSS  1.11G ▆▆▇█`), the last tracks left out when even that does not fit. Alone in its row (one
pane at a time, under 100x30) the pane takes the whole width (class -alone).

Many ranks (StepReport.ranks): one row per rank, in rank order, with a Σ row under them. On GPUs
a row is the rank (its host first when the run spans several nodes), a bar of allocated (bright)
within reserved (dim) of the device's total, then allocated, reserved, peak and utilisation; on
CPUs a bar of each rank's RSS against the largest. The rows must fit the pane (42 columns beside the
log, the whole width alone; 18 rows at 80x24, 11 at 120x40, 7 at 100x30): the sparkline's label,
the column heading and the sparkline (of the fullest rank) give way first; past that the fullest
ranks are shown, in rank order, and a line counts the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from tui_trainer.engine.events import MemorySample
from tui_trainer.text.format import duration, human_bytes, short_bytes
from tui_trainer.ui.memory_history import columns, cpu_share
from tui_trainer.ui.view import RunView, used_bytes
from tui_trainer.ui.widgets.draw import BLOCKS, bar, bar2, spark
from tui_trainer.ui.widgets.header import DATA_WAIT_LOUD

HOST_WIDTH = 8  # at most this much of a host name labels its ranks (several nodes)


class MemoryPane(Vertical):
    def compose(self):
        yield Static(id="memory-text")
        yield Static(id="memory-spark")

    def on_mount(self) -> None:
        self.border_title = "Memory"
        self._shape = None

    def on_resize(self) -> None:
        if getattr(self, "_view", None) is not None:  # the rows are cut to the pane's size
            self.draw(self._view, "memory")

    def draw(self, view: RunView, what: str) -> None:
        self._view = view
        # alone in its row (the log hidden: one pane at a time): the whole width (app.tcss), and a
        # resize, which draws again
        self.set_class(not any(w.display for w in self.parent.children if w is not self), "-alone")
        if view.ranks:
            self._draw_ranks(view)
            return
        m = view.memory
        width, height = max(20, self.size.width), max(1, self.size.height)
        if m is None:
            text = Text("waiting for the first report…", style="grey50")
            lines = 1
        else:
            head = gpu_lines(m, width) if m.allocated is not None and m.total else []
            body = fit_tracks(tracks(view), view.machine.span_s(), width, height - len(head))
            text = Text("\n", no_wrap=True, overflow="ellipsis").join(head + body)
            lines = len(head) + len(body)
        shape = ("one", lines)
        self._show(text, self._shape != shape, shape)
        self._spark(None)

    # ------------------------------------------------------------------ many ranks

    def _draw_ranks(self, view: RunView) -> None:
        ranks = view.ranks
        width, height = max(20, self.size.width), max(1, self.size.height)
        gpu = all(m.allocated is not None and m.total for m in ranks)
        totals = {m.total for m in ranks}
        top = totals.pop() if gpu and len(totals) == 1 else None  # one kind of GPU: the spark's top
        hosts = [view.host_of(r) for r in range(len(ranks))] if view.nodes > 1 else None
        rows = RankRows(ranks, gpu, width, len(rank_labels([0], hosts, len(ranks))[0]))
        kind = "allocated" if gpu else "RSS"
        history = Text(spark(list(view.memory_history), max(8, width), top), style="cyan")
        note = Text(f"fullest rank's {kind}, 0 to {'total' if top else 'max'}", style="grey50")

        # what fits: the rows first, then Σ, the spark, the heading, the spark's label
        shown = list(range(len(ranks)))
        extra = {"total": 1, "spark": 1, "heading": 1, "note": 1}
        for drop in ("note", "heading", "spark"):
            if len(shown) + sum(extra.values()) <= height:
                break
            extra[drop] = 0
        more = len(shown) + extra["total"] > height
        if more:  # the fullest ranks, in rank order, and a line for the others
            keep = max(1, height - 2)
            fullest = sorted(shown, key=lambda r: rows.fullness(r), reverse=True)[:keep]
            shown = sorted(fullest)

        lines: list[Text] = []
        if extra["heading"]:
            lines.append(rows.heading(top))
        lines.extend(rows.row(r, label) for r, label in zip(shown, rank_labels(shown, hosts, len(ranks))))
        if more:
            hidden = [r for r in range(len(ranks)) if r not in shown]
            fullest_hidden = max(used_bytes(ranks[r]) for r in hidden)
            lines.append(Text(f"+{len(hidden)} more ranks, at most {short_bytes(fullest_hidden)} {kind}",
                              style="grey50"))
        lines.append(rows.total("Σ"))
        text = Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
        shape = ("ranks", len(lines))
        self._show(text, self._shape != shape, shape)
        line = Text("\n").join([history, note] if extra["note"] else [history]) if extra["spark"] else None
        self._spark(line)

    # ------------------------------------------------------------------ plumbing

    def _show(self, text: Text, layout: bool, shape) -> None:
        self.query_one("#memory-text", Static).update(text, layout=layout)
        self._shape = shape

    def _spark(self, line: Text | None) -> None:
        widget = self.query_one("#memory-spark", Static)
        if line is None:
            widget.display = False
            return
        layout = not widget.display or line.plain.count("\n") != getattr(self, "_spark_lines", None)
        self._spark_lines = line.plain.count("\n")
        widget.display = True
        widget.update(line, layout=layout)


def rank_labels(shown, hosts: list[str] | None, world: int) -> list[str]:
    """The label of each rank `shown` (rank numbers, ascending), all of one width: the rank, after
    its host's short name when the run spans several nodes (`hosts`: every rank's), written on the
    first row of each host and blank under it."""
    digits = len(str(world - 1))
    if not hosts:
        return [f"{r:>{digits}}" for r in shown]
    names = short_hosts(hosts)
    wide = max(len(n) for n in names.values())
    out, before = [], None
    for r in shown:
        out.append(f"{names[hosts[r]] if hosts[r] != before else '':<{wide}} {r:>{digits}}")
        before = hosts[r]
    return out


def short_hosts(hosts, width: int = HOST_WIDTH) -> dict[str, str]:
    """Each host's name in at most `width` characters, told apart: the first part of the name
    ("gpu-node-07" of "gpu-node-07.cluster"), then its end ("…node-07": numbered nodes differ
    there) or else its start."""
    first = {h: h.split(".")[0] or h or "?" for h in hosts}
    for cut in (lambda n: "…" + n[-(width - 1):], lambda n: n[:width - 1] + "…"):
        names = {h: n if len(n) <= width else cut(n) for h, n in first.items()}
        if len(set(names.values())) == len(names):
            return names
    return names


class RankRows:
    """The columns of the rank rows: label, bar, then the numbers (GPU: allocated, reserved, peak,
    utilisation when NVML gives it; CPU: RSS)."""

    def __init__(self, ranks: tuple[MemorySample, ...], gpu: bool, width: int, label: int):
        self.ranks, self.gpu, self.label = ranks, gpu, label
        if gpu:
            self.columns = ["alloc", "resv", "peak"]
            if any(m.utilization is not None for m in ranks):
                self.columns.append("util")
        else:
            self.columns = ["RSS"]
        for least in ("util", "resv", "peak", None):  # the bar takes the rest; under 6 columns, numbers go
            self.bar = width - label - 1 - sum(1 + (4 if c == "util" else 5) for c in self.columns)
            if self.bar >= 6 or least is None or len(self.columns) == 1:
                break
            if least in self.columns:
                self.columns.remove(least)
        self.bar = max(1, self.bar)
        self._rss_top = max((m.rss for m in ranks), default=0) or 1

    def fullness(self, r: int) -> float:
        m = self.ranks[r]
        if self.gpu:
            return max(m.reserved or 0, m.peak or 0, m.allocated or 0) / m.total
        return m.rss / self._rss_top

    def _numbers(self, values: dict[str, str]) -> str:
        return "".join(f" {values.get(c, ''):>{4 if c == 'util' else 5}}" for c in self.columns)

    def heading(self, total: int | None) -> Text:
        if self.gpu:
            what = f"of {short_bytes(total)} each" if total else "of each total"
        else:
            what = "resident memory"
        text = Text(f"{'':<{self.label}} {what:<{self.bar}.{self.bar}}", style="grey50")
        text.append(self._numbers({c: c for c in self.columns}), style="grey50")
        return text

    def row(self, r: int, label: str) -> Text:
        m = self.ranks[r]
        text = Text(f"{label:>{self.label}} ", style="bold")
        if self.gpu:
            text.append_text(bar2(m.allocated / m.total, (m.reserved or 0) / m.total, self.bar))
            util = f"{m.utilization:.0f}%" if m.utilization is not None else "-"
            text.append(self._numbers({"alloc": short_bytes(m.allocated), "resv": short_bytes(m.reserved),
                                       "peak": short_bytes(m.peak), "util": util}))
        else:
            text.append_text(bar(m.rss / self._rss_top, self.bar))
            text.append(self._numbers({"RSS": short_bytes(m.rss)}))
        return text

    def total(self, label: str) -> Text:
        """Σ over the ranks: allocated and reserved of the sum of totals (GPU; peak stays per rank:
        the peaks were not at one moment), mean utilisation; or the summed RSS."""
        ms = self.ranks
        text = Text(f"{label:>{self.label}} ", style="bold")
        if self.gpu:
            whole = sum(m.total for m in ms)
            alloc, resv = sum(m.allocated for m in ms), sum(m.reserved or 0 for m in ms)
            text.append_text(bar2(alloc / whole, resv / whole, self.bar))
            utils = [m.utilization for m in ms if m.utilization is not None]
            text.append(self._numbers({"alloc": short_bytes(alloc), "resv": short_bytes(resv),
                                       "peak": "", "util": f"{sum(utils) / len(utils):.0f}%" if utils else "-"}))
        else:
            text.append(" " * self.bar)
            text.append(self._numbers({"RSS": short_bytes(sum(m.rss for m in ms))}))
        return text


# --------------------------------------------------------------------------- one process


@dataclass
class Track:
    """One number with its history: a row `label value ▁▂▃▅` (inline), or a line `label … value` over
    a chart several rows high (stacked). The chart goes from 0 to `top` (None: the history's max)."""

    label: str  # inline, at most LABEL characters
    value: str  # inline, at most VALUE characters
    long_label: str
    long_value: str
    history: list[float | None]
    top: float | None
    keep: Callable = max  # how a column of several samples is summed up (min for what runs out)
    loud: float | None = None  # columns above this stand out


LABEL, VALUE = 11, 6
MAX_CHART_ROWS = 4


def tracks(view: RunView) -> list[Track]:
    """What the pane charts, most telling first (the last ones go first when the pane is short).
    CPU: the process's RSS, its CPU use, the host's available memory, the input wait. GPU: allocated
    memory, the input wait, utilisation, the process's CPU use and RSS, the host's memory."""
    m, h = view.memory, view.machine
    out: dict[str, Track] = {}
    wait = h.data_wait
    if wait is not None or h.known("data_wait"):
        history = [None if v is None else 100 * v for v in h.series("data_wait")]
        text = "?" if wait is None else f"{100 * wait:.0f}%"
        out["data"] = Track("data wait", text, "waiting for data (share of time)", text, history, 100.0,
                            loud=100 * DATA_WAIT_LOUD)
    out["rss"] = Track("RSS", short_bytes(m.rss), "process RSS", human_bytes(m.rss), h.series("rss"), None)
    if m.cpu_percent is not None or h.known("cpu"):
        share = cpu_share(m)
        cores = m.cpu_cores or 1
        text = "?" if share is None else f"{share:.0f}%"
        out["cpu"] = Track(f"CPU {cores} core{'s' if cores != 1 else ''}"[:LABEL], text,
                           f"process CPU, of {cores} core{'s' if cores != 1 else ''}", text, h.series("cpu"), 100.0)
    if m.host_available is not None or h.known("available"):
        total = m.host_total
        out["free"] = Track("host free", short_bytes(m.host_available), "host memory available",
                            f"{human_bytes(m.host_available)} of {human_bytes(total)}" if total
                            else human_bytes(m.host_available), h.series("available"), total, keep=min)
    if m.allocated is not None and m.total:
        util = m.utilization
        out["alloc"] = Track("allocated", short_bytes(m.allocated), "GPU allocated",
                             f"{human_bytes(m.allocated)} of {human_bytes(m.total)}", h.series("allocated"), m.total)
        if util is not None or h.known("utilization"):
            text = "?" if util is None else f"{util:.0f}%"
            out["util"] = Track("GPU util", text, "GPU utilisation (NVML)", text, h.series("utilization"), 100.0)
        order = ("alloc", "data", "util", "cpu", "rss", "free")
    else:
        order = ("rss", "cpu", "free", "data")
    return [out[k] for k in order if k in out]


def fit_tracks(shown: list[Track], span_s: float, width: int, height: int) -> list[Text]:
    """The tracks in `height` rows of `width`: stacked with charts of 1..MAX_CHART_ROWS rows when
    every track gets two rows at least (the rows left over go to the first tracks' charts), else one
    row each; a caption (the time the charts span) when a row is left; tracks from the end left out
    when even one row each does not fit."""
    if height <= 0 or not shown:
        return []
    n = len(shown)
    rows = (height - 1) // n - 1  # chart rows of each stacked track, the caption's row kept
    caption = Text(f"history: last {duration(span_s)}, each chart from 0", style="grey50")
    if rows >= 1:
        rows = min(rows, MAX_CHART_ROWS)
        spare = height - 1 - n * (1 + rows)  # rows left over: a row more for the first tracks' charts
        out = []
        for i, t in enumerate(shown):
            out.append(spread(t.long_label, t.long_value, width))
            out.extend(chart(t, width, min(MAX_CHART_ROWS, rows + (i < spare))))
        return out + [caption]
    shown = shown[:height]
    room = width - LABEL - VALUE - 2
    out = []
    for t in shown:
        line = Text(f"{t.label:<{LABEL}.{LABEL}} ", style="bold")
        line.append(f"{t.value:>{VALUE}} ")
        if room >= 4:
            line.append_text(chart(t, room, 1)[0])
        out.append(line)
    return out + [caption] if len(out) < height else out


def spread(label: str, value: str, width: int) -> Text:
    """`label` on the left, `value` on the right of one line of `width`."""
    text = Text(label, style="bold")
    text.append(" " * max(1, width - len(label) - len(value)))
    text.append(value)
    return text


def chart(t: Track, width: int, rows: int) -> list[Text]:
    """The track's history as an area chart of `rows` rows, the newest at the right; a gap (no
    number) is a blank column; a column of many samples shows `t.keep` of them."""
    values = columns(t.history, width, t.keep)
    known = [v for v in values if v is not None]
    top = t.top or max(known, default=0.0) or 1.0
    levels = 8 * rows
    heights = []
    for v in values:
        if v is None:
            heights.append(None)
            continue
        level = round(min(1.0, max(0.0, v / top)) * levels)
        heights.append(max(1, level) if v > 0 else 0)
    styles = ["dark_orange" if t.loud is not None and v is not None and v > t.loud else "cyan" for v in values]
    out = []
    for r in reversed(range(rows)):
        line = Text(" " * (width - len(values)))
        run, style = [], None  # cells of one style appended together (a Text span each, not per cell)
        for level, cell_style in zip(heights, styles):
            if cell_style != style and run:
                line.append("".join(run), style=style)
                run = []
            style = cell_style
            run.append(" " if level is None else BLOCKS[min(8, max(0, level - 8 * r))])
        if run:
            line.append("".join(run), style=style)
        out.append(line)
    return out


def gpu_lines(m: MemorySample, width: int) -> list[Text]:
    """The device, its utilisation, and bars of allocated, reserved and peak of its total."""
    title = Text(f"GPU {m.device}", style="bold")
    if m.utilization is not None:
        title.append(f"  util {m.utilization:.0f}%")
    out = [title]
    size = max(8, width - 25)
    for label, value in (("allocated", m.allocated), ("reserved ", m.reserved), ("peak     ", m.peak)):
        line = Text(f"{label} ")
        line.append_text(bar((value or 0) / m.total, size))
        line.append(f" {short_bytes(value)} of {short_bytes(m.total)}")
        out.append(line)
    return out
