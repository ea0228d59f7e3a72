"""Log: timestamped events (checkpoints with paths, LR changes, freezes, warnings, errors)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from tui_trainer.ui.view import RunView

LEVEL_STYLE = {"info": "", "good": "green3", "warn": "yellow", "error": "bold red"}


class EventLog(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=1000, wrap=True, markup=False, highlight=False, min_width=20, **kwargs)
        self._written = 0

    def on_mount(self) -> None:
        self.border_title = "Log"

    def draw(self, view: RunView, what: str) -> None:
        new = view.log_count - self._written
        if new <= 0:
            return
        lines = []
        for when, text, level in list(view.log)[-min(new, len(view.log)):]:
            line = Text(time.strftime("%H:%M:%S ", time.localtime(when)), style="grey50")
            line.append(text, style=LEVEL_STYLE.get(level, ""))
            lines.append(line)
        self.write(Text("\n").join(lines))  # one write per batch: one scroll, one repaint
        self._written = view.log_count
