"""Memory: on CUDA allocated / reserved / peak of total as bars (+ utilisation via NVML);
on CPU the process RSS. A sparkline of the history underneath.

Many ranks (StepReport.ranks): one row per rank, in rank order, with a Σ row under them. On GPUs
a row is the rank (its host first when the run spans several nodes), a bar of allocated (bright)
within reserved (dim) of the device's total, then allocated, reserved, peak and utilisation; on
CPUs a bar of each rank's RSS against the largest. The rows must fit the pane (42 columns; 18 rows
at 80x24, 11 at 120x40, 7 at 100x30): the sparkline's label, the column heading and the sparkline
(of the fullest rank) give way first; past that the fullest ranks are shown, in rank order, and a
line counts the others.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from tui_trainer.engine.events import MemorySample
from tui_trainer.text.format import human_bytes, short_bytes
from tui_trainer.ui.view import RunView, used_bytes
from tui_trainer.ui.widgets.draw import bar, bar2, spark

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
        if view.ranks:
            self._draw_ranks(view)
            return
        m = view.memory
        width = max(8, self.size.width - 34)
        text = Text()
        if m is None:
            text.append("waiting for the first report…", style="grey50")
        elif m.allocated is not None and m.total:
            text.append(f"GPU {m.device}", style="bold")
            if m.utilization is not None:
                text.append(f"  util {m.utilization:.0f}%")
            for label, value in (("allocated", m.allocated), ("reserved ", m.reserved), ("peak     ", m.peak)):
                text.append(f"\n{label} ")
                text.append_text(bar(value / m.total, width))
                text.append(f" {human_bytes(value)} / {human_bytes(m.total)}")
            text.append(f"\nhost RSS {human_bytes(m.rss)}", style="grey50")
        else:
            text.append("CPU: process resident memory (RSS)\n", style="bold")
            text.append(human_bytes(m.rss))
        shape = m.allocated is None if m is not None else None
        self._show(text, m is None or self._shape != shape, shape)
        top = m.total if m is not None and m.total else None
        label = "allocated" if m is not None and m.allocated is not None else "RSS"
        line = Text(spark(list(view.memory_history), max(8, self.size.width - 4), top), style="cyan")
        line.append(f"\n{label} history, 0 to {'total' if top else 'max'}", style="grey50")
        self._spark(line)

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
