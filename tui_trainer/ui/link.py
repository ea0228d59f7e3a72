"""The app's one connection to an engine: events in, commands out.

The app never touches a Trainer. It calls `start()`, polls `drain()` on a timer, `send()`s
commands and `close()`s when the viewer leaves. `LocalLink` runs the engine in a thread of this
process; `ReplayLink` shows a recorded run read-only. (A socket link to a detached run is the
third implementation of the same interface.)
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from typing import Protocol

from tui_trainer.engine.commands import Command
from tui_trainer.engine.events import Event, Failed, Finished


class EngineLink(Protocol):
    read_only: bool
    final: Finished | Failed | None

    def start(self) -> None: ...

    def send(self, command: Command) -> None: ...

    def drain(self) -> list[Event]: ...

    def close(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class _Buffered:
    """Events land in a deque from any thread (append never blocks); the app drains it."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self.final: Finished | Failed | None = None
        self.buffering = True  # False once nobody drains (the app has gone): only `final` is kept

    def sink(self, event: Event) -> None:
        match event:
            case Finished() | Failed():
                self.final = event
        if self.buffering:
            self._events.append(event)

    def drain(self) -> list[Event]:
        out = []
        events = self._events
        while events:
            out.append(events.popleft())
        return out


class LocalLink(_Buffered):
    """The engine in a daemon thread of this process. Leaving (`close`) asks the trainer to stop
    after its current step and save; `wait` joins it so nothing is lost on the way out."""

    read_only = False

    def __init__(self) -> None:
        super().__init__()
        self.session = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self, session) -> None:
        self.session = session

    def should_stop(self) -> bool:
        return self._closing.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tui-trainer-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.session.trainer.run()
        except BaseException as exc:  # the trainer turns failures into events; this is a last resort
            self.sink(Failed(self.session.trainer.step, self.session.trainer.epoch_of_step,
                             f"{type(exc).__name__}: {exc}", traceback.format_exc(), None))
        finally:
            self.session.close()

    def send(self, command: Command) -> None:
        self.session.control.send(command)

    def close(self) -> None:
        self._closing.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


class ReplayLink(_Buffered):
    """A finished run (events.jsonl) or a fixed history: shown as it ended, no commands."""

    read_only = True

    def __init__(self, events: list[Event]):
        super().__init__()
        for event in events:
            self.sink(event)

    def start(self) -> None:
        pass

    def send(self, command: Command) -> None:
        raise PermissionError("read-only: this run is not live")

    def close(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True
