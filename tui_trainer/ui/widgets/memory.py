"""Memory: on CUDA allocated / reserved / peak of total as bars (+ utilisation via NVML);
on CPU the process RSS. A sparkline of the history underneath."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from tui_trainer.text.format import human_bytes
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.draw import bar, spark


class MemoryPane(Vertical):
    def compose(self):
        yield Static(id="memory-text")
        yield Static(id="memory-spark")

    def on_mount(self) -> None:
        self.border_title = "Memory"
        self._shape = None

    def draw(self, view: RunView, what: str) -> None:
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
        self.query_one("#memory-text", Static).update(text, layout=m is None or self._shape != (m.allocated is None))
        self._shape = m.allocated is None if m is not None else None
        top = m.total if m is not None and m.total else None
        label = "allocated" if m is not None and m.allocated is not None else "RSS"
        line = Text(spark(list(view.memory_history), max(8, self.size.width - 4), top), style="cyan")
        line.append(f"\n{label} history, 0 to {'total' if top else 'max'}", style="grey50")
        self.query_one("#memory-spark", Static).update(line, layout=False)
