"""What the user's loop prints, while `tui_trainer.loop` runs it: lines for the Log pane.

`sys.stdout` and `sys.stderr` are process-wide, and the app draws on the same terminal from another
thread, so a print from the loop must never reach the screen. While the loop runs, both are
replaced by a `LineStream` that looks at the writing thread: the loop's thread (one thread: the one
that runs `train_fn`) writes lines, which become `Printed` events (the Log pane, events.jsonl, the
headless lines); every other thread writes where it wrote before, unchanged.

- Lines are whole: a write without a newline waits for the rest of its line (or the end of the
  loop). A carriage return keeps what a terminal would show (a progress bar redrawn with "\\r"
  becomes its last state, once). ANSI colour codes are removed; blank lines are dropped.
- `logging` handlers made before the loop hold the real stream, not `sys.stderr`: while the loop
  runs, every `StreamHandler` whose stream is the process's stdout or stderr writes into the
  capture instead (and gets its stream back after).
- Our own writes on the loop's thread while an event is being delivered (a sink that prints, a
  signal handler that says "stopping...") go to the real stream: they are not the user's, and
  taking them would deliver an event from inside another one.
- The app (Textual) swaps sys.stdout for its own while it runs and puts the old one back when it
  leaves; `ensure()` puts the capture back over whatever is there now if that happened while the
  loop still runs (the terminal went away and the run goes on headless).
- Not captured: other threads the loop starts, and writes to file descriptors 1 and 2 from C code.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
MAX_LINE = 4000  # characters of one line kept; a longer one is cut (events.jsonl stays readable)


class LineStream:
    """sys.stdout or sys.stderr while the loop runs (module docstring)."""

    def __init__(self, name: str, wrapped, owner: int, capture: Capture):
        self.name = name  # "stdout" or "stderr"
        self.wrapped = wrapped
        self._owner = owner
        self._capture = capture
        self._buffer = ""

    def _mine(self) -> bool:
        return threading.get_ident() == self._owner and not self._capture.busy()

    def write(self, text) -> int:
        if not self._mine():
            return self.wrapped.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        buffer = self._buffer + text
        if "\r" in text and "\n" not in text:
            buffer = buffer[buffer.rfind("\r"):]  # a redrawn line: only its newest state can show
        if "\n" in text:
            *lines, buffer = buffer.split("\n")
            for line in lines:
                self._capture.line(line, self.name)
        if len(buffer) > 4 * MAX_LINE:
            self._capture.line(buffer, self.name)
            buffer = ""
        self._buffer = buffer
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._mine():
            self.wrapped.flush()

    def finish(self) -> None:
        """The loop ended: a line still without its newline is a line."""
        if self._buffer:
            self._capture.line(self._buffer, self.name)
            self._buffer = ""

    def isatty(self) -> bool:
        # the loop's output is a log, not a terminal (no colours, no cursor moves); others: as before
        return False if self._mine() else self.wrapped.isatty()

    def fileno(self) -> int:
        return self.wrapped.fileno()

    @property
    def encoding(self):
        return getattr(self.wrapped, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self.wrapped, "errors", "strict")

    def __getattr__(self, name: str):  # buffer, mode, closed ... as the stream it replaced has them
        return getattr(self.wrapped, name)


class Capture:
    """Takes the prints of the current thread (the loop's) from `start()` to `stop()`; each line
    goes to `emit(text, stream)`. `busy()` says an event is being delivered on this thread now."""

    def __init__(self, emit: Callable[[str, str], None], busy: Callable[[], bool], outer=(None, None)):
        self.emit = emit
        self.busy = busy
        self.outer = outer  # (stdout, stderr) where the loop was called from: the process's too
        self.owner = threading.get_ident()
        self.out: LineStream | None = None
        self.err: LineStream | None = None
        self._streams: list[LineStream] = []
        self._handlers: list[tuple[logging.StreamHandler, object, LineStream]] = []

    def start(self) -> None:
        self.owner = threading.get_ident()
        self.ensure()
        targets = {id(s): self.out for s in (sys.__stdout__, self.outer[0]) if s is not None}
        targets.update({id(s): self.err for s in (sys.__stderr__, self.outer[1]) if s is not None})
        for s in self._streams:
            targets[id(s.wrapped)] = s
        for handler in _stream_handlers():
            stream = getattr(handler, "stream", None)
            target = targets.get(id(stream)) if stream is not None else None
            if target is not None:
                self._handlers.append((handler, stream, target))
                _set_stream(handler, target)

    def ensure(self) -> None:
        """Make sys.stdout / sys.stderr the capture again if something else replaced them."""
        if not isinstance(sys.stdout, LineStream) or sys.stdout not in self._streams:
            self.out = LineStream("stdout", sys.stdout, self.owner, self)
            self._streams.append(self.out)
            sys.stdout = self.out
        if not isinstance(sys.stderr, LineStream) or sys.stderr not in self._streams:
            self.err = LineStream("stderr", sys.stderr, self.owner, self)
            self._streams.append(self.err)
            sys.stderr = self.err

    def line(self, text: str, stream: str) -> None:
        text = text.rstrip("\r")
        if "\r" in text:
            text = text[text.rfind("\r") + 1:]
        text = ANSI.sub("", text).rstrip()
        if not text.strip():
            return
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + f" … ({len(text) - MAX_LINE} more characters)"
        self.emit(text, stream)

    def flush(self) -> None:
        for s in self._streams:
            s.finish()

    def stop(self) -> None:
        """Whole lines out, and every stream back where it was (only where it is still ours)."""
        self.flush()
        for handler, stream, ours in self._handlers:
            if getattr(handler, "stream", None) is ours:
                _set_stream(handler, stream)
        self._handlers.clear()
        for s in reversed(self._streams):
            if sys.stdout is s:
                sys.stdout = s.wrapped
            if sys.stderr is s:
                sys.stderr = s.wrapped


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    seen, out = set(), []
    for lg in loggers:
        for handler in list(lg.handlers):
            if type(handler) is logging.StreamHandler and id(handler) not in seen:  # not FileHandler
                seen.add(id(handler))
                out.append(handler)
    return out


def _set_stream(handler: logging.StreamHandler, stream) -> None:
    handler.acquire()
    try:
        handler.stream = stream  # setStream() would flush the old one: not ours to flush here
    finally:
        handler.release()
