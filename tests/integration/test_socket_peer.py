"""Another user cannot steer a live run through its control socket (run/server.py).

Two layers keep a stranger out: the socket file is born mode 0600, so another uid's connect()
fails with EACCES; and the server checks the peer's uid (SO_PEERCRED, `_same_user`) on every
accepted connection and closes it at once, before any replay is sent or any line is read.

The test needs a second uid, so it runs where the suite runs as root (CI): a forked child drops
to `nobody` and tries to send a Stop to a real headless run held at a step. With the file mode as
the run made it, the connect is refused (layer 1). With the socket chmod-ed 0666 for the test,
the connect goes through and the uid check is what closes it (layer 2): no replay byte arrives,
while a same-user viewer on the same 0666 socket does get the replay. The run then goes on and
completes every step: the stranger's Stop was never applied.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.helpers.runs import of_kind, read_events, wait_until, write_preset
from tui_trainer.engine.commands import Stop
from tui_trainer.engine.commands import from_json as command_from_json
from tui_trainer.run.server import live_socket

STOP_LINE = b'{"kind": "Stop", "reason": "user"}\n'
EPOCHS, STEPS_PER_EPOCH, HELD_AT = 2, 7, 2  # the tiny preset: 7 steps an epoch


def stranger_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(socket, "SO_PEERCRED"),
                       reason="needs fork and SO_PEERCRED (Linux)"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs a second uid: only root can become another user (CI runs as root)"),
]


def as_stranger(sock: Path, uid: int, gid: int, payload: bytes, timeout_s: float = 30) -> dict:
    """In a forked child running as `uid`/`gid` (no supplementary groups): connect to `sock`, send
    `payload`, read until the server closes. Returns what happened, as the child saw it.

    The child chdirs into the socket's directory before giving up root and connects by the bare
    name, so only that directory (and the socket's own mode) decide, not the test's tmp path."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain syscalls only, then _exit (no pytest, no atexit, no flush)
        out: dict = {}
        try:
            os.close(r)
            os.chdir(sock.parent)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out["uid"] = os.getuid()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout_s)
            try:
                s.connect(sock.name)
            except OSError as exc:
                out["connect"] = errno.errorcode.get(exc.errno, str(exc.errno))
            else:
                out["connect"] = "ok"
                try:
                    s.sendall(payload)
                    out["send"] = "ok"
                except OSError as exc:  # the server may have closed it already: EPIPE
                    out["send"] = errno.errorcode.get(exc.errno, str(exc.errno))
                received = b""
                try:
                    while chunk := s.recv(65536):
                        received += chunk
                    out["end"] = "eof"
                except TimeoutError:
                    out["end"] = "timeout"  # still open: the server did not refuse it
                except OSError as exc:  # closed with our line unread: ECONNRESET
                    out["end"] = errno.errorcode.get(exc.errno, str(exc.errno))
                out["received"] = len(received)
            s.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            out["error"] = repr(exc)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return json.loads(data)


def replay_first_line(sock: Path) -> dict:
    """A same-user viewer: the first replay line of the socket (without sending anything)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        return json.loads(s.makefile("rb").readline())


def test_another_user_is_refused_by_the_socket_mode_and_by_the_peer_uid_check(tmp_path):
    uid, gid = stranger_ids()
    assert uid != os.getuid()
    assert command_from_json(json.loads(STOP_LINE)) == Stop(reason="user"), "the line would stop the run"
    preset = write_preset(tmp_path / "held.toml", train={"epochs": EPOCHS, "log_every": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": HELD_AT}])
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir", str(run)],
                            cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=open(tmp_path / "run.out", "w"), stderr=subprocess.STDOUT)
    parent_mode = None
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), f"the run held at step {HELD_AT}")
        sock = live_socket(run)
        assert sock is not None
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        parent = sock.parent  # the run dir, or /tmp/tui-trainer-<uid> for a long path: it must be searchable
        parent_mode = stat.S_IMODE(parent.stat().st_mode)
        if not parent_mode & stat.S_IXOTH:
            parent.chmod(parent_mode | stat.S_IXOTH)

        # Layer 1: the file mode as the run made it. The kernel refuses the connect.
        first = as_stranger(sock, uid, gid, STOP_LINE)
        assert first == {"uid": uid, "connect": "EACCES"}, first

        # Layer 2: the file mode opened up; the connect is accepted and the uid check closes it at
        # once: not one replay byte, and the server never reads the Stop line.
        sock.chmod(0o666)
        try:
            second = as_stranger(sock, uid, gid, STOP_LINE)
            ours = replay_first_line(sock)  # the same socket serves its own user: the refusal is the uid
        finally:
            sock.chmod(0o600)
        assert second.get("connect") == "ok" and second.get("received") == 0, second
        assert second.get("end") in ("eof", "ECONNRESET"), second  # closed by the server, not timed out
        assert ours["kind"] in ("StateChanged", "RunStarted"), ours
    finally:
        (tmp_path / "go").write_text("")
        try:
            code = proc.wait(timeout=240)
        finally:
            proc.kill()
            if parent_mode is not None:
                parent.chmod(parent_mode)
    out = (tmp_path / "run.out").read_text()
    assert code == 0, out[-2000:]

    # Nothing the stranger sent was applied: the run went on to its last step and completed.
    events = read_events(run)
    (finished,) = of_kind(events, "Finished")
    assert (finished["status"], finished["step"]) == ("completed", EPOCHS * STEPS_PER_EPOCH), finished
    assert "stopping" not in [e["state"] for e in of_kind(events, "StateChanged")]
    assert max(e["step"] for e in of_kind(events, "StepReport")) == EPOCHS * STEPS_PER_EPOCH
