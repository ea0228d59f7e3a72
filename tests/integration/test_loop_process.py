"""A script that calls tui_trainer.loop, run as its own process with no terminal (headless), as a
user runs it: `tui-trainer ls` lists it, a viewer steers it through the control socket (what
`attach` uses), SIGUSR1 saves, SIGTERM saves and exits 143, and a failing loop exits 1 with its
traceback on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import cli_env, run_cli
from tests.helpers.runs import wait_until
from tui_trainer.engine.commands import ScaleLr
from tui_trainer.run.server import live_socket
from tui_trainer.ui.remote import SocketLink

pytestmark = pytest.mark.timeout(180)

SCRIPT = """\
import os, sys, time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import tui_trainer

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,))), batch_size=8)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

def train(run):
    for epoch in run.epochs(100000):
        for x, y in run.batches(loader):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
            if run.step == 3:
                print("held at step 4")
                open("ready", "w").close()
                while not os.path.exists("go"):
                    time.sleep(0.02)
            {fail}
            time.sleep(0.002)

sys.exit(tui_trainer.loop(train, model=model, optimizer=optimizer, run_dir="run", ui=False, log_every=1))
"""


def start(tmp_path, fail: str = "") -> subprocess.Popen:
    script = tmp_path / "my_train.py"
    script.write_text(SCRIPT.replace("{fail}", fail))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=open(tmp_path / "out.txt", "w"), stderr=open(tmp_path / "err.txt", "w"))


def events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def test_ls_attach_and_signals_for_a_loop_run(tmp_path):
    proc = start(tmp_path)
    run = tmp_path / "run"
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), "the loop reached step 4")
        listed = run_cli("ls", str(tmp_path), cwd=tmp_path)
        line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(str(run)))
        assert "running" in line and line.rstrip().endswith("yes")  # attachable
        viewer = SocketLink(live_socket(run))
        viewer.start()
        seen: list = []
        wait_until(lambda: seen.extend(viewer.drain()) or any(e.kind == "RunStarted" for e in seen),
                   "the viewer got the run's start")
        viewer.send(ScaleLr(0.5))
        (tmp_path / "go").write_text("")
        wait_until(lambda: any(e["kind"] == "LrChanged" for e in events(run)), "the LR change from the viewer")
        # the Layers pane's numbers, taken from the loop's optimizer.step() while a viewer looks
        wait_until(lambda: seen.extend(viewer.drain()) or any(e.kind == "LayerStats" for e in seen),
                   "layer statistics for the viewer")
        stats = next(e for e in seen if e.kind == "LayerStats")
        assert len(stats.grad_norm) == 2 and all(g is not None and g > 0 for g in stats.grad_norm)
        viewer.close()
        proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: list((run / "checkpoints").glob("manual-step-*.pt")), "the save SIGUSR1 asked for")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    final = events(run)[-1]
    assert final["kind"] == "Finished" and final["status"] == "signal" and final["exit_code"] == 143
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == final["step"] and last["schedule"]["manual_factor"] == 0.5
    out = (tmp_path / "out.txt").read_text()
    assert " held at step 4\n" in out and "stopped by signal 15 after a clean save" in out
    assert not (run / "control.sock").exists()


def test_a_failing_loop_exits_1_with_its_traceback_on_stderr(tmp_path):
    proc = start(tmp_path, fail="if run.step == 5: {}['missing']")
    (tmp_path / "go").write_text("")
    assert proc.wait(timeout=120) == 1
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err
    assert "tui-trainer: FAILED at step 6: KeyError: 'missing'" in err
    out = (tmp_path / "out.txt").read_text()
    assert "FAILED at step 6: KeyError: 'missing' (" in out and "my_train.py" in out
    assert events(tmp_path / "run")[-1]["kind"] == "Failed"
