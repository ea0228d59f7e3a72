"""SocketLink: the app's engine link to a run in another process (see run/server.py); SshLink:
the same over `ssh host tui-trainer attach --stdio RUN` (see run/relay.py).

Leaving the viewer (`close`) only closes the connection: training goes on. If the connection
dies, the view says "disconnected" and keeps what it had.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections import deque
from pathlib import Path

from tui_trainer.engine.commands import Command
from tui_trainer.engine.events import Printed, StateChanged, from_json
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


class SshLink(_Buffered):
    """The app's engine link to a run on another machine: the system `ssh` client runs
    `tui-trainer attach --stdio RUN` there (run/relay.py) and the monitor draws here, so only events
    cross the link. The first connection is made before the app starts (ssh may ask for a password
    or a host key on the terminal; a missing remote program or a version mismatch is a one-line
    error, exit 2).

    When the ssh client dies, the view keeps its last picture, the header says "reconnecting… (n)"
    and the link retries with backoff (never prompting: BatchMode). The new replay is filtered by
    `Seen`, so only what was missed is applied. Commands typed while disconnected are refused with
    a message, never queued: a queued command could act minutes later on a run that moved on, and
    a command is written to the link once and never re-sent, so none is applied twice (one in flight
    when the link drops may be lost; the view shows what was applied)."""

    remote = True
    BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)

    def __init__(self, target, remote_cmd: str | None = None):
        from tui_trainer.run.relay import Seen, remote_program

        super().__init__()
        self.target = target
        self.program = remote_program(remote_cmd)
        self.read_only = False
        self.connected = False
        self.attempt = 0  # reconnect attempts since the link dropped (0: connected)
        self.bytes_in = 0  # bytes read from the link (benchmarks)
        self.hello: dict = {}
        self._seen = Seen()
        self._proc = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._step = 0
        self._report_step = -1  # the last step whose loss was shown
        self._state: StateChanged | None = None  # the last state the run reported (restored on reconnect)
        self._connect(batch=False)
        if self.hello.get("run"):  # reconnects go to this run, not to whichever is newest then
            self.target = dataclasses.replace(self.target, path=self.hello["run"])

    # ------------------------------------------------------------------ one connection

    def _remote_cmd(self) -> str:
        from tui_trainer.run.relay import quote_remote_path

        path = f" {quote_remote_path(self.target.path)}" if self.target.path else ""
        return f"{self.program} attach --stdio{path}"

    def _connect(self, batch: bool) -> None:
        """Start ssh, read and check the relay's hello, send ours. Raises UserError."""
        import subprocess

        from tui_trainer.run.relay import check_hello, hello_line, remote_failure, ssh_argv

        argv = ssh_argv(self.target, self._remote_cmd(), batch=batch)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=batch)
        except OSError as exc:
            raise UserError(f"cannot start the ssh client {argv[0]!r}: {exc.strerror or exc}; install openssh-client"
                            " or set TUI_TRAINER_SSH", source="attach") from None
        self._stderr.clear()
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True, name="tui-trainer-ssh-err").start()
        self._proc = proc
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            time.sleep(0.05)  # the stderr reader's last lines
            raise remote_failure(self.target, self.program, code, "\n".join(self._stderr))
        self.bytes_in += len(line)
        hello = check_hello(line, f"the remote side ({self.target.where})")
        if hello.get("error"):
            proc.wait()
            raise UserError(f"on {self.target.where}: {hello['error']}", source="attach")
        try:
            proc.stdin.write(hello_line())
            proc.stdin.flush()
        except (OSError, ValueError):
            pass  # it died already: the reader sees the end
        self.hello = hello
        self.read_only = not hello.get("live", True)
        self.connected = True
        self.attempt = 0

    def _read_stderr(self, proc) -> None:
        for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    # ------------------------------------------------------------------ the reader

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tui-trainer-viewer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._read(self._proc)
            self.connected = False
            if self._closed.is_set() or self.final is not None or self.read_only:
                return
            if not self._reconnect():
                return

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.bytes_in += len(line)
            try:
                data = json.loads(line)
                if not self._seen.new(data) or not self._fresh_losses(data):
                    continue
                event = from_json(data)
            except (ValueError, KeyError, TypeError):
                continue
            self._step = getattr(event, "step", self._step)
            if isinstance(event, StateChanged):
                self._state = event
            self.sink(event)
        try:
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - hung on its way out: it is gone for us either way
            proc.kill()

    def _fresh_losses(self, data: dict) -> bool:
        """A step report keeps only the steps not shown yet (the relay joins reports, so one may
        span the moment the link dropped); False when none is left."""
        if data.get("kind") != "StepReport":
            return True
        first, losses = data.get("first_step"), data.get("losses")
        if isinstance(first, int) and isinstance(losses, list) and first <= self._report_step:
            skip = self._report_step + 1 - first
            if skip >= len(losses):
                return False
            data["losses"], data["first_step"] = losses[skip:], first + skip
        self._report_step = max(self._report_step, data.get("step", 0))
        return True

    def _reconnect(self) -> bool:
        """Retry with backoff until connected (True) or closed (False). The Log pane says when the
        link dropped, why a retry failed (each new reason once) and when it is back."""
        self._seen.dropped()
        self._note(f"the link to {self.target.where} dropped at step {self._step}; reconnecting")
        said = None
        while not self._closed.is_set():
            self.attempt += 1
            self.sink(StateChanged(f"reconnecting… ({self.attempt})", self._step))
            if self._closed.wait(self.BACKOFF_S[min(self.attempt, len(self.BACKOFF_S)) - 1]):
                return False
            try:
                self._connect(batch=True)
            except UserError as err:
                if err.message != said:
                    said = err.message
                    self._note(f"reconnect {self.attempt} failed: {err.message}")
                continue
            if self._closed.is_set():
                return False
            self._note(f"the link to {self.target.where} is back (after {self.attempt} tries); the missed events follow",
                       "note")
            if self._state is not None:  # the last picture's state until the replay says more
                self.sink(StateChanged(self._state.state, self._step))
            return True
        return False

    def _note(self, text: str, stream: str = "stderr") -> None:
        """A line of the link's own in the Log pane (not from the run, so never filtered)."""
        self.sink(Printed(self._step, text, stream))

    # ------------------------------------------------------------------ the app's side

    def send(self, command: Command) -> None:
        if self.read_only:
            raise PermissionError("read-only: this run is not live")
        if not self.connected:
            raise ConnectionError(f"not sent: the link to {self.target.where} is down (reconnecting…); press the key"
                                  " again once it is back")
        data = (json.dumps(command.to_json()) + "\n").encode()
        with self._send_lock:
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except (OSError, ValueError):
                raise ConnectionError("not sent: the link dropped; press the key again once it is back") from None

    def close(self) -> None:
        self._closed.set()
        proc = self._proc
        if proc is None:
            return
        try:
            proc.stdin.close()  # the relay sees the end and exits; the run goes on
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=2)
        except Exception:  # noqa: BLE001
            proc.kill()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return True
