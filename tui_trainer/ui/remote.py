"""SocketLink: the app's engine link to a run in another process (see run/server.py).

Leaving the viewer (`close`) only closes the connection: training goes on. If the connection
dies, the view says "disconnected" and keeps what it had.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from tui_trainer.engine.commands import Command
from tui_trainer.engine.events import StateChanged, from_json
from tui_trainer.errors import UserError
from tui_trainer.ui.link import _Buffered


class SocketLink(_Buffered):
    read_only = False
    remote = True

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(str(self.path))
        except OSError as exc:
            raise UserError(f"cannot connect to {self.path}: {exc.strerror or exc}", source="attach") from None
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.connected = True
        self._step = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read, name="tui-trainer-viewer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._sock.makefile("rb") as stream:
            try:
                for line in stream:
                    try:
                        event = from_json(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._step = getattr(event, "step", self._step)
                    self.sink(event)
            except OSError:
                pass
        self.connected = False
        if self.final is None and not self._closed:
            self.sink(StateChanged("disconnected", self._step))

    def send(self, command: Command) -> None:
        data = (json.dumps(command.to_json()) + "\n").encode()
        with self._send_lock:
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise ConnectionError(f"the run is gone ({exc.strerror or exc})") from None

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return True
