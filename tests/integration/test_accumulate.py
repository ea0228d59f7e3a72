"""train.accumulate: N batches per optimizer step. The same samples in the same order give the
same weights as one N-times bigger batch; every count (steps, reports, checkpoints, the schedule)
is in optimizer steps; a resume mid-epoch is exact; and a command never lands inside an
accumulation: it waits for the step's last batch."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import Snapshots, StopAt, record_lrs, run
from tests.helpers.runs import assert_exactly_equal, load_checkpoint, losses_by_step, read_events
from tests.helpers.user_code import UC, write_preset
from tui_trainer.engine.commands import SetTrainable, Stop
from tui_trainer.engine.events import CheckpointSaved, EpochEnd, Finished, RunStarted, StepReport, TrainableChanged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 128 train samples: 16 batches of 8 = 4 steps of 4 x 8 = 4 batches of 32
DATA = {"dataset": f"{UC}:pair", "kwargs": {"n": 128, "n_val": 24}}


def _run_with_snapshots(preset, *overrides, **kwargs):
    snaps: list[Snapshots] = []

    def attach(session):
        model = session.trainer.model
        snaps.append(Snapshots(model, tuple(n for n, _ in model.named_parameters())))
        return snaps

    out = run(preset, *overrides, callbacks=attach, **kwargs)
    return out, snaps[0].at


def test_four_batches_of_8_equal_one_batch_of_32(tmp_path):
    preset = write_preset(tmp_path / "p.toml", data={**DATA, "batch_size": 8}, train={"accumulate": 4},
                          checkpoint={"every_steps": 2, "keep_last": 10})
    acc, acc_at = _run_with_snapshots(preset, run_dir=tmp_path / "acc")
    big, big_at = _run_with_snapshots(preset, "data.batch_size=32", "train.accumulate=1", run_dir=tmp_path / "big")
    for out in (acc, big):
        assert isinstance(out.final, Finished) and out.final.status == "completed" and out.final.step == 8
        started = out.of(RunStarted)[0]
        assert (started.steps_per_epoch, started.total_steps, started.batch_size) == (4, 8, 32)
        assert [r.step for r in out.of(StepReport)] == list(range(1, 9))
        assert [e.step for e in out.of(EpochEnd)] == [4, 8]
        saves = [(c.step, c.epoch) for c in out.of(CheckpointSaved) if "step" in c.tags or "epoch" in c.tags]
        assert sorted(set(saves)) == [(2, 1), (4, 1), (6, 2), (8, 2)]
    assert sorted(acc_at) == sorted(big_at) == list(range(1, 9))
    for step in range(1, 9):
        for name, value in big_at[step].items():
            assert torch.allclose(acc_at[step][name], value, atol=1e-6, rtol=0), (step, name)
    assert not torch.equal(acc_at[8]["0.weight"], acc_at[1]["0.weight"]), "it trained"
    # the reported loss of a step is the mean over its 32 samples, as the big batch's is
    la, lb = losses_by_step(read_events(tmp_path / "acc")), losses_by_step(read_events(tmp_path / "big"))
    assert la.keys() == lb.keys() and all(abs(la[s] - lb[s]) < 1e-5 for s in la)


def test_exact_resume_mid_epoch_with_accumulate_2(tmp_path):
    preset = write_preset(tmp_path / "p.toml", data={**DATA, "batch_size": 8}, train={"accumulate": 2})
    straight = run(preset, run_dir=tmp_path / "straight")
    assert straight.final.status == "completed" and straight.final.step == 16
    stopped = run(preset, run_dir=tmp_path / "stopped", callbacks=[StopAt(5)])
    assert stopped.final.status == "stopped" and stopped.final.step == 5
    mid = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert (mid["step"], mid["epoch"], mid["batch_in_epoch"]) == (5, 0, 5)
    resumed = run(preset, resume=str(tmp_path / "stopped" / "checkpoints" / "last.pt"))
    assert resumed.final.status == "completed" and resumed.final.step == 16
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "schedule", "step", "epoch", "batch_in_epoch"):
        assert_exactly_equal(a[key], b[key], key)
    assert losses_by_step(read_events(tmp_path / "straight")) == losses_by_step(read_events(tmp_path / "stopped"))


def _send_during_forward(n: int, command):
    """A callbacks factory for `run`: the command is sent from inside the n-th training forward pass
    (1-based), i.e. in the middle of an accumulation when n is not a multiple of accumulate."""

    def attach(session):
        calls = [0]

        def hook(module, args):
            if module.training:
                calls[0] += 1
                if calls[0] == n:
                    session.trainer.control.send(command)

        session.trainer.model.register_forward_pre_hook(hook)
        return []

    return attach


def test_a_stop_sent_inside_an_accumulation_waits_for_the_whole_step(tmp_path):
    preset = write_preset(tmp_path / "p.toml", data={**DATA, "batch_size": 8}, train={"accumulate": 2})
    straight, at = _run_with_snapshots(preset, run_dir=tmp_path / "straight")
    # forward 5 is the first batch of step 3 (forwards 5 and 6): the stop lands after step 3
    stopped = run(preset, run_dir=tmp_path / "stopped", callbacks=_send_during_forward(5, Stop(reason="test")))
    assert stopped.final.status == "stopped" and stopped.final.step == 3
    last = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert last["step"] == 3
    for name, value in at[3].items():
        assert torch.equal(last["model"][name], value), name  # a whole optimizer step, not half of one


def test_a_freeze_sent_inside_an_accumulation_applies_after_the_step(tmp_path):
    preset = write_preset(tmp_path / "p.toml", data={**DATA, "batch_size": 8}, train={"accumulate": 2, "epochs": 1})
    straight, at = _run_with_snapshots(preset, run_dir=tmp_path / "straight")
    snaps: list[Snapshots] = []
    send = _send_during_forward(5, SetTrainable(("0",), False))

    def attach(session):
        send(session)
        model = session.trainer.model
        snaps.append(Snapshots(model, tuple(n for n, _ in model.named_parameters())))
        return snaps

    out = run(preset, run_dir=tmp_path / "frozen", callbacks=attach)
    assert out.final.status == "completed" and out.final.step == 8
    (changed,) = out.of(TrainableChanged)
    assert changed.step == 3 and changed.prefixes == ("0",) and changed.trainable is False
    fat = snaps[0].at
    for step in (1, 2, 3):  # step 3 was already under way: it updates layer 0 in full
        for name in ("0.weight", "0.bias"):
            assert torch.equal(fat[step][name], at[step][name]), (step, name)
    assert not torch.equal(fat[3]["0.weight"], fat[2]["0.weight"])
    for step in range(4, 9):  # frozen from step 4 on
        assert torch.equal(fat[step]["0.weight"], fat[3]["0.weight"]), step
    assert not torch.equal(fat[8]["2.weight"], fat[3]["2.weight"]), "the rest trains on"


def test_accumulate_counts_optimizer_steps_for_a_per_step_schedule(tmp_path):
    """A per-step schedule moves once per optimizer step, not per batch: with accumulate = 4 the
    StepLR(step_size = 2) LR halves every 2 steps (8 batches)."""
    preset = write_preset(tmp_path / "p.toml", data={**DATA, "batch_size": 8}, train={"accumulate": 4},
                          optimizer={"name": "SGD", "lr": 0.1, "momentum": 0.0},
                          scheduler={"name": "StepLR", "interval": "step", "step_size": 2, "gamma": 0.5})
    taken: list[list[list[float]]] = []

    def attach(session):
        taken.append(record_lrs(session.trainer.optimizer))
        return []

    out = run(preset, callbacks=attach)
    assert out.final.status == "completed" and out.final.step == 8
    # the LR each optimizer step was taken with: one optimizer.step() per 4 batches
    assert [lrs[0] for lrs in taken[0]] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    # and the reports (which show the LR after the step's schedule update) agree with a batch of 32
    big = run(preset, "data.batch_size=32", "train.accumulate=1")
    assert [r.lrs for r in out.of(StepReport)] == [r.lrs for r in big.of(StepReport)]
