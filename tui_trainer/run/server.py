"""The control channel of a run: a Unix domain socket that outlives any terminal.

Events flow out as JSON lines (a replay of the run so far on connect, then live); commands flow
in as JSON lines and go into the engine's command queue, so every viewer's commands are applied
in order, like keys. The socket is mode 0600 and a peer of another uid is refused; nothing
listens on a network port.

One selector thread serves every viewer. The engine's sink only appends under a lock and, when a
viewer is connected, pokes a socketpair, so the trainer never waits on a viewer; a viewer that
falls 16 MiB behind is dropped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path

from tui_trainer.engine.commands import Control
from tui_trainer.engine.commands import from_json as command_from_json
from tui_trainer.engine.events import (EpochEnd, Event, LayerShapes, LayerStats, LrPlanned, Printed, RunStarted,
                                      StepReport)
from tui_trainer.errors import UserError

INFO = "control.json"
SOCKET = "control.sock"
MAX_BACKLOG = 16 * 2**20  # bytes a viewer may fall behind before it is dropped
RECENT_REPORTS = 600  # reports replayed at full resolution; older ones are thinned
MAX_OLD_REPORTS = 2048
RECENT_EPOCHS = 500
MAX_OLD_EPOCHS = 500
MAX_OTHER = 1000
MAX_PRINTED = 500  # lines a user loop printed, kept for a new viewer


def socket_path(run_dir: Path) -> Path:
    """run_dir/control.sock, or a short path under /tmp when that would pass the sun_path limit."""
    path = run_dir.resolve() / SOCKET
    if len(os.fsencode(str(path))) <= 100:
        return path
    short = Path(f"/tmp/tui-trainer-{os.getuid()}")
    short.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha1(os.fsencode(str(run_dir.resolve()))).hexdigest()[:16]
    return short / f"{digest}.sock"


def live_socket(run_dir: Path) -> Path | None:
    """The socket of a live run, or None. A stale socket of a dead run is cleaned up here."""
    info_path = Path(run_dir) / INFO
    try:
        info = json.loads(info_path.read_text())
        path = Path(info["socket"])
    except (OSError, ValueError, KeyError):
        return None
    if _connectable(path):
        return path
    for stale in (path, info_path):  # the process is gone (SIGKILL, power loss): clean up after it
        try:
            stale.unlink()
        except OSError:
            pass
    return None


def _connectable(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Replay:
    """What a viewer gets on connect, bounded whatever the run's length, in the original order:
    everything up to RunStarted; the latest layer stats and output shapes; reports (the last
    RECENT_REPORTS in full, older ones thinned to MAX_OLD_REPORTS); epoch ends likewise (RECENT_EPOCHS /
    MAX_OLD_EPOCHS);
    and the last MAX_OTHER of every other event (checkpoints, LR and freeze changes, warnings,
    states). A change of trainable state carries the whole map, so the latest one is enough.
    What a user loop printed (Printed) has a queue of its own (the last MAX_PRINTED, before
    RunStarted too), so a chatty loop cannot push the rare events out of the replay."""

    def __init__(self) -> None:
        self.head: list[tuple[int, bytes]] = []
        self.reports: list[tuple[int, bytes]] = []
        self.epochs: list[tuple[int, bytes]] = []
        self.other: deque[tuple[int, bytes]] = deque(maxlen=MAX_OTHER)
        self.printed: deque[tuple[int, bytes]] = deque(maxlen=MAX_PRINTED)
        self.stats: tuple[int, bytes] | None = None
        self.shapes: tuple[int, bytes] | None = None
        self.plan: tuple[int, bytes] | None = None
        self._started = False
        self._seq = 0

    def add(self, event: Event, line: bytes | None = None) -> None:
        """`event`, with its line when it was made already; else the line is made if a viewer ever
        asks (`lines`): a run nobody attaches to never encodes its events here."""
        self._seq += 1
        item = (self._seq, line if line is not None else event)
        if isinstance(event, Printed):
            self.printed.append(item)
            return
        if not self._started:
            self.head.append(item)
            match event:
                case RunStarted():
                    self._started = True
            return
        match event:
            case StepReport():
                self.reports = _thinned(self.reports, item, RECENT_REPORTS, MAX_OLD_REPORTS)
            case EpochEnd():
                self.epochs = _thinned(self.epochs, item, RECENT_EPOCHS, MAX_OLD_EPOCHS)
            case LayerStats():
                self.stats = item
            case LayerShapes():
                self.shapes = item  # once a run; kept out of `other`, which a long run can fill
            case LrPlanned():
                self.plan = item  # the same
            case _:
                self.other.append(item)

    def lines(self) -> bytes:
        merged = sorted(self.head + self.reports + self.epochs + list(self.other) + list(self.printed)
                        + [x for x in (self.stats, self.shapes, self.plan) if x])
        return b"".join(x if isinstance(x, bytes) else (x.json_line + "\n").encode() for _, x in merged)


def _thinned(items: list, item, recent: int, old_max: int) -> list:
    items.append(item)
    if len(items) > recent + old_max:
        old = items[:-recent]
        items = old[1::2] + items[-recent:]
    return items


WATCHING_AFTER_S = 0.3  # a connection this old is a viewer, not a probe (ControlServer.watched)


class _Viewer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.since = time.monotonic()
        self.out = bytearray()
        self.inbox = bytearray()


class ControlServer:
    """A sink (`server(event)`) plus a thread that serves viewers. `start()` before the run,
    `close()` after it."""

    def __init__(self, run_dir: str | Path, control: Control):
        self.run_dir = Path(run_dir)
        self.control = control
        self.path = socket_path(self.run_dir)
        self._replay = Replay()
        self._outbox: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._viewers: dict[int, _Viewer] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.path.exists():
            if _connectable(self.path):
                raise UserError(f"{self.run_dir} is in use by a running tui-trainer ({self.path}); attach to it with"
                                f" `tui-trainer attach {self.run_dir}` or pick another --run-dir", source="--run-dir")
            self.path.unlink()  # a stale socket of a dead run
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where others could connect
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        info = {"socket": str(self.path), "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        tmp = self.run_dir / f".{INFO}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.run_dir / INFO)
        self._sel.register(listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="tui-trainer-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Send what is queued (the final events), then stop serving and remove the socket."""
        self._flush_before_close()
        self._closing = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.remove_files()

    def remove_files(self) -> None:
        """The socket and control.json go: `ls` and `attach` see a run that is not live."""
        for path in (self.path, self.run_dir / INFO):
            try:
                path.unlink()
            except OSError:
                pass

    def _flush_before_close(self, limit_s: float = 2.0) -> None:
        deadline = time.monotonic() + limit_s
        self._poke()
        while time.monotonic() < deadline:
            with self._lock:
                pending = bool(self._outbox) or any(v.out for v in self._viewers.values())
            if not pending:
                return
            time.sleep(0.01)

    # ------------------------------------------------------------------ the sink

    def __call__(self, event: Event) -> None:
        line = (event.json_line + "\n").encode() if self._viewers else None  # no viewer: no JSON made here
        with self._lock:
            self._replay.add(event, line)
            viewers = bool(self._viewers)
            if viewers:  # (one may have come since)
                self._outbox.append(line if line is not None else (event.json_line + "\n").encode())
        if viewers:  # nobody to send to: no syscall, no thread woken on the training thread's time
            self._poke()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closed

    # ------------------------------------------------------------------ the thread

    def _serve(self) -> None:
        while not self._closing:
            for key, mask in self._sel.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    viewer: _Viewer = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(viewer)
                    if mask & selectors.EVENT_WRITE and viewer.sock.fileno() in self._viewers:
                        self._write(viewer)
            self._distribute()
        for viewer in list(self._viewers.values()):
            self._drop(viewer)
        self._sel.close()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        if not _same_user(sock):
            sock.close()
            return
        sock.setblocking(False)
        viewer = _Viewer(sock)
        with self._lock:
            self._distribute_locked()  # existing viewers get what is queued; the newcomer the replay
            viewer.out += self._replay.lines()
            self._viewers[sock.fileno()] = viewer
        self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, viewer)

    def _distribute(self) -> None:
        with self._lock:
            self._distribute_locked()
        for viewer in list(self._viewers.values()):
            if len(viewer.out) > MAX_BACKLOG:
                self._drop(viewer)  # too slow to keep up: the trainer must never wait on it
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if viewer.out else 0)
            try:
                self._sel.modify(viewer.sock, events, viewer)
            except (KeyError, ValueError, OSError):
                pass

    def _distribute_locked(self) -> None:
        while self._outbox:
            line = self._outbox.popleft()
            for viewer in self._viewers.values():
                viewer.out += line

    def _write(self, viewer: _Viewer) -> None:
        try:
            with self._lock:
                sent = viewer.sock.send(viewer.out[:1 << 20])
                del viewer.out[:sent]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(viewer)

    def _read(self, viewer: _Viewer) -> None:
        try:
            data = viewer.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(viewer)
            return
        viewer.inbox += data
        while b"\n" in viewer.inbox:
            line, _, rest = bytes(viewer.inbox).partition(b"\n")
            viewer.inbox = bytearray(rest)
            try:
                self.control.send(command_from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue  # not a command we know: ignore it, keep the viewer
        if len(viewer.inbox) > 65536:
            self._drop(viewer)

    def _drop(self, viewer: _Viewer) -> None:
        with self._lock:
            self._viewers.pop(viewer.sock.fileno(), None)
        try:
            self._sel.unregister(viewer.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            viewer.sock.close()
        except OSError:
            pass

    @property
    def viewers(self) -> int:
        with self._lock:
            return len(self._viewers)

    def watched(self) -> bool:
        """A viewer has been attached for WATCHING_AFTER_S: someone looks. (A liveness probe, from
        `ls`, `attach`'s own check or `live_socket`, connects and leaves at once.)"""
        now = time.monotonic()
        with self._lock:
            return any(now - v.since >= WATCHING_AFTER_S for v in self._viewers.values())


def _same_user(sock: socket.socket) -> bool:
    """Refuse a peer of another uid (the 0600 mode already should; this is belt and braces)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        return exc.errno == errno.ENOPROTOOPT  # no SO_PEERCRED on this platform: rely on the mode
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()
