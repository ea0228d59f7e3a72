"""Run the real CLI in a subprocess, optionally on a pseudo-terminal that is its controlling
terminal (as in an SSH session), and talk to it: wait for a file, send a signal, type Ctrl+C,
hang up the terminal."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from tests.conftest import cli_env


class Cli:
    def __init__(self, args: list[str], cwd: Path, *, tty: bool = False, ignore_sighup: bool = False,
                 env: dict | None = None):
        self.cwd = cwd
        self.tty = tty
        self.output = bytearray()
        self._master: int | None = None
        self._stop_reading = threading.Event()
        child_env = {**cli_env(), **(env or {})}

        def setup():  # in the child, before exec
            if ignore_sighup:  # what nohup does
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes its controlling terminal

        cmd = [sys.executable, "-m", "tui_trainer", *args]
        if tty:
            master, slave = os.openpty()
            self._master = master
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdin=slave, stdout=slave, stderr=slave,
                                         start_new_session=True, preexec_fn=setup)
            os.close(slave)
            self._reader = threading.Thread(target=self._read_pty, daemon=True)
        else:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=setup)
            self._reader = threading.Thread(target=self._read_pipe, daemon=True)
        self._reader.start()

    def _read_pty(self) -> None:
        import select

        while not self._stop_reading.is_set():
            # never block in read(): a read in progress holds the terminal open, and hangup()
            # must close it at once (the kernel sends SIGHUP when the last reference goes)
            if not select.select([self._master], [], [], 0.02)[0]:
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO once the child side is gone
                return
            if not data:
                return
            self.output += data

    def _read_pipe(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_file(self, path: Path, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {path.name}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {path.name} after {timeout}s:\n{self.text[-4000:]}")
            time.sleep(0.02)
        time.sleep(0.05)  # the writer may still be writing the few bytes
        return path.read_text()

    def signal(self, signum: int, group: bool = False) -> None:
        if group:  # as a shell's job control, SLURM or systemd do: every process of the job
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)

    def type(self, data: bytes) -> None:
        assert self._master is not None
        os.write(self._master, data)

    def hangup(self) -> None:
        """Close the terminal, as a dropped SSH connection does: the kernel sends SIGHUP."""
        assert self._master is not None
        self._stop_reading.set()
        self._reader.join(timeout=10)
        os.close(self._master)
        self._master = None

    def wait(self, timeout: float = 180) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"hung; killed after {timeout}s:\n{self.text[-4000:]}") from None
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._close_pty()

    def _close_pty(self) -> None:
        if self._master is not None:
            self._stop_reading.set()
            self._reader.join(timeout=10)
            os.close(self._master)
            self._master = None


class ForkServer:
    """Client of `tests.helpers.forkserver` (see there). One per test session."""

    def __init__(self):
        env = cli_env()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.forkserver"], cwd=Path(__file__).parents[2],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._lock = threading.Lock()
        self._children: dict[str, Forked] = {}
        self._n = 0
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fork server did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import json

        for line in iter(self.proc.stdout.readline, b""):
            msg = json.loads(line)
            with self._lock:
                child = self._children[msg["id"]]
            if "code" in msg:
                child._set_code(msg["code"])
            else:
                child._set_pid(msg["pid"])

    def start(self, args: list[str], cwd: Path, *, tty: bool = False, ignore_sighup: bool = False,
              env: dict | None = None, log: str = "output.txt", err_log: str | None = None) -> Forked:
        import json

        with self._lock:
            self._n += 1
            ident = str(self._n)
            child = Forked(cwd, tty, log)
            self._children[ident] = child
        req = {"id": ident, "args": [str(a) for a in args], "cwd": str(cwd), "tty": child.tty_name,
               "ignore_sighup": ignore_sighup, "env": env or {}, "log": log, "err_log": err_log}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        child._await_pid()
        return child

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Forked:
    """A CLI run started by the fork server; the same interface as `Cli`."""

    _read_pty = Cli._read_pty
    _close_pty = Cli._close_pty
    type = Cli.type
    hangup = Cli.hangup

    def __init__(self, cwd: Path, tty: bool, log: str = "output.txt"):
        self.cwd, self.tty, self.log = cwd, tty, log
        self.output = bytearray()
        self._master = None
        self._stop_reading = threading.Event()
        self.tty_name = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._got_pid = threading.Event()
        self._done = threading.Event()
        if tty:
            master, slave = os.openpty()
            self._master, self.tty_name = master, os.ttyname(slave)
            self._slave = slave  # kept open until the child has opened it itself
            self._reader = threading.Thread(target=self._read_pty, daemon=True)
            self._reader.start()
        else:
            self._reader = None

    def _set_pid(self, pid: int) -> None:
        self.pid = pid
        self._got_pid.set()

    def _set_code(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def _await_pid(self) -> None:
        if not self._got_pid.wait(60):
            raise AssertionError("fork server did not start the run")
        if self.tty:
            time.sleep(0.2)  # let the child open the terminal before we drop our slave fd
            os.close(self._slave)

    @property
    def text(self) -> str:
        if not self.tty:
            log = self.cwd / self.log
            return log.read_text(errors="replace") if log.exists() else ""
        return self.output.decode("utf-8", "replace")

    def poll(self) -> int | None:
        return self.returncode

    def wait_for_file(self, path: Path, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.returncode is not None:
                raise AssertionError(f"exited {self.returncode} before {path.name}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {path.name} after {timeout}s:\n{self.text[-4000:]}")
            time.sleep(0.02)
        time.sleep(0.05)
        return path.read_text()

    def signal(self, signum: int, group: bool = False) -> None:
        if group:
            os.killpg(self.pid, signum)  # the child is a session (and group) leader
        else:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 120) -> int:
        if not self._done.wait(timeout):
            self.kill()
            raise AssertionError(f"hung; killed after {timeout}s:\n{self.text[-4000:]}")
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._done.wait(30)

    def close(self) -> None:
        if self.returncode is None and self.pid is not None:
            self.kill()
        self._close_pty()
