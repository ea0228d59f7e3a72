"""Tutorial-style callbacks named in [[callbacks]] (parts/callbacks.py): on_epoch_start,
on_batch_end, on_validation_end, on_epoch_end, called with the arguments their parameters name;
True stops the run; an LR written into a param group is adopted and kept (also across a resume);
a broken hook is disabled with a warning; a callback with no hook, or a hook parameter with an
unknown name, is bad input."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.helpers.engine import StopAt, run
from tests.helpers.runs import load_checkpoint
from tests.helpers.user_code import UC, write_preset
from tui_trainer.engine.events import EpochEnd, Finished, LrChanged, RunStarted, RunWarning, StepReport
from tui_trainer.errors import UserError
from tui_trainer.run.launch import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hooks_of(out):
    return out.session.trainer.parts.callbacks


def test_each_hook_is_called_with_what_it_asks_for(tmp_path):
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 3, "accumulate": 2}, data={"batch_size": 8},
                          metrics=[{"name": "f1"}],
                          callbacks=[{"target": f"{UC}:EpochStarts"}, {"target": f"{UC}:BatchEnds"},
                                     {"target": f"{UC}:EpochEnds"}, {"target": f"{UC}:StopAfterValidation",
                                                                     "epoch": 99}])
    out = run(preset)
    assert isinstance(out.final, Finished) and out.final.status == "completed"
    starts, batches, ends, validations = hooks_of(out)
    trainer = out.session.trainer
    # on_epoch_start(epoch, model, optimizer): once per epoch, 0-based, the run's own objects
    assert [e for e, _, _ in starts.calls] == [0, 1, 2]
    assert all(m is trainer.model and o is trainer.optimizer for _, m, o in starts.calls)
    # on_batch_end: once per optimizer step (accumulate = 2: every second batch), after the step
    total = out.of(RunStarted)[0].total_steps
    assert total == 3 * (96 // 8 // 2) and batches.count == total == out.final.step
    assert batches.steps == list(range(1, total + 1))
    # on_epoch_end(epoch, metrics): 0-based epoch, the epoch's values
    epoch_ends = out.of(EpochEnd)
    assert [e for e, _ in ends.calls] == [0, 1, 2]
    for (_, metrics), event in zip(ends.calls, epoch_ends):
        assert metrics["val_loss"] == event.val_loss and metrics["val_acc"] == event.val_acc
        assert metrics["train_loss"] == event.train_loss and metrics["val_f1"] == event.metrics["val_f1"]
    # on_validation_end(model, optimizer, metrics, epoch): the same values, before the checkpoint
    assert [m["val_loss"] for m in validations.seen] == [e.val_loss for e in epoch_ends]


def test_on_validation_end_returning_true_stops_the_run(tmp_path):
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 5},
                          callbacks=[{"target": f"{UC}:StopAfterValidation", "epoch": 1}])
    out = run(preset, run_dir=tmp_path / "r")
    final = out.final
    assert isinstance(final, Finished)
    assert final.status == "stopped" and final.exit_code == 0 and "callback" in final.message
    assert [e.epoch for e in out.of(EpochEnd)] == [1, 2], "the stopping epoch is completed and saved"
    assert final.step == 2 * out.of(RunStarted)[0].steps_per_epoch
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == final.step


def test_on_validation_end_stop_through_the_cli_exits_0(tmp_path):
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 5},
                          callbacks=[{"target": f"{UC}:StopAfterValidation", "epoch": 0}])
    proc = run_cli(str(preset), "--no-ui", cwd=tmp_path, timeout=120, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "callback" in proc.stdout + proc.stderr


def test_an_lr_written_by_a_hook_is_adopted_kept_by_the_schedule_and_resumed(tmp_path):
    """StepLR halves the LR after every epoch: 0.1, 0.05 | the hook writes 0.01 at the start of
    epoch 1 | 0.005, 0.0025: the schedule goes on from the written value, and so does a resume."""
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 4},
                          optimizer={"name": "SGD", "lr": 0.1, "momentum": 0.0},
                          scheduler={"name": "StepLR", "step_size": 1, "gamma": 0.5},
                          callbacks=[{"target": f"{UC}:SetLr", "epoch": 1, "lr": 0.01}])
    straight = run(preset, run_dir=tmp_path / "straight")
    assert straight.final.status == "completed"
    per_epoch = 96 // 16
    lrs = {r.step: r.lrs[0] for r in straight.of(StepReport)}
    expect_epoch = [0.1, 0.01, 0.005, 0.0025]  # the LR during each epoch
    assert sorted(lrs) == list(range(1, 4 * per_epoch + 1))
    for step, lr in lrs.items():
        assert lr == pytest.approx(expect_epoch[(step - 1) // per_epoch]), (step, lr)
    (changed,) = [e for e in straight.of(LrChanged) if e.reason == "callback"]
    assert changed.lrs == pytest.approx((0.01,)) and changed.step == per_epoch

    # stopped in epoch 2 (0-based), after the LR was written, and resumed: the same LRs
    stopped = run(preset, run_dir=tmp_path / "stopped", callbacks=[StopAt(2 * per_epoch + 2)])
    assert stopped.final.status == "stopped"
    resumed = run(preset, resume=str(tmp_path / "stopped" / "checkpoints" / "last.pt"))
    assert resumed.final.status == "completed"
    assert resumed.of(RunStarted)[0].lrs == pytest.approx((0.005,))
    assert not [e for e in resumed.of(LrChanged) if e.reason == "callback"], "the hook did not fire again"
    again = {r.step: r.lrs[0] for r in resumed.of(StepReport)}
    assert min(again) == 2 * per_epoch + 3
    assert all(again[s] == pytest.approx(lrs[s]) for s in again)


def test_a_hook_that_raises_is_disabled_and_the_run_completes(tmp_path):
    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": f"{UC}:RaisesAt", "step": 2}])
    out = run(preset)
    assert out.final.status == "completed"
    (warning,) = [w for w in out.of(RunWarning) if "RaisesAt" in w.message]
    assert warning.step == 2 and "on_batch_end" in warning.message and "KeyError" in warning.message
    assert "disabled" in warning.message
    assert hooks_of(out)[0].calls == 2, "not called again after it raised"


NEITHER = ("has neither on_event(event, control) nor a hook (on_epoch_start, on_batch_end, on_validation_end,"
           " on_epoch_end)")


@pytest.mark.parametrize("target, expect", [
    ("Plain", f"callbacks[0].target: Plain {NEITHER}"),
    ("MisspeltHook", f'callbacks[0].target: MisspeltHook {NEITHER}; did you mean "on_batch_end"?'),
    ("UnknownParam", 'callbacks[0].target: UnknownParam.on_epoch_end takes "stats"; a hook\'s parameters are'
                     ' named from: epoch, step, model, optimizer, loss, metrics, logs'),
], ids=["no-methods", "misspelt-hook", "unknown-parameter"])
def test_a_callback_without_a_usable_hook_is_bad_input(tmp_path, target, expect):
    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": f"{UC}:{target}"}])
    with pytest.raises(UserError) as info:
        prepare(preset)
    assert info.value.exit_code == 2
    assert str(info.value) == f"{preset}: {expect}"
    assert not (tmp_path / "runs").exists()


def test_keras_hook_names_are_the_same_hooks(tmp_path):
    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": f"{UC}:KerasNames"}])
    out = run(preset)
    assert out.final.status == "completed"
    (cb,) = out.session.trainer.parts.callbacks
    assert cb.epochs == list(range(len(out.of(EpochEnd))))  # 0-based, once per epoch
    assert cb.batches == out.final.step
