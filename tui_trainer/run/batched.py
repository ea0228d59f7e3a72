"""Writing a sink's frequent events off the training thread, in batches.

A fast loop reports ~10 times a second and may end 20+ short epochs a second. Turning each report
or epoch end into a line and writing it on the training thread costs ~100-200 us there, mostly on
caches the step just made cold; the same work in a batch costs ~10-20 us an event, and it runs while
the training thread is in a backward (which releases the GIL). So the run-dir recorder and the
headless lines hand those two kinds of events to a thread that writes them within `within` seconds
of their coming, one write for the lot. Every other event (a checkpoint, a warning, a print, the
end) is written at once on the caller's thread, after any still waiting, so the output keeps the
events' order. `flush()` and `close()` write what is waiting at once.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from tui_trainer.engine.events import EpochEnd, Event, StepReport

BATCHED = (StepReport, EpochEnd)


class Batched:
    """Calls `write(events)` with the events in order: StepReports and EpochEnds from its own thread
    (named `name`) within `within()` seconds, any other event at once with those still waiting."""

    def __init__(self, write: Callable[[list[Event]], None], name: str, within: Callable[[], float]):
        self._write = write
        self._within = within  # read at every wait: a test may shorten it
        self._waiting: deque[Event] = deque()
        self._lock = threading.Lock()  # one writer at a time, so the output keeps the events' order
        self._wake = threading.Event()  # set: events are waiting
        self._stop = threading.Event()  # set: closing (the writer's wait ends at once)
        self._closed = False
        self._writer = threading.Thread(target=self._write_batches, name=name, daemon=True)
        self._writer.start()

    def __call__(self, event: Event) -> None:
        if type(event) in BATCHED and not self._closed:
            self._waiting.append(event)  # thread-safe; the writer takes them within `within`
            if not self._wake.is_set():
                self._wake.set()
            return
        with self._lock:  # any other event: now, after the ones waiting
            self._write([*self._take(), event])

    def flush(self, wait: bool = True, timeout: float = -1) -> None:
        """Write every event waiting now. `wait` False (a signal handler, which may have interrupted a
        write of this thread): only if no write is under way; `timeout`: at most that long."""
        if not (self._lock.acquire(timeout=timeout) if wait else self._lock.acquire(blocking=False)):
            return
        try:
            events = self._take()
            if events:
                self._write(events)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Write what is waiting and end the thread (at once: its wait is cut short)."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout=5)
        self.flush(timeout=5)  # never hang an ending on a lock an interrupted write may have kept

    @property
    def alive(self) -> bool:
        return self._writer.is_alive()

    def _write_batches(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._stop.wait(self._within())  # gather a batch: one write for all of them
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the writer must outlive one bad batch
                _say(f"tui-trainer: {self._writer.name} could not write {type(exc).__name__}: {exc}")

    def _take(self) -> list[Event]:
        out = []
        while self._waiting:
            out.append(self._waiting.popleft())
        return out


def _say(text: str) -> None:
    import sys

    try:
        print(text, file=sys.stderr)
    except (OSError, ValueError):
        pass
