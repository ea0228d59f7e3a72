"""How a run ends: completed, early-stopped, stopped by a command, train.max_steps mid-epoch."""

from __future__ import annotations

import pytest

from tests.helpers.engine import At, run
from tui_trainer.engine.commands import Stop
from tui_trainer.engine.events import EpochEnd, RunStarted, RunWarning, StepReport

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_early_stopping_ends_the_run_cleanly(tiny_preset):
    # min_delta 100: only the first epoch counts as an improvement; patience 1 stops after the second.
    out = run(tiny_preset(), "train.epochs=5", "early_stopping.enabled=true", "early_stopping.patience=1",
              "early_stopping.min_delta=100.0")
    assert (out.final.status, out.final.exit_code, out.final.step) == ("early_stopped", 0, 14)
    assert [(e.epoch, e.bad_epochs, e.patience) for e in out.of(EpochEnd)] == [(1, 0, 1), (2, 1, 1)]
    assert out.final.message == "early stop: no val_loss improvement for 1 epoch"


def test_stop_command_saves_and_exits_0(tiny_preset, tmp_path):
    out = run(tiny_preset(), "train.log_every=1", callbacks=[At({4: Stop()})], run_dir=tmp_path / "r")
    assert (out.final.status, out.final.exit_code, out.final.step) == ("stopped", 0, 4)
    assert out.final.last_path == str(tmp_path / "r" / "checkpoints" / "last.pt")
    assert max(e.step for e in out.of(StepReport)) == 4


def test_max_steps_mid_epoch_leaves_the_epoch_open(tiny_preset, tmp_path):
    out = run(tiny_preset(), "train.max_steps=5", run_dir=tmp_path / "r")
    # epoch: the epoch of step 5 (engine/events.py), which is still open
    assert (out.final.status, out.final.step, out.final.epoch) == ("completed", 5, 1)
    assert not out.of(EpochEnd), "a partial epoch is neither validated nor counted"
    state = out.session.trainer.state_dict()
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (5, 0, 5)


def test_without_validation_best_follows_train_loss_even_for_a_monitor_that_goes_up(tiny_preset, tmp_path):
    """checkpoint.monitor = "val_acc" and no validation data: best.pt follows train_loss, downwards
    (it used to take the train loss as an accuracy: best.pt was the epoch of the highest train loss)."""
    preset = tiny_preset('monitor = "val_acc"\n')  # appended to [checkpoint]
    out = run(preset, "data.val_fraction=0", "train.epochs=3", "optimizer.lr=0.02", run_dir=tmp_path / "r")
    ends = out.of(EpochEnd)
    losses = [e.train_loss for e in ends]
    assert losses[-1] < losses[0]  # it trains
    assert {e.monitor for e in ends} == {"train_loss"} and out.of(RunStarted)[0].monitor == "train_loss"
    best = min(range(3), key=lambda i: losses[i])
    assert (ends[-1].best, ends[-1].best_epoch) == (losses[best], best + 1)
    assert [w.message for w in out.of(RunWarning) if "monitor" in w.message] == [
        'checkpoint.monitor = "val_acc" but the run has no validation data: it follows train_loss (give validation'
        ' data, data.val_fraction > 0, or set it to train_loss)']
    assert out.final.best == losses[best]


def test_without_validation_the_default_monitor_follows_train_loss_quietly(tiny_preset):
    out = run(tiny_preset(), "data.val_fraction=0", "train.epochs=2")
    assert {e.monitor for e in out.of(EpochEnd)} == {"train_loss"}
    assert not [w for w in out.of(RunWarning) if "monitor" in w.message]
