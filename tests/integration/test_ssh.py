"""Smoke tests of the SSH test rig (tests/helpers/sshd.py): a real sshd on 127.0.0.1, the real CLI
run through it, and a dropped client whose remote processes go away. Skipped, with the reason,
where sshd cannot run (no openssh-server, not root)."""

from __future__ import annotations

import signal
import time

import pytest

from tui_trainer import __version__

pytestmark = pytest.mark.usefixtures("sshd")  # every test here skips when the fixture does


def test_cli_runs_through_ssh(sshd, tmp_path):
    out = sshd.run(sshd.remote_shell_cmd(tmp_path, "--version"), timeout=120)
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\n{sshd.log()[-2000:]}"
    assert out.stdout.strip() == f"tui-trainer {__version__}"
    # it ran in tmp_path, and SSH_CONNECTION names this sshd (find_cli_processes tells remote from local by it)
    env = sshd.run(sshd.remote_exec_cmd(tmp_path, "sh", "-c", 'echo "$PWD $SSH_CONNECTION"'))
    words = env.stdout.split()
    assert words[:2] == [str(tmp_path), "127.0.0.1"] and words[3:] == ["127.0.0.1", str(sshd.port)], env


def test_killed_client_hangs_up_the_remote_side(sshd):
    marker = "sleep 30.123"  # a command line no other process has
    with sshd.session(f"echo ready; {marker}") as ssh:
        ssh.wait_for_screen("ready", timeout=60)
        deadline = time.monotonic() + 60  # "ready" comes before the remote shell starts sleep
        while not _named("sleep", found := sshd.find_cli_processes(marker)):
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert ssh.client_pid() not in {p.pid for p in found}  # the local client is not a remote process
        ssh.kill_client(signal.SIGKILL)
        assert ssh.wait_exit(timeout=30) == 128 + signal.SIGKILL
        sshd.assert_none_left(marker, timeout=20)  # sshd closed the pty: the kernel hung it up


def _named(name, procs):
    return [p for p in procs if p.name() == name]
