"""The run's control channel over a pipe: `tui-trainer attach --stdio RUN` on the remote side, and
what the laptop side needs to reach it with the system `ssh` client (no SSH library, no port).

The stdio protocol is the control socket's JSON lines (run/server.py) with one line in front of
them each way:

    relay -> viewer   {"kind":"Hello","protocol":1,"version":"0.1.0","run":"/abs/run","live":true,
                       "refresh_hz":10.0,"lr_reduce_factor":0.5}
                      (or "error": "..." and the relay exits 2)
                      then the run's events, one JSON line each: the bounded replay, then live
    viewer -> relay   {"kind":"Hello","protocol":1,"version":"0.1.0"}, then commands, one a line

Each side checks the other's `protocol`: a mismatch is one line naming both versions, exit 2.
A run that is not live (finished, killed) is sent as the bounded replay of its events.jsonl, and
the relay exits. Nothing listens anywhere: the relay connects to the run's 0600 socket as the ssh
user, so the socket's uid check holds.

`Seen` is the viewer's filter on a reconnect: the new replay is skipped up to what was already
shown, so only the missed events are applied (and none twice)."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tui_trainer import __version__
from tui_trainer.errors import UserError

PROTOCOL = 1
REMOTE_ENV = "TUI_TRAINER_REMOTE"  # the remote program, when it is not `tui-trainer` on the login PATH
SSH_ENV = "TUI_TRAINER_SSH"  # the local ssh client and options of its own (default: ssh)
DEFAULT_REMOTE = "tui-trainer"


# ---------------------------------------------------------------------- hello


def hello_line(**fields) -> bytes:
    return (json.dumps({"kind": "Hello", "protocol": PROTOCOL, "version": __version__, **fields},
                       separators=(",", ":")) + "\n").encode()


def check_hello(line: bytes, where: str) -> dict:
    """The peer's hello, checked: not a hello, or another protocol, is a UserError (exit 2) that
    names both versions."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("kind") != "Hello":
            raise ValueError
    except ValueError:
        text = line[:120].decode(errors="replace").strip()
        raise UserError(f"{where} did not answer with a tui-trainer hello (it said: {text!r}); is it tui-trainer"
                        f" {__version__} or newer?", source="attach") from None
    if data.get("protocol") != PROTOCOL:
        raise UserError(f"version mismatch: {where} runs tui-trainer {data.get('version', '?')} (protocol"
                        f" {data.get('protocol', '?')}), this side tui-trainer {__version__} (protocol {PROTOCOL});"
                        " install the same version on both sides", source="attach")
    return data


# ---------------------------------------------------------------------- the remote side


def resolve_run(run: str | None, base: str = "runs") -> Path:
    """RUN_DIR, or a folder of runs (its newest running run), or nothing (the newest under runs/)."""
    folder = Path(run).expanduser() if run else Path(base)
    if run and (folder / "events.jsonl").is_file():
        return folder
    if run and not folder.exists():
        raise UserError(f"{folder} does not exist; `tui-trainer ls` lists runs", source="attach")
    from tui_trainer.run.catalog import newest_attachable

    newest = newest_attachable(folder)
    if newest is None:
        raise UserError(f"no running run under {folder}/ to attach to; `tui-trainer ls {folder}` lists the runs",
                        source="attach")
    return newest


def serve_stdio(run: str | None, base: str = "runs", stdin: int = 0, stdout: int = 1) -> int:
    """`tui-trainer attach --stdio [RUN]`: relay the run's control socket to stdin/stdout. A live
    run costs no torch import (run/server.py's module does), so a reconnect is quick."""
    try:
        run_dir = resolve_run(run, base)
    except UserError as err:
        _write_all(stdout, hello_line(error=err.message))
        return err.exit_code
    ui = _ui_settings(run_dir)
    sock = _connect(run_dir)
    try:
        _write_all(stdout, hello_line(run=str(run_dir.resolve()), live=sock is not None, **ui))
        if sock is None:
            _write_all(stdout, recorded_replay(run_dir))
            return 0
        return _pump(sock, stdin, stdout)
    except BrokenPipeError:
        return 0  # the viewer (its ssh) went away
    finally:
        if sock is not None:
            sock.close()


def _connect(run_dir: Path) -> socket.socket | None:
    """The run's control socket (control.json names it), connected; None when the run is not live
    (a stale socket is left for `ls`/`attach` to clean up)."""
    try:
        path = json.loads((run_dir / "control.json").read_text())["socket"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _ui_settings(run_dir: Path) -> dict:
    from tui_trainer import config

    try:
        ui = config.load(run_dir / "config.toml").ui
    except UserError:
        ui = config.UiSection()
    return {"refresh_hz": ui.refresh_hz, "lr_reduce_factor": ui.lr_reduce_factor}


def recorded_replay(run_dir: Path) -> bytes:
    """A finished (or killed) run as a new viewer of the live run would have got it: the bounded
    replay of its events.jsonl, plus "dead" when it has no final event."""
    from tui_trainer.engine.events import Failed, Finished, StateChanged
    from tui_trainer.run.rundir import read_events
    from tui_trainer.run.server import Replay

    replay = Replay()
    events = read_events(run_dir / "events.jsonl")
    if not any(isinstance(e, (Finished, Failed)) for e in events):
        last = max((getattr(e, "step", 0) or 0 for e in events), default=0)
        events.append(StateChanged("dead", last))
    for event in events:
        replay.add(event, (event.json_line + "\n").encode())
    return replay.lines()


COALESCE_S = 0.2  # reports that follow each other within this go out as one line


class Coalescer:
    """Step reports that follow one another (contiguous steps, nothing between them) within
    COALESCE_S leave as one report: the losses joined, the rest from the last one. A fast run
    reports tens of times a second; the monitor redraws its header and charts a few times a
    second, and every loss still arrives. (The viewer never applies a step twice: SshLink trims a
    report to the steps it has not shown.) Other events go out at once, after what is pending."""

    PREFIX = b'{"kind":"StepReport"'

    def __init__(self, write, window_s: float = COALESCE_S):
        self._write, self._window = write, window_s
        self._partial = b""
        self._pending: dict | None = None
        self._since = 0.0

    def feed(self, data: bytes, now: float) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if line.startswith(self.PREFIX):
                report = json.loads(line)
                if self._joins(report):
                    self._pending["losses"] += report["losses"]
                    self._pending.update({k: v for k, v in report.items() if k not in ("losses", "first_step")})
                    continue
                out += self._take()
                self._pending, self._since = report, now
            else:
                out += self._take()
                out.append(line + b"\n")
        if out:
            self._write(b"".join(out))

    def _joins(self, report: dict) -> bool:
        pending = self._pending
        return (pending is not None and report.get("first_step") == pending.get("step", 0) + 1
                and isinstance(report.get("losses"), list) and isinstance(pending.get("losses"), list))

    def _take(self) -> list[bytes]:
        if self._pending is None:
            return []
        line = json.dumps(self._pending, separators=(",", ":")).encode() + b"\n"
        self._pending = None
        return [line]

    def timeout(self, now: float) -> float | None:
        """Seconds until the pending report is due (None: nothing pending)."""
        return None if self._pending is None else max(0.0, self._since + self._window - now)

    def flush(self) -> None:
        out = self._take()
        if out:
            self._write(out[0])


def _pump(sock: socket.socket, stdin: int, stdout: int) -> int:
    """Socket -> stdout (reports coalesced), stdin -> socket, until either side ends. The viewer's
    first line is its hello; a mismatch ends the relay (exit 2; the viewer, which checked ours,
    says why)."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "run")
    sel.register(stdin, selectors.EVENT_READ, "viewer")
    out = Coalescer(lambda data: _write_all(stdout, data))
    inbox = bytearray()
    greeted = False
    while True:
        ready = sel.select(out.timeout(time.monotonic()))
        if not ready:
            out.flush()
        for key, _ in ready:
            if key.data == "run":
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    out.flush()
                    return 0  # the run ended (its last events are sent) or dropped us
                out.feed(data, time.monotonic())
                continue
            data = os.read(stdin, 1 << 16)
            if not data:
                return 0  # the viewer left: close our end; the run goes on
            inbox += data
            while b"\n" in inbox:
                line, _, rest = bytes(inbox).partition(b"\n")
                inbox = bytearray(rest)
                if not greeted:
                    greeted = True
                    if b'"Hello"' in line:
                        try:
                            check_hello(line, "the viewer")
                        except UserError as err:
                            print(f"tui-trainer: error: {err}", file=sys.stderr)
                            return 2
                        continue
                sock.sendall(line + b"\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------------- the laptop side


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    path: str | None = None  # remote path as the remote shell should see it ("~/runs/x" stays relative)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"ssh://{self.where}{port}" + (f"/{self.path.lstrip('/')}" if self.path else "")


def is_ssh_url(text: str | os.PathLike | None) -> bool:
    return isinstance(text, str) and text.startswith("ssh://")


def parse_ssh_url(url: str) -> SshTarget:
    """ssh://[user@]host[:port][/path]: /abs/path is absolute, /~/path is under the remote home."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UserError(f"{url!r} is not an ssh URL; write ssh://[user@]host[:port]/path/to/run", source="attach")
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"{url!r}: the port is not a number; write ssh://host:2222/path", source="attach") from None
    path = unquote(parts.path) or None
    if path in ("/", None):
        path = None
    elif path.startswith("/~"):
        path = path[1:]
    return SshTarget(host=parts.hostname, user=unquote(parts.username) if parts.username else None, port=port, path=path)


def remote_program(given: str | None = None) -> str:
    return given or os.environ.get(REMOTE_ENV) or DEFAULT_REMOTE


def quote_remote_path(path: str) -> str:
    """Quoted for the remote shell; a leading ~/ stays unquoted so the remote home is used."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def ssh_argv(target: SshTarget, remote_cmd: str, *, batch: bool = False) -> list[str]:
    """`ssh -T [-p port] [user@]host REMOTE_CMD`: the user's ~/.ssh/config, agent, keys, ProxyJump
    and ControlMaster all apply. Keepalives notice a dead link in ~15 s. Compression: the JSON lines
    shrink 2.5x (benchmarks/ssh_link.py). `batch`: never prompt (a reconnect under the monitor has
    no terminal to ask on)."""
    ssh = shlex.split(os.environ.get(SSH_ENV) or "ssh")
    argv = [*ssh, "-T", "-o", "Compression=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    if target.port:
        argv += ["-p", str(target.port)]
    return [*argv, "--", target.where, remote_cmd]


def remote_failure(target: SshTarget, program: str, code: int | None, stderr: str) -> UserError:
    """Why the remote side never said hello, in one line with the fix."""
    said = " / ".join(line.strip() for line in stderr.strip().splitlines()[-2:] if line.strip())
    if code in (126, 127) or "command not found" in stderr or "No such file" in stderr:
        return UserError(f"`{program}` is not runnable on {target.where} (the remote shell said: {said or code});"
                         f" install tui-trainer there, or name it: --remote-cmd ~/venv/bin/tui-trainer"
                         f" (or {REMOTE_ENV}=...)", source="attach")
    if code == 255:
        return UserError(f"cannot reach {target.where} with ssh: {said or 'ssh exited 255'}", source="attach")
    return UserError(f"the remote side on {target.where} ended before its hello (exit {code}): {said or '-'}",
                     source="attach")


class Seen:
    """Which events the viewer has shown, so that a reconnect's replay adds only what was missed.

    The new replay is a bounded subsequence of the run's stream in order. Everything in it from
    before the link dropped was in the previous replay or came live, so it was shown: an event is
    new when its key (kind, time, step) was not seen and its step is not below the last step seen
    when the link dropped (the step guard covers keys forgotten in a very long run)."""

    def __init__(self, keep: int = 50_000):
        self._keys: set[tuple] = set()
        self._order: deque[tuple] = deque()
        self._keep = keep
        self.max_step = -1
        self.cut_step = -1  # the last step seen when the link dropped (-1: never dropped)

    def new(self, data: dict) -> bool:
        step = data.get("step")
        key = (data.get("kind"), data.get("time"), step)
        if key in self._keys:
            return False
        if isinstance(step, int) and step < self.cut_step:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._keep:
            self._keys.discard(self._order.popleft())
        if isinstance(step, int) and step > self.max_step:
            self.max_step = step
        return True

    def dropped(self) -> None:
        self.cut_step = max(self.cut_step, self.max_step)
