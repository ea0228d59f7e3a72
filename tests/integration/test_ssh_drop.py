"""A dropped SSH session never fails the run. Every test drives the real CLI through a
real sshd on 127.0.0.1 (tests/helpers/sshd.py), with the ssh client held in tmux as a person's
terminal holds it, and drops the connection the hard way: `kill -9` of the ssh client.

The remote command is `cd DIR && env ... python tests/helpers/exit_code.py FILE python -m
tui_trainer ...; true`: the login shell stays the session leader (as in an interactive login),
and the wrapper, which outlives the hang-up, records the CLI's real exit status. (Before the fix
that status was 120, Python's code for a failed flush of stdout at exit, while events.jsonl said
129; only the process's own status shows it.)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers.runs import load_checkpoint, of_kind, read_events, wait_until, write_preset

pytestmark = [pytest.mark.usefixtures("sshd"), pytest.mark.slow]

SHIPPED = ROOT / "presets" / "resnet18_finetune.toml"
WRAPPER = ROOT / "tests" / "helpers" / "exit_code.py"


def _remote(sshd, cwd: Path, exit_file: Path, *args) -> str:
    """The CLI under the exit-status wrapper, the login shell kept as the session leader."""
    inner = sshd.remote_exec_cmd(cwd, sys.executable, str(WRAPPER), str(exit_file), sys.executable, "-m",
                                 "tui_trainer", *map(str, args))
    return inner.replace(" && exec env ", " && env ", 1) + "; true"



def _exit_code(path: Path, timeout: float = 120) -> int:
    wait_until(path.exists, f"an exit status in {path}", timeout)
    return int(path.read_text())


def _steps(run: Path) -> int:
    return max((e["step"] for e in of_kind(read_events(run), "StepReport")), default=0)


def _long_tiny(tmp_path: Path) -> Path:
    """The tiny preset with DataLoader workers (what dies on a hang-up) and no end in sight."""
    return write_preset(tmp_path / "long.toml", data={"num_workers": 2, "limit": 400},
                        train={"epochs": 1000, "log_every": 5})


def _pid(run: Path) -> int:
    return json.loads((run / "control.json").read_text())["pid"]


def _dropped_with_detach(sshd, tmp_path: Path) -> tuple[Path, Path]:
    """A long TUI run with --on-hangup detach whose SSH client was killed after step 10."""
    run, exit_file = tmp_path / "run", tmp_path / "exit"
    preset = _long_tiny(tmp_path)
    with sshd.session(_remote(sshd, tmp_path, exit_file, preset, "--run-dir", run, "--on-hangup", "detach")) as ssh:
        wait_until(lambda: _steps(run) >= 10, "training")
        ssh.kill_client()
    wait_until(lambda: "terminal went away" in _read(run / "output.log"), "the run going on headless", 60)
    return run, exit_file


def _ended(run: Path) -> dict:
    events = read_events(run)
    assert not of_kind(events, "Failed"), of_kind(events, "Failed")
    finished = of_kind(events, "Finished")
    assert len(finished) == 1, [e["kind"] for e in events[-10:]]
    return finished[0]


def test_tui_over_ssh_drop_saves_and_exits_129(sshd, tmp_path):
    """The shipped preset (2 DataLoader workers) in the TUI; the client is killed mid-training."""
    run, exit_file = tmp_path / "r18", tmp_path / "exit"
    with sshd.session(_remote(sshd, tmp_path, exit_file, SHIPPED, "--run-dir", run)) as ssh:
        wait_until(lambda: _steps(run) >= 5, "the shipped preset reports step 5", 240)
        assert sshd.find_cli_processes(str(run))
        ssh.kill_client()
        code = _exit_code(exit_file, timeout=180)
    assert code == 128 + signal.SIGHUP, (run / "events.jsonl").read_text()[-3000:]
    finished = _ended(run)
    assert (finished["status"], finished["exit_code"]) == ("signal", 129)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == finished["step"] >= 5  # saved at the step it stopped at
    assert not list((run / "checkpoints").glob(".*.tmp"))
    sshd.assert_none_left(str(run), timeout=30)  # workers too
    assert not (run / "control.sock").exists() and not (run / "control.json").exists()


def test_on_hangup_detach_goes_on_then_obeys_signals_and_attach(sshd, tmp_path):
    """--on-hangup detach: training goes on after the drop; SIGUSR1 saves; a new SSH session's
    `attach` steers it (a save by key), and `q` there ends it with exit 0."""
    run, exit_file = _dropped_with_detach(sshd, tmp_path)
    dropped_at = _steps(run)
    wait_until(lambda: _steps(run) > dropped_at + 20, "training after the drop", 60)
    assert not exit_file.exists()

    os.kill(_pid(run), signal.SIGUSR1)
    wait_until(lambda: _saved(run, "manual"), "a save on SIGUSR1", 60)
    assert not exit_file.exists()  # and it goes on

    viewer = sshd.remote_exec_cmd(tmp_path, sys.executable, "-m", "tui_trainer", "attach", str(run))
    with sshd.session(viewer) as ssh:
        ssh.wait_for_screen("RUNNING", timeout=120)
        saves = len(_saved(run, "manual"))
        ssh.send_keys("s")
        wait_until(lambda: len(_saved(run, "manual")) > saves, "a save by `s` in the viewer", 60)
        ssh.send_keys("q")
        code = _exit_code(exit_file, timeout=120)
        ssh.wait_for_screen("STOPPED", timeout=60)  # the viewer shows the run's summary
    assert code == 0
    finished = _ended(run)
    assert (finished["status"], finished["exit_code"]) == ("stopped", 0)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == finished["step"]
    sshd.assert_none_left(str(run), timeout=30)


def test_on_hangup_detach_then_sigterm_saves_and_exits_143(sshd, tmp_path):
    run, exit_file = _dropped_with_detach(sshd, tmp_path)
    os.kill(_pid(run), signal.SIGTERM)
    assert _exit_code(exit_file, timeout=60) == 128 + signal.SIGTERM
    finished = _ended(run)
    assert (finished["status"], finished["exit_code"]) == ("signal", 143)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == finished["step"]
    assert not (run / "control.sock").exists() and not (run / "control.json").exists()
    sshd.assert_none_left(str(run), timeout=30)


def test_detach_over_ssh_survives_the_session(sshd, tmp_path):
    """`--detach` returns, the SSH session ends, and the run goes on to its end."""
    run = tmp_path / "run"
    preset = write_preset(tmp_path / "held.toml", data={"num_workers": 2},
                          train={"epochs": 2, "log_every": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": 3,
                                      "ready_file": str(tmp_path / "ready"), "go_file": str(tmp_path / "go")}])
    out = sshd.run(sshd.remote_shell_cmd(tmp_path, preset, "--detach", "--run-dir", run), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training in the background" in out.stdout
    wait_until((tmp_path / "ready").exists, "the detached run at step 3", 120)
    time.sleep(1)  # the session is over: sshd has closed it and the run is still held at step 3
    assert sshd.find_cli_processes(str(run)), "the detached run died with its SSH session"
    (tmp_path / "go").touch()
    wait_until(lambda: of_kind(read_events(run), "Finished"), "the detached run finished", 120)
    finished = _ended(run)
    assert (finished["status"], finished["exit_code"]) == ("completed", 0)
    sshd.assert_none_left(str(run), timeout=30)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _saved(run: Path, tag: str) -> list[dict]:
    return [e for e in of_kind(read_events(run), "CheckpointSaved") if tag in e["tags"]]

