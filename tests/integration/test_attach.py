"""Detach and re-attach: a real headless run in a subprocess, steered by viewers that come and go.

Runs are held at a known step by a scripted callback (tests.helpers.callbacks:Script, wait_at),
so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env
from tests.helpers.pilot import until
from tests.helpers.runs import read_events, wait_until, write_preset
from tui_trainer.engine.commands import ScaleLr
from tui_trainer.engine.events import (EpochEnd, Finished, LayerStats, LrChanged, RunStarted, RunWarning,
                                       StepReport)
from tui_trainer.run.catalog import list_runs
from tui_trainer.run.server import MAX_OLD_REPORTS, RECENT_REPORTS, Replay, live_socket
from tui_trainer.ui.launch import make_attach_app
from tui_trainer.ui.remote import SocketLink


def held_preset(tmp_path: Path, wait_at: int = 2, epochs: int = 3) -> Path:
    return write_preset(tmp_path / "held.toml", train={"epochs": epochs, "log_every": 1},
                        callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": wait_at}])


def start_run(tmp_path: Path, preset: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir", str(run),
                             *extra], cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=open(tmp_path / "run.out", "w"), stderr=subprocess.STDOUT)



def events_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def test_attach_steer_detach_and_the_run_finishes(tmp_path):
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "the run reached step 2")
        sock = live_socket(run)
        assert sock is not None
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        app = make_attach_app(run, handle_signals=False)
        assert app.remote and isinstance(app.link, SocketLink)

        async def scenario():
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.view.started is not None and app.view.step == 2, "replay arrived")
                assert app.view.started.run_name == "tiny"
                await pilot.press("space")  # freeze block "0"
                await pilot.press("l")  # and lower the LR
                (tmp_path / "go").write_text("")  # let the engine go on: it applies both at the next step
                await until(pilot, lambda: app.view.trainable and app.view.trainable[0] is False, "freeze confirmed")
                await until(pilot, lambda: app.view.manual_factor == 0.5, "LR change confirmed")
                await pilot.press("d")  # leave the viewer; the run goes on
            assert app.return_code == 0

        asyncio.run(scenario())
        app.link.close()
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.out").read_text()[-2000:]
    finally:
        proc.kill()
    events = events_of(run)
    kinds = [e["kind"] for e in events]
    freeze = next(e for e in events if e["kind"] == "TrainableChanged")
    assert freeze["prefixes"] == ["0"] and freeze["trainable"] is False and freeze["step"] == 2
    lr = next(e for e in events if e["kind"] == "LrChanged")
    assert lr["reason"] == "manual" and lr["manual_factor"] == 0.5 and lr["step"] == 2
    assert kinds[-1] == "Finished" and events[-1]["status"] == "completed"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainable"]["0.0.weight"] is False and state["schedule"]["manual_factor"] == 0.5
    assert not (run / "control.json").exists() and live_socket(run) is None  # cleaned up at the end


def test_an_attached_viewer_gets_the_layer_statistics_that_nobody_takes_unwatched(tmp_path):
    # a headless run takes the Layers pane's gradient norms and update ratios only while a viewer
    # is attached (a detached run, every run of many ranks): what the monitor shows in-process
    run = tmp_path / "run"
    proc = start_run(tmp_path, write_preset(tmp_path / "long.toml", train={"epochs": 100000, "log_every": 1}), run)
    try:
        wait_until(lambda: live_socket(run) is not None
                   and any(e["kind"] == "StepReport" and e["step"] >= 30 for e in read_events(run)), "step 30")
        assert not any(e["kind"] == "LayerStats" for e in read_events(run))  # nobody watched: none taken
        viewer = SocketLink(live_socket(run))
        viewer.start()
        seen: list = []
        wait_until(lambda: seen.extend(viewer.drain()) or any(isinstance(e, LayerStats) for e in seen),
                   "layer statistics for the viewer")
        layers = next(e for e in seen if isinstance(e, RunStarted)).layers
        stats = next(e for e in seen if isinstance(e, LayerStats))
        assert len(stats.grad_norm) == len(stats.update_ratio) == len(layers) >= 2
        for g, r in zip(stats.grad_norm, stats.update_ratio):
            assert g is not None and r is not None and math.isfinite(g) and math.isfinite(r) and g > 0 and r > 0
        viewer.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "run.out").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_two_viewers_and_commands_in_order(tmp_path):
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "held at step 2")
        a, b = SocketLink(live_socket(run)), SocketLink(live_socket(run))
        a.start()
        b.start()
        seen_a, seen_b = [], []
        wait_until(lambda: seen_a.extend(a.drain()) or any(isinstance(e, StepReport) for e in seen_a), "replay to a")
        a.send(ScaleLr(0.5))
        b.send(ScaleLr(0.5))
        (tmp_path / "go").write_text("")
        for link, seen in ((a, seen_a), (b, seen_b)):
            wait_until(lambda: seen.extend(link.drain()) or sum(isinstance(e, LrChanged) for e in seen) == 2,
                       "both LR changes reach every viewer")
            factors = [e.manual_factor for e in seen if isinstance(e, LrChanged)]
            assert factors == [0.5, 0.25]
        a.close()
        b.close()
        assert proc.wait(timeout=240) == 0
    finally:
        proc.kill()


def test_a_viewer_killed_with_sigkill_does_not_hurt_the_run(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    session = "tui-trainer-viewer-kill"
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "held at step 2")
        env = " ".join(f"{k}={v}" for k, v in cli_env().items() if k in ("PYTHONPATH",))
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                        f"unset COLUMNS LINES; cd {tmp_path} && env {env} {sys.executable} -m tui_trainer attach"
                        f" {run}; sleep 60"], check=True)

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        wait_until(lambda: "step 2/" in screen(), "the viewer shows the held run")
        viewer = subprocess.run(["pgrep", "-f", f"tui_trainer attach {run}"], capture_output=True, text=True)
        pids = [int(p) for p in viewer.stdout.split()]
        python = [p for p in pids if "python" in Path(f"/proc/{p}/cmdline").read_text()]
        for pid in python:
            os.kill(pid, signal.SIGKILL)
        # the run still serves: a new viewer gets the replay
        again = SocketLink(live_socket(run))
        again.start()
        got: list = []
        wait_until(lambda: got.extend(again.drain()) or any(isinstance(e, StepReport) for e in got), "replay")
        again.close()
        (tmp_path / "go").write_text("")
        assert proc.wait(timeout=240) == 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        proc.kill()
    assert events_of(run)[-1]["status"] == "completed"


def test_stale_socket_of_a_killed_run_is_cleaned_and_shown_read_only(tmp_path):
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    wait_until(lambda: (tmp_path / "ready").exists(), "held at step 2")
    # the recorder writes reports within WRITE_WITHIN_S (its own thread): the history to show is on disk
    wait_until(lambda: any(e.get("step") == 2 and e["kind"] == "StepReport" for e in events_of(run)), "recorded")
    sock = Path(json.loads((run / "control.json").read_text())["socket"])
    proc.kill()  # SIGKILL: no chance to remove its socket
    proc.wait(timeout=60)
    assert sock.exists() and (run / "control.json").exists()
    [summary] = list_runs(tmp_path)
    assert summary.state == "dead" and not summary.attachable
    assert not sock.exists() and not (run / "control.json").exists()  # the stale socket was cleaned
    app = make_attach_app(run, handle_signals=False)
    assert app.link.read_only

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.state == "dead", "shown as dead")
            assert app.view.step == 2
            await pilot.press("l")  # refused: nothing is listening
            await pilot.pause(0.2)
            assert app.view.manual_factor == 1.0
            await pilot.press("q")

    asyncio.run(scenario())


def test_attach_to_a_finished_run_shows_its_final_state(tmp_path):
    run = tmp_path / "run"
    preset = write_preset(tmp_path / "short.toml", train={"epochs": 2, "log_every": 1})
    proc = start_run(tmp_path, preset, run)
    assert proc.wait(timeout=240) == 0
    app = make_attach_app(run, handle_signals=False)
    assert app.link.read_only

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.view.final, Finished), "final state")
            assert app.view.final.status == "completed"
            assert len(app.view.epochs) == 2 and isinstance(app.view.epochs[-1], EpochEnd)
            await until(pilot, lambda: type(app.screen).__name__ == "SummaryScreen", "summary")
            await pilot.press("q")

    asyncio.run(scenario())
    assert [r.state for r in list_runs(tmp_path)] == ["completed"]


def test_replay_is_bounded_and_ordered():
    """A million-step run with an epoch every 5 steps: what a new viewer gets stays small."""
    from tui_trainer.engine.events import StateChanged
    from tui_trainer.run.server import MAX_OLD_EPOCHS, MAX_OTHER, RECENT_EPOCHS

    replay = Replay()
    replay.add(StateChanged("starting", 0), b"s0\n")
    replay.add(RunStartedStub(), b"h0\n")
    for step in range(1, 1_000_001):
        if step % 10 == 0:
            replay.add(StepReport(step, 1, step, (1.0,), (0.1,), 100.0, None), f"r{step}\n".encode())
        if step % 5 == 0:
            replay.add(EpochEnd(step // 5, step, 1.0, 1.0, 0.5, 0.1, "val_loss", 1.0, 1.0, 1, True, 0, None),
                       f"e{step}\n".encode())
            replay.add(RunWarning(step, "w"), f"w{step}\n".encode())
    lines = replay.lines().decode().split()
    reports = [int(x[1:]) for x in lines if x.startswith("r")]
    epochs = [int(x[1:]) for x in lines if x.startswith("e")]
    others = [int(x[1:]) for x in lines if x.startswith("w")]
    assert lines[:2] == ["s0", "h0"]  # the run's start is always there
    assert len(reports) <= RECENT_REPORTS + MAX_OLD_REPORTS
    assert reports[-RECENT_REPORTS:] == list(range(1_000_000 - 10 * (RECENT_REPORTS - 1), 1_000_001, 10))
    assert len(epochs) <= RECENT_EPOCHS + MAX_OLD_EPOCHS and epochs[-1] == 1_000_000
    assert len(others) == MAX_OTHER and others[-1] == 1_000_000
    order = [int(x[1:]) for x in lines[2:]]
    assert order == sorted(order)
    assert len(replay.lines()) < 100_000


def test_a_stranger_cannot_use_a_live_socket_path_as_a_new_run(tmp_path):
    """Two runs cannot share a run directory: the second one is refused with exit 2."""
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "held")
        second = subprocess.run([sys.executable, "-m", "tui_trainer", str(tmp_path / "held.toml"), "--no-ui",
                                 "--run-dir", str(run)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                                timeout=240, stdin=subprocess.DEVNULL)
        assert second.returncode == 2
        assert "in use by a running tui-trainer" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        (tmp_path / "go").write_text("")
        proc.wait(timeout=240)


def test_the_socket_speaks_json_lines(tmp_path):
    """The protocol a user could script: connect, read the replay, send a command line."""
    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "held")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(live_socket(run)))
            stream = s.makefile("rb")
            first = json.loads(stream.readline())
            assert first["kind"] in ("StateChanged", "RunStarted")
            s.sendall(b'{"kind": "SaveCheckpoint", "tag": "manual"}\n')
            (tmp_path / "go").write_text("")
            for line in stream:
                event = json.loads(line)
                if event["kind"] == "CheckpointSaved" and "manual" in event["tags"]:
                    break
        assert proc.wait(timeout=240) == 0
    finally:
        proc.kill()
    assert list((run / "checkpoints").glob("manual-step-*.pt"))


class RunStartedStub(RunStarted):
    """Only its type matters to the replay."""

    def __init__(self):  # noqa: D107 - a stand-in, not a real event
        pass


def test_a_chatty_loop_cannot_push_the_rare_events_out_of_the_replay():
    """What a user loop prints has a bounded queue of its own, before RunStarted too."""
    from tui_trainer.engine.events import Printed, TrainableChanged
    from tui_trainer.run.server import MAX_PRINTED

    replay = Replay()
    for i in range(5000):  # printed while the data loads, before the first batch
        replay.add(Printed(0, f"loading {i}", "stdout"), f"p{i}\n".encode())
    replay.add(RunStartedStub(), b"h0\n")
    replay.add(TrainableChanged(1, ("0",), False, (False,), 0, 10, "command"), b"t1\n")
    for i in range(5000, 20000):
        replay.add(Printed(2, f"line {i}", "stdout"), f"p{i}\n".encode())
    lines = replay.lines().decode().split()
    printed = [x for x in lines if x.startswith("p")]
    assert "h0" in lines and "t1" in lines  # the freeze survives 20,000 printed lines
    assert len(printed) == MAX_PRINTED and printed[-1] == "p19999"


def test_ls_shows_a_long_live_run_as_running(tmp_path, monkeypatch):
    """A live run whose last change of state lies before the tail `ls` reads (a long run's
    events.jsonl): running and attachable, not dead; and a run resumed into the directory of a
    finished one is not shown as finished while it trains."""
    from tui_trainer.run import catalog

    run = tmp_path / "run"
    proc = start_run(tmp_path, held_preset(tmp_path), run)
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "held at step 2")
        wait_until(lambda: any(e.get("step") == 2 and e["kind"] == "StepReport" for e in events_of(run)), "recorded")
        lines = (run / "events.jsonl").read_bytes().splitlines(keepends=True)
        last = [json.loads(line)["kind"] for line in lines].index("StateChanged") + 1
        monkeypatch.setattr(catalog, "TAIL_BYTES", sum(map(len, lines[last:])))  # the lines after the StateChanged
        [summary] = list_runs(tmp_path)
        assert (summary.state, summary.attachable, summary.step) == ("running", True, 2)
        monkeypatch.undo()
        finished = [json.dumps({"kind": "StateChanged", "time": 1.0, "step": 2, "epoch": 1, "state": "completed"}),
                    json.dumps({"kind": "Finished", "time": 1.0, "step": 2, "epoch": 1, "status": "completed"})]
        lines = (run / "events.jsonl").read_text().splitlines()
        first = lines[0]  # the held run's RunStarted, as a resume into a finished run's directory adds it
        (run / "events.jsonl").write_text("\n".join([first, *finished, *lines]) + "\n")
        [summary] = list_runs(tmp_path)
        assert (summary.state, summary.attachable) == ("running", True)
    finally:
        proc.kill()
        proc.wait(timeout=60)
