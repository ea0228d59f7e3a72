"""The real CLI in a real terminal (tmux), driven as a person would: keys in, screen out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import cli_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, name: str, cmd: str, cwd, width: int = 120, height: int = 40):
        self.name = name
        # pytest pins COLUMNS/LINES in its environment; a real shell in tmux has the window's size
        env = " ".join(f"{k}={v}" for k, v in cli_env().items() if k in ("PYTHONPATH", "PYTHONUNBUFFERED"))
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                        f"unset COLUMNS LINES; cd {cwd} && env {env} {cmd}; echo EXIT=$?; sleep 60"], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, text: str, limit_s: float = 180) -> str:
        deadline = time.monotonic() + limit_s  # a hang guard, not a timing assertion
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared on screen:\n{self.screen()}")

    def leave(self) -> None:
        """Stop the run with q, leave its summary with q, and see the shell's exit status 0."""
        self.keys("q")
        self.wait_for("q or Enter to leave")
        self.keys("q")
        self.wait_for("EXIT=0")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_cli_in_tmux_keys_and_screen(tiny_preset, tmp_path):
    preset = tiny_preset()
    run_dir = tmp_path / "run"
    cmd = (f"{sys.executable} -m tui_trainer {preset} --paused --run-dir {run_dir}"
           " --set train.epochs=5000 --set train.log_every=1")
    tty = Tmux("tui-trainer-e2e", cmd, cwd=tmp_path)
    try:
        screen = tty.wait_for("PAUSED")
        for pane in ("Layers", "LR schedule", "Loss", "Memory", "Log"):
            assert pane in screen
        assert "● on" in screen and "trainable" in screen
        tty.keys("Space")  # freeze the first block before the first step
        tty.wait_for("○ off")
        tty.wait_for("froze 0")  # the log pane draws its lines in batches, twice a second
        tty.keys("p")
        tty.wait_for("RUNNING")
        tty.keys("l")
        screen = tty.wait_for("LR ×0.5 by hand")
        tty.keys("p")  # pause so the log stops scrolling; commands still apply while paused
        tty.wait_for("PAUSED")
        tty.keys("s")
        tty.wait_for("checkpoints/manual-step-")
        assert list((run_dir / "checkpoints").glob("manual-step-*.pt"))
        tty.keys("q")
        screen = tty.wait_for("q or Enter to leave")
        assert "STOPPED" in screen
        tty.keys("Enter")
        tty.wait_for("EXIT=0")
    finally:
        tty.close()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainable"]["0.0.weight"] is False
    assert state["schedule"]["manual_factor"] == 0.5
    assert list((run_dir / "checkpoints").glob("manual-step-*.pt"))


def test_narrow_terminal_is_usable(tiny_preset, tmp_path):
    preset = tiny_preset()
    cmd = f"{sys.executable} -m tui_trainer {preset} --paused --run-dir {tmp_path / 'run'}"
    tty = Tmux("tui-trainer-e2e-narrow", cmd, cwd=tmp_path, width=80, height=24)
    try:
        screen = tty.wait_for("PAUSED")
        assert "1 layers" in screen and "Layers" in screen
        tty.keys("2")
        tty.wait_for("LR schedule")
        tty.keys("5")
        tty.wait_for("Log")
        tty.leave()
    finally:
        tty.close()


def _held(tmp_path, wait_at: int = 2, epochs: int = 3, wait_again_at: int = 0):
    from tests.helpers.runs import write_preset

    return write_preset(tmp_path / "held.toml", train={"epochs": epochs, "log_every": 1},
                        callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": wait_at,
                                    "wait_again_at": wait_again_at}])


def _wait_file(path, limit_s: float = 180):
    deadline = time.monotonic() + limit_s  # a hang guard
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"


def test_detach_then_attach_in_tmux(tmp_path):
    from tui_trainer.run.catalog import list_runs

    preset = _held(tmp_path, wait_again_at=4)  # held again at step 4 so it cannot end before `d`
    run = tmp_path / "run"
    py = f"{sys.executable} -m tui_trainer"
    cmd = f"{py} {preset} --detach --run-dir {run} && {py} attach {run}"
    tty = Tmux("tui-trainer-e2e-detach", cmd, cwd=tmp_path)
    try:
        screen = tty.wait_for("step 2/")  # the background run, held at step 2, seen through the socket
        assert "tiny" in screen and "Layers" in screen
        tty.keys("l")
        (tmp_path / "go").write_text("")  # release it: the LR change is applied at the next step
        tty.wait_for("LR ×0.5 by hand")
        tty.keys("d")  # leave the viewer
        tty.wait_for("EXIT=0")
        (tmp_path / "go2").write_text("")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and [r.state for r in list_runs(tmp_path)] != ["completed"]:
            time.sleep(0.2)
        assert [r.state for r in list_runs(tmp_path)] == ["completed"]  # it went on without a viewer
    finally:
        tty.close()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["schedule"]["manual_factor"] == 0.5


def test_on_hangup_detach_keeps_training_for_attach(tmp_path):
    from tui_trainer.run.catalog import list_runs
    from tui_trainer.run.server import live_socket

    preset = _held(tmp_path)
    run = tmp_path / "run"
    cmd = f"{sys.executable} -m tui_trainer {preset} --run-dir {run} --on-hangup detach"
    tty = Tmux("tui-trainer-e2e-hangup", cmd, cwd=tmp_path)
    tty.wait_for("step 2/")
    tty.close()  # the terminal goes away: SIGHUP
    time.sleep(1.0)
    assert live_socket(run) is not None  # still training, still attachable
    [summary] = list_runs(tmp_path)
    assert summary.attachable and summary.state == "running"
    (tmp_path / "go").write_text("")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and [r.state for r in list_runs(tmp_path)] != ["completed"]:
        time.sleep(0.2)
    assert [r.state for r in list_runs(tmp_path)] == ["completed"]
    assert "completed" in (run / "output.log").read_text()


def _tui(tmp_path, name: str, *extra: str) -> tuple[Tmux, object]:
    preset = _held(tmp_path, wait_at=0, epochs=5000)  # long enough never to end by itself
    run = tmp_path / "run"
    cmd = f"{sys.executable} -m tui_trainer {preset} --run-dir {run} {' '.join(extra)}"
    return Tmux(name, cmd, cwd=tmp_path), run


def _tui_pid(run) -> int:
    import json

    return json.loads((run / "control.json").read_text())["pid"]


def _final(run) -> dict:
    import json

    return json.loads((run / "events.jsonl").read_text().splitlines()[-1])


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 0)])
def test_tui_signal_saves_and_restores_the_terminal(tmp_path, sig, code):
    import signal as signals

    tty, run = _tui(tmp_path, f"tui-trainer-sig-{sig}")
    try:
        tty.wait_for("RUNNING")
        tty.wait_for("step 3")
        os_kill(_tui_pid(run), getattr(signals, sig))
        screen = tty.wait_for(f"EXIT={code}") if sig == "SIGTERM" else tty.wait_for("q or Enter to leave")
        if sig == "SIGINT":  # like ctrl+c: a user stop with its summary; Enter leaves
            tty.keys("Enter")
            screen = tty.wait_for("EXIT=0")
        assert "Layers" not in screen  # the alternate screen is gone: the terminal is the shell's again
    finally:
        tty.close()
    final = _final(run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert final["kind"] == "Finished" and state["step"] == final["step"]
    assert final["exit_code"] == code


def test_tui_hangup_saves_and_exits_129(tmp_path):
    tty, run = _tui(tmp_path, "tui-trainer-sig-hup")
    tty.wait_for("step 3")
    pid = _tui_pid(run)
    tty.close()  # SSH drop: the pty hangs up
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)
    final = _final(run)
    assert final["status"] == "signal" and final["exit_code"] == 129
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == final["step"]


def test_tui_ctrl_c_twice_aborts_without_saving(tmp_path):
    """The engine is stuck inside step 3 (a callback that never returns here), so the first Ctrl+C's
    stop cannot complete; the second must leave at once anyway, without a save."""
    preset = _held(tmp_path, wait_at=3, epochs=5000)
    run = tmp_path / "run"
    cmd = f"{sys.executable} -m tui_trainer {preset} --run-dir {run} --set checkpoint.every_epochs=0"
    tty = Tmux("tui-trainer-ctrlc2", cmd, cwd=tmp_path)
    try:
        _wait_file(tmp_path / "ready")
        tty.wait_for("step 3")
        tty.keys("C-c")
        tty.wait_for("ctrl+c again aborts")
        tty.keys("C-c")
        screen = tty.wait_for("EXIT=130")
        assert "Layers" not in screen
    finally:
        tty.close()
    assert not (run / "checkpoints" / "last.pt").exists()  # abort means: no save
    assert _final(run)["kind"] != "Finished"


def test_tui_sigusr1_saves_and_goes_on(tmp_path):
    import signal as signals

    tty, run = _tui(tmp_path, "tui-trainer-usr1")
    try:
        tty.wait_for("step 3")
        os_kill(_tui_pid(run), signals.SIGUSR1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((run / "checkpoints").glob("manual-step-*.pt")):
            time.sleep(0.1)
        assert list((run / "checkpoints").glob("manual-step-*.pt"))
        tty.wait_for("RUNNING")
        tty.leave()
    finally:
        tty.close()


def os_kill(pid: int, sig) -> None:
    import os

    os.kill(pid, sig)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return "zombie" not in open(f"/proc/{pid}/status").read().lower()
    except OSError:
        return False
