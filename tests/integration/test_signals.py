"""Signals for `--no-ui`, on a terminal (a pty that is the run's controlling terminal,
as over SSH) and without one. Each run blocks at step K (a scripted callback waits for a "go"
file), the test delivers the signal, then lets it go on: the run must end at step K exactly (the
stop is applied before the next step), with the documented exit code and a checkpoint of step K.

Documented (cli.py EXIT_CODES, run/headless.py): SIGINT once -> stop after this step, save, exit 0;
SIGINT twice -> abort, 130; SIGTERM -> save, 143; SIGHUP -> save, 129; SIGUSR1 -> save, go on;
SIGHUP ignored at start (nohup) stays ignored.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.helpers.proc import Cli
from tests.helpers.runs import load_checkpoint, of_kind, read_events, write_preset

K = 9  # mid-epoch 2 (7 steps per epoch)
TOTAL = 14


def _preset(tmp_path, workers: int):
    return write_preset(tmp_path / "sig.toml", data={"num_workers": workers},
                        train={"epochs": 2, "log_every": 1},
                        callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": K}])


def _deliver(run, how: str) -> None:
    if how == "ctrl-c":
        run.type(b"\x03")
        # the pty turns ^C into SIGINT on its own time: the handler has run once it says so (else the
        # "go" below may come first, and the stop lands a step later, as a late Ctrl+C should)
        _await_text(run, "stopping after this step")
    elif how == "ctrl-c twice":
        run.type(b"\x03")
        _await_text(run, "Ctrl+C again aborts")  # two signals sent at once arrive as one
        run.type(b"\x03")
    elif how == "hangup":
        run.hangup()
    else:  # "SIGTERM", "SIGINT x2", "SIGHUP to group", ...
        name, _, rest = how.partition(" ")
        run.signal(getattr(signal, name), group=rest == "to group")
        if rest == "x2":
            _await_text(run, "Ctrl+C again aborts")
            run.signal(getattr(signal, name))


def _await_text(run, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.text:
        assert time.monotonic() < deadline, run.text[-3000:]
        time.sleep(0.02)


# (how, on a tty, num_workers, expected exit, expected ending)
CASES = [
    ("ctrl-c", True, 2, 0, "stopped"),
    ("ctrl-c twice", True, 2, 130, "aborted"),
    ("hangup", True, 2, 129, "signal"),
    ("SIGTERM to group", True, 2, 143, "signal"),
    ("SIGUSR1", True, 2, 0, "completed"),
    ("SIGINT", False, 0, 0, "stopped"),
    ("SIGINT x2", False, 0, 130, "aborted"),
    ("SIGTERM", False, 0, 143, "signal"),
    ("SIGHUP", False, 0, 129, "signal"),
    ("SIGHUP to group", False, 2, 129, "signal"),  # a shell passing on an SSH drop to the job
    ("SIGINT to group", False, 2, 0, "stopped"),
    ("SIGUSR1", False, 0, 0, "completed"),
]


@pytest.mark.parametrize("how,tty,workers,code,ending", CASES,
                         ids=[f"{c[0]}-{'tty' if c[1] else 'notty'}-w{c[2]}" for c in CASES])
def test_signal_ends_as_documented(fork_server, tmp_path, how, tty, workers, code, ending):
    preset = _preset(tmp_path, workers)
    run = fork_server.start([preset, "--no-ui", "--run-dir", "run"], tmp_path, tty=tty)
    try:
        step, _ = run.wait_for_file(tmp_path / "ready").split()
        assert int(step) == K
        kids = psutil.Process(run.pid).children(recursive=True)  # the DataLoader workers
        assert len(kids) >= workers
        _deliver(run, how)
        (tmp_path / "go").touch()
        assert run.wait() == code, run.text[-3000:]
    finally:
        run.close()
    _check_ending(tmp_path / "run", ending, run.text)
    _, alive = psutil.wait_procs(kids, timeout=2)  # ended with the run, not left to notice it later
    assert not alive, f"{len(alive)} DataLoader workers outlived the run ({how})"
    if tty and how != "hangup":  # after a hang-up there is no terminal left to restore
        assert _cursor_restored(run.text), "the terminal is left with a hidden cursor"


def _check_ending(run_dir, ending: str, output: str) -> None:
    events = read_events(run_dir)
    ck = run_dir / "checkpoints"
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")], "temp files left behind"
    assert "Traceback" not in output, output[-3000:]
    # DataLoader workers share the terminal's process group: they must not act on the signal
    assert output.count("stopping after this step") <= 1, output[-3000:]
    if ending == "aborted":  # no clean save promised; nothing half-written either, no stale socket
        assert not of_kind(events, "Finished")
        assert not (run_dir / "control.sock").exists() and not (run_dir / "control.json").exists()
        for path in ck.glob("*.pt"):
            load_checkpoint(path)
        return
    finished = of_kind(events, "Finished")[-1]
    assert finished["status"] == ending, finished
    if ending == "completed":  # SIGUSR1: a checkpoint at step K, then on to the end
        assert finished["step"] == TOTAL
        manual = [e for e in of_kind(events, "CheckpointSaved") if "manual" in e["tags"]]
        assert [e["step"] for e in manual] == [K]
        assert load_checkpoint(ck / f"manual-step-{K:08d}.pt")["step"] == K
        return
    assert finished["step"] == K, "the stop must land before the next step"
    assert load_checkpoint(ck / "last.pt")["step"] == K
    assert max(e["step"] for e in of_kind(events, "StepReport")) == K


@pytest.mark.parametrize("group", [False, True], ids=["pid", "group"])
def test_sighup_stays_ignored_under_nohup(fork_server, tmp_path, group):
    preset = _preset(tmp_path, 2 if group else 0)
    run = fork_server.start([preset, "--no-ui", "--run-dir", "run"], tmp_path, ignore_sighup=True)
    try:
        run.wait_for_file(tmp_path / "ready")
        run.signal(signal.SIGHUP, group=group)
        (tmp_path / "go").touch()
        assert run.wait() == 0, run.text[-3000:]
    finally:
        run.close()
    finished = of_kind(read_events(tmp_path / "run"), "Finished")[-1]
    assert finished["status"] == "completed" and finished["step"] == TOTAL


def test_real_interpreter_ctrl_c_on_a_terminal(tmp_path):
    """The same as the first case, through a fresh `python -m tui_trainer` (no fork server)."""
    preset = _preset(tmp_path, 2)
    run = Cli([str(preset), "--no-ui", "--run-dir", "run"], tmp_path, tty=True)
    try:
        run.wait_for_file(tmp_path / "ready")
        run.type(b"\x03")
        (tmp_path / "go").touch()
        assert run.wait() == 0, run.text[-3000:]
    finally:
        run.close()
    _check_ending(tmp_path / "run", "stopped", run.text)
    assert _cursor_restored(run.text)


def _cursor_restored(text: str) -> bool:
    """rich hides the cursor while its progress bar runs; it must be shown again at the end."""
    hide, show = text.rfind("\x1b[?25l"), text.rfind("\x1b[?25h")
    return hide == -1 or show > hide


def test_tui_ctrl_c_twice_leaves_no_socket_and_no_workers(tmp_path):
    """In the TUI, Ctrl+C twice aborts at once without a save (130), but still removes
    its control socket and ends its DataLoader workers (they used to linger ~5-10 s, orphaned)."""
    preset = _preset(tmp_path, 2)
    run = Cli([str(preset), "--run-dir", "run"], tmp_path, tty=True, env={"TERM": "xterm-256color"})
    try:
        run.wait_for_file(tmp_path / "ready")  # held at step K inside the engine: the stop cannot land
        kids = psutil.Process(run.pid).children(recursive=True)
        assert len(kids) >= 2
        assert (tmp_path / "run" / "control.sock").exists()
        run.type(b"\x03")
        time.sleep(0.5)  # two keys typed at once are one read; the app must see the first alone
        run.type(b"\x03")
        assert run.wait(timeout=60) == 130, run.text[-3000:]
    finally:
        (tmp_path / "go").touch()
        run.close()
    _, alive = psutil.wait_procs(kids, timeout=2)
    assert not alive, f"{len(alive)} DataLoader workers outlived the abort"
    run_dir = tmp_path / "run"
    assert not (run_dir / "control.sock").exists() and not (run_dir / "control.json").exists()
    assert not of_kind(read_events(run_dir), "Finished")
