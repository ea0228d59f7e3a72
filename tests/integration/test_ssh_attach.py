"""`tui-trainer attach ssh://host/run`: the monitor draws here, only events cross the link.

Every test goes through the real sshd on 127.0.0.1 (tests/helpers/sshd.py) with the system ssh
client, started by tui-trainer itself (TUI_TRAINER_SSH names a config for the test sshd). The run
is a real headless run in a subprocess; the viewer runs in a private tmux.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import cli_env
from tests.helpers.runs import of_kind, read_events, wait_until, write_preset
from tui_trainer import __version__
from tui_trainer.run.relay import PROTOCOL

pytestmark = [pytest.mark.usefixtures("sshd"), pytest.mark.slow]

FAKE_RELAY = Path(__file__).parents[1] / "helpers" / "fake_relay.py"


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A tiny run that goes on until it is stopped (19 steps an epoch, a report every 5)."""
    run = tmp_path / "runs" / "long"
    preset = write_preset(tmp_path / "long.toml", data={"limit": 400}, train={"epochs": 100000, "log_every": 5},
                          checkpoint={"every_epochs": 1000, "keep_last": 1})
    proc = subprocess.Popen([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir", str(run)],
                            cwd=tmp_path, env={**cli_env(), "OMP_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL,
                            stdout=open(tmp_path / "run.out", "w"), stderr=subprocess.STDOUT)
    wait_until(lambda: _step(run) >= 5 and (run / "control.json").exists(), "the run is training and serving", 180)
    return proc, run


def _step(run: Path) -> int:
    return max((e["step"] for e in of_kind(read_events(run), "StepReport")), default=0)


def _blocking_ssh(sshd, tmp_path: Path) -> tuple[Path, Path]:
    """An ssh that fails like an unreachable host (exit 255) while BLOCK exists."""
    block = tmp_path / "BLOCK"
    wrapper = tmp_path / "ssh"
    wrapper.write_text(f"#!/bin/sh\nif [ -e {shlex.quote(str(block))} ]; then\n"
                       "  echo 'ssh: connect to host 127.0.0.1: Network is unreachable (the test)' >&2; exit 255\nfi\n"
                       f"exec {shlex.quote(sshd.ssh_bin)} -F {shlex.quote(str(sshd.client_config()))} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, block


class Tmux:
    def __init__(self, tmp_path: Path, command: str):
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.socket, self.rc = tmp_path / "tmux.sock", tmp_path / "viewer.rc"
        self._tmux("new-session", "-d", "-s", "v", "-x", "120", "-y", "40",
                   f"unset COLUMNS LINES; {command}; echo $? > {shlex.quote(str(self.rc))}; sleep 600")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                              timeout=60).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "v")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "v", *keys)

    def wait(self, pattern: str, what: str, limit_s: float = 120) -> re.Match:
        try:
            return wait_until(lambda: re.search(pattern, self.screen()), what, limit_s)
        except AssertionError:
            raise AssertionError(f"never happened: {what}\n{self.screen()}") from None

    def exit_code(self) -> int:
        return int(wait_until(lambda: self.rc.exists() and self.rc.read_text().strip(), "the viewer exited", 60))

    def close(self) -> None:
        self._tmux("kill-server")


def _ssh_clients(run: Path) -> list[psutil.Process]:
    """The local ssh clients of the viewer (not the remote relay, not sshd)."""
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "ssh" and "attach --stdio" in cmd and str(run) in cmd:
            out.append(proc)
    return out


def test_attach_over_ssh_steers_survives_a_dropped_link_and_stops_the_run(sshd, tmp_path):
    proc, run = _start_run(tmp_path)
    wrapper, block = _blocking_ssh(sshd, tmp_path)
    env = {**cli_env(), **sshd.client_env(), "TUI_TRAINER_SSH": str(wrapper), "LANG": "C.UTF-8"}
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                       if k in ("PYTHONPATH", "TUI_TRAINER_SSH", "TUI_TRAINER_REMOTE", "LANG"))
    viewer = Tmux(tmp_path, f"cd {shlex.quote(str(tmp_path))} && env {assigns} {shlex.quote(sys.executable)} -m"
                            f" tui_trainer attach ssh://127.0.0.1{run}")
    try:
        viewer.wait(r"RUNNING", "the monitor opens over ssh")
        viewer.wait(r"step \d+/", "the run's progress is drawn here")
        viewer.keys("l")
        wait_until(lambda: [e for e in of_kind(read_events(run), "LrChanged") if e["reason"] == "manual"], "l: LR ×0.5")
        viewer.keys("s")
        wait_until(lambda: [e for e in of_kind(read_events(run), "CheckpointSaved") if "manual" in e["tags"]], "s: a save")
        viewer.keys("Space")
        wait_until(lambda: of_kind(read_events(run), "TrainableChanged"), "space: a freeze")

        # the link drops, and stays down while the run trains on
        [client] = _ssh_clients(run)
        block.touch()
        client.kill()
        viewer.wait(r"reconnecting… \(2\)", "the header says it is reconnecting")
        assert re.search(r"step \d+/", viewer.screen()), "the last picture stays"
        viewer.wait(r"dropped at step", "the Log pane says the link dropped")
        viewer.keys("l")  # refused while the link is down: never queued, never applied
        viewer.wait(r"not sent", "the refusal is shown")
        down_at = _step(run)
        wait_until(lambda: _step(run) >= down_at + 20, "the run trains on while the viewer is cut off", 120)
        missed_to = _step(run)
        block.unlink()
        viewer.wait(r"RUNNING", "the viewer reconnected by itself", 120)
        wait_until(lambda: int(re.search(r"step (\d+)/", viewer.screen())[1]) >= missed_to, "the missed steps shown")
        assert len(_ssh_clients(run)) == 1

        viewer.keys("q")  # stops the run (after a save)
        wait_until(lambda: of_kind(read_events(run), "Finished"), "q stops the run", 120)
        viewer.wait(r"STOPPED", "the summary")
        viewer.keys("q")
        assert viewer.exit_code() == 0
        assert proc.wait(timeout=120) == 0
    finally:
        viewer.close()
        proc.kill()
    events = read_events(run)
    assert [e["manual_factor"] for e in of_kind(events, "LrChanged") if e["reason"] == "manual"] == [0.5]
    assert of_kind(events, "Finished")[0]["status"] == "stopped"
    sshd.assert_none_left(str(run), timeout=30)  # the relays went with their links

    # `ls ssh://host/folder`: the remote runs
    out = subprocess.run([sys.executable, "-m", "tui_trainer", "ls", f"ssh://127.0.0.1{run.parent}"],
                         env={**env, "TUI_TRAINER_SSH": str(wrapper)}, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert str(run) in out.stdout and "stopped" in out.stdout


def test_version_mismatch_and_missing_remote_program_exit_2(sshd, tmp_path):
    env = {**cli_env(), **sshd.client_env()}

    def attach(remote_cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tui_trainer", "attach", f"ssh://127.0.0.1{tmp_path}",
                               "--remote-cmd", remote_cmd], env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    old = attach(f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_RELAY))} 0 0.0.9")
    assert old.returncode == 2, old.stderr
    [line] = old.stderr.strip().splitlines()
    assert "version mismatch" in line and "0.0.9" in line and __version__ in line and f"protocol {PROTOCOL}" in line

    missing = attach("/nonexistent/bin/tui-trainer")
    assert missing.returncode == 2, missing.stderr
    [line] = missing.stderr.strip().splitlines()
    assert "/nonexistent/bin/tui-trainer" in line and "--remote-cmd" in line


def test_the_relay_speaks_hello_then_json_lines(sshd, tmp_path):
    """`ssh host tui-trainer attach --stdio RUN`, as a script would use it: hello, replay, commands."""
    proc, run = _start_run(tmp_path)
    try:
        relay = subprocess.Popen(sshd.ssh_argv(f"{sshd.remote_program()} attach --stdio {shlex.quote(str(run))}",
                                               tty=False), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = json.loads(relay.stdout.readline())
        assert hello["kind"] == "Hello" and hello["protocol"] == PROTOCOL and hello["live"] is True
        assert hello["run"] == str(run) and hello["version"] == __version__
        relay.stdin.write(json.dumps({"kind": "Hello", "protocol": PROTOCOL, "version": __version__}).encode() + b"\n")
        relay.stdin.write(b'{"kind": "SaveCheckpoint", "tag": "manual"}\n')
        relay.stdin.flush()
        for line in relay.stdout:
            event = json.loads(line)
            if event["kind"] == "CheckpointSaved" and "manual" in event["tags"]:
                break
        relay.stdin.close()  # the viewer leaves: the relay ends, the run goes on
        assert relay.wait(timeout=60) == 0
        assert proc.poll() is None
    finally:
        proc.kill()
    sshd.assert_none_left("--stdio", timeout=30)
