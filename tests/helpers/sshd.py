"""A throw-away OpenSSH server on 127.0.0.1 for tests that drive the real CLI through a real SSH
session, and an ssh client held in tmux the way a person's terminal holds one, so that a test can
drop the connection (kill -9 the client) and see what the remote run does.

The `sshd` fixture (tests/conftest.py, session scope) yields an `SshServer`; see its methods.
It skips where sshd, ssh or ssh-keygen are missing, where we are not root (sshd needs root to
switch users; as root it logs us in as root), or where the root account is locked.

    def test_drop(sshd, tiny_preset, tmp_path):
        run = tmp_path / "run"
        cmd = sshd.remote_shell_cmd(tmp_path, tiny_preset(), "--run-dir", run)
        with sshd.session(cmd) as ssh:                 # ssh -tt ... in a detached tmux session
            ssh.wait_for_screen("RUNNING")
            assert sshd.find_cli_processes(str(run))   # the remote CLI (and its children)
            ssh.kill_client()                          # the drop: kill -9 the ssh client
        sshd.assert_none_left(str(run), timeout=60)

Nothing here touches the system's sshd, its config or ~/.ssh: every file lives in a temp dir that
is removed at the end. Environment overrides (for checking the skips, or another OpenSSH):
TUI_TRAINER_TEST_SSHD, TUI_TRAINER_TEST_SSH, TUI_TRAINER_TEST_SSH_KEYGEN (paths to the binaries).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

LOGIN = "root"
HOST = "127.0.0.1"
SERVER_ALIVE = ("-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")

# what the remote login shell gets, on top of what sshd sets (HOME, USER, PATH, SSH_CONNECTION...):
# the remote side does not inherit the test's environment
REMOTE_ENV = {
    "PYTHONPATH": str(ROOT),
    "PYTHONUNBUFFERED": "1",
    "TERM": "xterm-256color",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",  # the tiny models train ~5x faster on one thread on a shared 2-core box
}

_names = itertools.count(1)
_VARS = ("TUI_TRAINER_TEST_SSHD", "TUI_TRAINER_TEST_SSH", "TUI_TRAINER_TEST_SSH_KEYGEN")


def _binary(var: str, name: str, *fallbacks: str) -> str | None:
    if os.environ.get(var):
        path = os.environ[var]
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)  # sshd re-executes itself: it needs an absolute path
    return next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _root_locked() -> bool:
    """sshd without PAM refuses a locked account ('!' in the shadow password field), keys or not."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            user, _, rest = line.partition(":")
            if user == LOGIN:
                return rest.startswith("!")
    except OSError:
        pass
    return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(proc: psutil.Process) -> str:
    return " ".join(proc.info.get("cmdline") or [])


class SshServer:
    """The running sshd. Attributes: port, host, user, key (the client's private key), dir (the
    temp dir), pid (the listener's)."""

    def __init__(self, sshd: str, ssh: str, keygen: str):
        self.sshd_bin, self.ssh_bin, self.keygen = sshd, ssh, keygen
        self.host, self.user = HOST, LOGIN
        self.dir = Path(tempfile.mkdtemp(prefix="tui-trainer-sshd-"))
        self.key = self.dir / "client_ed25519"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        # a private tmux server, gone with the last session (watch one: tmux -S SOCKET attach -t NAME)
        self.tmux_socket = self.dir / "tmux.sock"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._sessions: list[SshSession] = []

    @property
    def pid(self) -> int | None:
        """The listener's pid."""
        return self.proc.pid if self.proc is not None else None

    # ---- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        host_key = self.dir / "host_ed25519"
        for key in (host_key, self.key):
            subprocess.run([self.keygen, "-q", "-N", "", "-t", "ed25519", "-C", "tui-trainer-test", "-f", str(key)],
                           check=True, capture_output=True, timeout=60)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        self._settings = {
            "ListenAddress": HOST,  # the port goes on its own line below
            "AddressFamily": "inet",
            "HostKey": str(host_key),
            "PidFile": str(self.dir / "sshd.pid"),
            "AuthorizedKeysFile": str(authorized),
            "PermitRootLogin": "prohibit-password",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "StrictModes": "no",
            "ClientAliveInterval": "1",  # a silent client is dropped in seconds (see kill_client)
            "ClientAliveCountMax": "3",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "X11Forwarding": "no",
            "UseDNS": "no",
            "PerSourcePenalties": "no",  # OpenSSH >= 9.8 would lock out 127.0.0.1 after killed clients
        }
        self._check_config()
        for attempt in range(5):  # the free port can be taken between probing and sshd's bind
            self.port = _free_port()
            self._write_config()
            self.log_path.write_bytes(b"")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([self.sshd_bin, "-D", "-e", "-f", str(self.config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True, preexec_fn=_die_with_parent)
            if self._await_listening(timeout=30):
                break
            if "Address already in use" not in self.log() or attempt == 4:
                raise RuntimeError(f"sshd did not start (exit {self.proc.returncode}):\n{self.log()}")
        self._probe_login()

    def _write_config(self) -> None:
        lines = [f"Port {self.port}", *(f"{k} {v}" for k, v in self._settings.items())]
        self.config.write_text("\n".join(lines) + "\n")

    def _check_config(self) -> None:
        """`sshd -t`: drop options this OpenSSH does not know, make a missing privilege separation
        dir (/run/sshd on Debian: it is made by the service's start script, which we do not run)."""
        for _ in range(10):
            self.port = 22  # any: -t does not bind
            self._write_config()
            out = subprocess.run([self.sshd_bin, "-t", "-f", str(self.config)], capture_output=True, text=True,
                                 timeout=60)
            if out.returncode == 0:
                return
            msg = out.stderr + out.stdout
            if m := re.search(r"Missing privilege separation directory: (\S+)", msg):
                os.makedirs(m.group(1), mode=0o755, exist_ok=True)
                continue
            unknown = [k for k in ("PerSourcePenalties", "KbdInteractiveAuthentication", "UsePAM")
                       if k in self._settings and re.search(rf"(Bad configuration option|Unsupported option)"
                                                            rf":? {k}", msg, re.I)]
            if not unknown:
                raise RuntimeError(f"sshd rejects the test config:\n{msg}\n{self.config.read_text()}")
            for k in unknown:
                del self._settings[k]
        raise RuntimeError(f"sshd rejects the test config:\n{msg}")

    def _await_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((HOST, self.port)) == 0:
                    return True
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"sshd did not listen on {HOST}:{self.port} within {timeout}s:\n{self.log()}")

    def _probe_login(self) -> None:
        out = self.run("echo ok", timeout=60)
        if out.returncode == 0 and out.stdout.strip() == "ok":
            return
        log = self.log()
        self.stop()
        if "account is locked" in log or "not allowed because" in log:
            pytest.skip(f"sshd refuses to log in {LOGIN}: {log.strip().splitlines()[-1]}")
        raise RuntimeError(f"cannot log in through the test sshd (ssh exit {out.returncode}):\n"
                           f"{out.stdout}{out.stderr}\nsshd log:\n{log}")

    def log(self) -> str:
        """What sshd wrote (-e: to stderr, here a file): connections, auth failures, disconnects."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Close leftover tmux sessions, stop the listener and the per-connection sshd processes
        (terminate, then kill), and remove the temp dir. Idempotent."""
        for session in self._sessions:
            session.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                listener = psutil.Process(self.proc.pid)
                family = [listener] + [p for p in listener.children(recursive=True)
                                       if p.name().startswith("sshd")]
            except psutil.NoSuchProcess:
                family = []
            for p in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.terminate()
            _, left = psutil.wait_procs(family, timeout=5)
            for p in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(left, timeout=5)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the client ----------------------------------------------------------------------------
    def ssh_argv(self, *remote_cmd: str, tty: bool = True) -> list[str]:
        """The ssh client's argv: `ssh -tt -p PORT -i KEY -o ... root@127.0.0.1 REMOTE_CMD...`.
        ssh joins the remote parts with spaces and the remote login shell runs the result, so pass
        one string built with shlex (see remote_shell_cmd) rather than several words."""
        argv = [self.ssh_bin]
        if tty:
            argv.append("-tt")
        argv += ["-F", "/dev/null",  # no ~/.ssh/config, no /etc/ssh/ssh_config
                 "-p", str(self.port), "-i", str(self.key),
                 "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                 "-o", "ConnectTimeout=60", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                 *SERVER_ALIVE, f"{self.user}@{self.host}", *remote_cmd]
        return argv

    def client_config(self) -> Path:
        """An ssh_config file with what ssh_argv passes as options, for a program that starts the
        system ssh itself (`tui-trainer attach ssh://`): TUI_TRAINER_SSH="ssh -F FILE"."""
        path = self.dir / "client_config"
        if not path.exists():
            path.write_text("\n".join([
                f"Host {self.host}", f"  Port {self.port}", f"  User {self.user}", f"  IdentityFile {self.key}",
                "  IdentitiesOnly yes", "  IdentityAgent none", "  StrictHostKeyChecking no",
                "  UserKnownHostsFile /dev/null", "  GlobalKnownHostsFile /dev/null", "  LogLevel ERROR",
                "  BatchMode yes", "  ConnectTimeout 60", "  ControlMaster no", "  ControlPath none", ""]))
        return path

    def client_env(self, remote: str | None = None) -> dict[str, str]:
        """The environment for a local `tui-trainer attach ssh://` or `ls ssh://` that reaches this
        sshd: its ssh client config (TUI_TRAINER_SSH) and the remote program (TUI_TRAINER_REMOTE,
        default: this interpreter with the repo on PYTHONPATH; the remote side does not inherit the
        test's environment)."""
        if remote is None:
            remote = self.remote_program()
        return {"TUI_TRAINER_SSH": f"{self.ssh_bin} -F {self.client_config()}", "TUI_TRAINER_REMOTE": remote}

    def remote_program(self) -> str:
        """`tui-trainer` as the remote shell should run it: env REMOTE_ENV... python -m tui_trainer."""
        assigns = [f"{k}={v}" for k, v in REMOTE_ENV.items()]
        return shlex.join(["env", *assigns, sys.executable, "-m", "tui_trainer"])

    def run(self, remote_cmd: str | Sequence[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """A non-interactive command (no tty, stdin /dev/null), output captured as text. A list is
        quoted with shlex.join; a string goes to the remote shell as it is."""
        cmd = remote_cmd if isinstance(remote_cmd, str) else shlex.join(map(str, remote_cmd))
        return subprocess.run(self.ssh_argv(cmd, tty=False), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kwargs)

    def remote_exec_cmd(self, cwd: str | os.PathLike, *argv: str | os.PathLike,
                        env: Mapping[str, str | None] | None = None) -> str:
        """`cd CWD && exec env K=V... ARGV`, quoted, with REMOTE_ENV plus `env` (None drops a
        variable). `exec`: the command replaces the login shell, as `ssh host cmd` does for a
        simple command, so it is the pty's session leader, right under sshd."""
        merged = {**REMOTE_ENV, **(env or {})}
        assigns = [f"{k}={v}" for k, v in merged.items() if v is not None]
        return (f"cd {shlex.quote(str(cwd))} && exec env "
                + shlex.join([*assigns, *(str(a) for a in argv)]))

    def remote_shell_cmd(self, cwd: str | os.PathLike, *args: str | os.PathLike,
                         env: Mapping[str, str | None] | None = None) -> str:
        """The remote command that runs `python -m tui_trainer ARGS` in CWD with this test
        process's interpreter (its venv) and the repo on PYTHONPATH."""
        return self.remote_exec_cmd(cwd, sys.executable, "-m", "tui_trainer", *args, env=env)

    def session(self, remote_cmd: str, name: str | None = None, width: int = 120, height: int = 40) -> SshSession:
        """`ssh -tt ... REMOTE_CMD` in a detached tmux session; closed at the latest when the server
        stops. Use as a context manager, or call close()."""
        session = SshSession(self, remote_cmd, name=name, width=width, height=height)
        self._sessions.append(session)
        return session

    # ---- the remote processes ------------------------------------------------------------------
    def _remote(self, proc: psutil.Process) -> bool:
        """Started through this sshd: sshd puts SSH_CONNECTION (client ip/port, server ip/port) in
        the session's environment, and children (also a detached run) inherit it. This tells a
        remote process from a local one with the same command line (the ssh client, its tmux shell,
        a local `tui-trainer attach RUN_DIR`)."""
        try:
            conn = proc.environ().get("SSH_CONNECTION", "").split()
        except (psutil.Error, OSError):
            return False
        return len(conn) == 4 and conn[2] == self.host and conn[3] == str(self.port)

    def find_cli_processes(self, marker: str) -> list[psutil.Process]:
        """Live processes started through this sshd whose command line contains `marker` (the run
        dir is a good one), plus all their descendants, sorted by pid. Zombies do not count."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if marker in _cmdline(proc) and self._remote(proc) and _alive(proc):
                found[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    for child in proc.children(recursive=True):
                        if _alive(child):
                            found[child.pid] = child
        return [found[pid] for pid in sorted(found)]

    def assert_none_left(self, marker: str, timeout: float = 30) -> None:
        """Wait until find_cli_processes(marker) is empty; fail listing what is left."""
        deadline = time.monotonic() + timeout
        while (left := self.find_cli_processes(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            lines = []
            for p in left:
                with contextlib.suppress(psutil.Error):
                    lines.append(f"  {p.pid} ppid={p.ppid()} {p.status()}: {' '.join(p.cmdline())}")
            raise AssertionError(f"{len(left)} process(es) with {marker!r} still alive after {timeout}s:\n"
                                 + "\n".join(lines))


def _die_with_parent() -> None:
    """In the sshd child before exec: SIGTERM it if the test process dies without its teardown."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


try:  # resolved here, not in the forked child
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


class SshSession:
    """An ssh client with a tty (`ssh -tt`) running in a detached tmux session, as a person's
    terminal holds one. The pane runs `ssh ...; echo SSH_EXIT=$?; sleep 600` so the screen (and the
    client's exit status) stays readable after the client exits."""

    def __init__(self, server: SshServer, remote_cmd: str, name: str | None = None,
                 width: int = 120, height: int = 40):
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.server = server
        self.name = name or f"ssh-{os.getpid()}-{next(_names)}"
        self.argv = server.ssh_argv(remote_cmd, tty=True)
        self._rc_file = server.dir / f"{self.name}.rc"
        self._client: psutil.Process | None = None
        self._closed = False
        self._tmux("kill-session", "-t", self.name, check=False)
        # the status file comes last: once it is there, the screen is final
        wrapper = (f"unset COLUMNS LINES; {shlex.join(self.argv)}; rc=$?; echo SSH_EXIT=$rc;"
                   f" echo $rc > {shlex.quote(str(self._rc_file))}; sleep 600")
        self._tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), wrapper)

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", str(self.server.tmux_socket), *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def __enter__(self) -> SshSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def screen(self, history: bool = False) -> str:
        """The pane as text (capture-pane -p); history=True adds the scrollback."""
        return self._tmux("capture-pane", "-p", "-t", self.name, *(("-S", "-") if history else ()),
                          check=False).stdout

    def send_keys(self, *keys: str, literal: bool = False) -> None:
        """tmux send-keys: key names ("q", "Space", "Enter", "C-c"); literal=True types text as is."""
        self._tmux("send-keys", "-t", self.name, *(("-l",) if literal else ()), *keys)

    def wait_for_screen(self, text: str, timeout: float = 120) -> str:
        """Poll the screen until `text` is on it; return the screen. `timeout` is a hang guard."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.exit_code() is not None  # then the screen is final: fail at once
            screen = self.screen()
            if text in screen:
                return screen
            if exited or time.monotonic() > deadline:
                why = f"the ssh client exited {self.exit_code()}" if exited else f"not in {timeout}s"
                raise AssertionError(f"{text!r} never appeared on the ssh screen ({why}):\n"
                                     f"{self.screen(history=True)[-6000:]}\n"
                                     f"sshd log (tail):\n{self.server.log()[-2000:]}")
            time.sleep(0.1)

    def client_pid(self, timeout: float = 30) -> int:
        """The ssh client's pid (a child of the pane's shell), found once and remembered."""
        if self._client is None:
            deadline = time.monotonic() + timeout
            while self._client is None:
                self._client = self._find_client()
                if self._client is None:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no ssh client in tmux session {self.name}:\n{self.screen()}")
                    time.sleep(0.02)
        return self._client.pid

    def _find_client(self) -> psutil.Process | None:
        out = self._tmux("list-panes", "-t", self.name, "-F", "#{pane_pid}", check=False).stdout.split()
        if not out:
            return None
        try:
            pane = psutil.Process(int(out[0]))
            for proc in [pane, *pane.children(recursive=True)]:
                if proc.cmdline()[:1] == [self.argv[0]] or proc.name() == "ssh":
                    return proc
        except (psutil.Error, IndexError):
            pass
        return None

    def client_alive(self) -> bool:
        return self._client is not None and _alive(self._client)

    def kill_client(self, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        """The drop: send `sig` to the ssh client. SIGKILL: the client dies, the kernel closes its
        TCP connection, sshd closes the pty at once and the remote side gets SIGHUP.
        SIGSTOP: a silent client. sshd drops it by ClientAlive* (measured ~8 s) only while the
        remote side is quiet: OpenSSH 9.2 sends no keepalive while it has data to forward, so a
        remote that keeps writing (a TUI) stays connected, blocked on its full terminal, until the
        client goes on (SIGCONT) or is killed. close() kills a stopped client too."""
        pid = self.client_pid()
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + timeout
            while self.client_alive() and time.monotonic() < deadline:
                time.sleep(0.02)

    def exit_code(self) -> int | None:
        """The ssh client's exit status once it has exited (255: connection error; 128+N: signal)."""
        try:
            return int(self._rc_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def wait_exit(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.exit_code()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"ssh client still running after {timeout}s:\n{self.screen()}")
            time.sleep(0.05)
        return code

    def close(self) -> None:
        """Kill the tmux session (and with it the client, if still there). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._tmux("kill-session", "-t", self.name, check=False)
        if self._client is not None and _alive(self._client):
            with contextlib.suppress(psutil.Error):
                self._client.kill()


@contextlib.contextmanager
def serve() -> Iterator[SshServer]:
    """Start the test sshd (or skip, saying why), yield it, stop it."""
    if os.geteuid() != 0:
        pytest.skip("the SSH tests need root: sshd switches users, and logs in only root without a password")
    binaries = {
        "sshd": _binary("TUI_TRAINER_TEST_SSHD", "sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd"),
        "ssh": _binary("TUI_TRAINER_TEST_SSH", "ssh", "/usr/bin/ssh"),
        "ssh-keygen": _binary("TUI_TRAINER_TEST_SSH_KEYGEN", "ssh-keygen", "/usr/bin/ssh-keygen"),
    }
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        pinned = [f"{var}={os.environ[var]}" for var in _VARS if os.environ.get(var)]
        pytest.skip(f"{' and '.join(missing)} not found (install openssh-server and openssh-client)"
                    + (f"; set: {', '.join(pinned)}" if pinned else ""))
    if _root_locked():
        pytest.skip(f"the {LOGIN} account is locked: sshd without PAM refuses it even with a key")
    server = SshServer(binaries["sshd"], binaries["ssh"], binaries["ssh-keygen"])
    try:
        server.start()
        yield server
    finally:
        server.stop()
