"""examples/textbook_loop.py, the textbook loop made steerable with tui_trainer.loop, in a real
terminal (tmux): the monitor's panes, the user's prints in the Log pane, and the keys space (freeze
a layer), l (LR lower), s (save) and q (stop), checked in the checkpoints they leave."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time

import pytest
import torch

from tests.conftest import ROOT
from tests.integration.test_e2e_tmux import Tmux

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.timeout(300)]


def test_the_textbook_loop_in_a_terminal_with_its_keys(tmp_path):
    cmd = f"{sys.executable} {ROOT / 'examples' / 'textbook_loop.py'} 100000"
    tty = Tmux("tui-trainer-loop", cmd, cwd=tmp_path)
    try:
        screen = tty.wait_for("RUNNING")
        for pane in ("Layers", "LR schedule", "Loss", "Memory", "Log"):
            assert pane in screen
        screen = tty.wait_for("val_acc")  # the loop's own print, in the Log pane
        assert re.search(r"│.* \d\d:\d\d:\d\d epoch \d+: val_loss [0-9.]+, val_acc", screen)  # a timestamped log line
        tty.keys("p")  # pause, so that the log stops scrolling (each epoch prints)
        tty.wait_for("PAUSED")
        tty.keys("Space")  # the first layer, "0": applied while paused, at the safe point
        tty.wait_for("○ off")
        tty.wait_for("froze 0")
        tty.keys("l")
        tty.wait_for("LR ×0.5 by hand")
        tty.keys("s")
        screen = tty.wait_for("checkpoints/manual-step-")
        paused_at = int(re.search(r"step (\d+)/", screen).group(1))
        tty.keys("p")
        tty.wait_for("RUNNING")
        deadline = time.monotonic() + 60  # a hang guard: it trains on with the layer frozen
        while time.monotonic() < deadline and int(re.search(r"step (\d+)/", tty.screen()).group(1)) < paused_at + 100:
            time.sleep(0.2)
        tty.keys("q")
        screen = tty.wait_for("q or Enter to leave")
        assert "STOPPED" in screen
        tty.keys("Enter")
        screen = tty.wait_for("EXIT=0")
        assert "val_loss" not in screen  # nothing the loop printed reached the terminal after the app
    finally:
        tty.close()
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("textbook_loop-")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["kind"] == "loop" and last["trainable"]["0.weight"] is False and last["trainable"]["2.weight"]
    assert last["schedule"]["manual_factor"] == 0.5
    (manual,) = (run / "checkpoints").glob("manual-step-*.pt")
    saved = torch.load(manual, weights_only=True)
    assert saved["trainable"]["0.weight"] is False and saved["schedule"]["manual_factor"] == 0.5
    assert last["step"] >= saved["step"] + 100
    assert torch.equal(saved["model"]["0.weight"], last["model"]["0.weight"])  # frozen: it never moved
    assert not torch.equal(saved["model"]["4.weight"], last["model"]["4.weight"])  # the rest trained on


FAILING = """\
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import tui_trainer

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,))), batch_size=8)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

def check_batch(x, step):
    if step == 30:
        raise RuntimeError(f"bad batch at step {step}")

def train(run):
    for epoch in run.epochs(10):
        for x, y in run.batches(loader):
            check_batch(x, run.step + 1)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
        print(f"finished epoch {epoch + 1}")
        run.log_epoch(val_loss=1.0)

sys.exit(tui_trainer.loop(train, model=model, optimizer=optimizer, run_dir="run", log_every=1))
"""


def test_a_failing_loop_in_a_terminal_shows_the_traceback_then_leaves_it_on_stderr(tmp_path):
    (tmp_path / "failing.py").write_text(FAILING)
    tty = Tmux("tui-trainer-loop-fail", f"{sys.executable} failing.py", cwd=tmp_path)
    try:
        screen = tty.wait_for("q or Enter to leave")
        assert "FAILED" in screen and "RuntimeError: bad batch at step 30" in screen
        tty.keys("Escape")  # look around first: the traceback is in the Log pane
        deadline = time.monotonic() + 60  # a hang guard: the summary must be gone before q is sent,
        while "q or Enter to leave" in tty.screen() and time.monotonic() < deadline:  # or ESC q reads as alt+q
            time.sleep(0.1)
        tty.wait_for("in check_batch")
        tty.keys("q")
        screen = tty.wait_for("EXIT=1")
    finally:
        tty.close()
    # the terminal is the user's again: Python's traceback and one line, as a script's own failure
    after = screen[screen.index("Traceback (most recent call last)"):]
    assert 'failing.py", line' in after and "RuntimeError: bad batch at step 30" in after
    assert "tui-trainer: FAILED at step 29: RuntimeError: bad batch at step 30; the run is in" in after
    assert "finished epoch" not in screen  # the loop's prints were the Log pane's, never the terminal's
    printed = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["text"] for e in printed if e["kind"] == "Printed"] == [f"finished epoch {i}" for i in (1, 2, 3)]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 24  # epoch 3's checkpoint: nothing was written over it
