"""Learning rate: the manual scale command, and the planned schedule (RunStarted.plan) against the
LR the optimizer really steps with, for the schedules the contract names. The LR is read by an
optimizer step pre-hook, so it is what each step actually used."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import At, record_lrs, run
from tui_trainer.engine.commands import ScaleLr
from tui_trainer.engine.events import EpochEnd, LrChanged, RunStarted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS_PER_EPOCH = 7  # the tiny preset: 120 training samples, batches of 16, last one dropped
GROUPS = """
[[optimizer.groups]]
params = ["6"]
lr = 0.2
"""


def run_recording(preset, *overrides, commands=None):
    seen = {}

    def callbacks(session):
        seen["lrs"] = record_lrs(session.trainer.optimizer)
        return [commands] if commands else []

    out = run(preset, "train.log_every=1", *overrides, callbacks=callbacks)
    assert out.final.status == "completed", out.final
    plan = out.of(RunStarted)[0].plan
    assert plan.steps == tuple(range(plan.total_steps)), "a short run plans every step"
    planned = [[plan.lrs[g][k] for g in range(len(plan.groups))] for k in plan.steps]
    return out, seen["lrs"], planned


def approx_rows(rows, rel=1e-12):
    return [pytest.approx(r, rel=rel) for r in rows]


SCHEDULES = {
    "steplr-epoch": ['scheduler.name="StepLR"', "scheduler.step_size=1", "scheduler.gamma=0.5"],
    "cosine-step": ['scheduler.name="CosineAnnealingLR"', 'scheduler.interval="step"'],
    "cosine-epoch-warmup": ['scheduler.name="CosineAnnealingLR"', "scheduler.warmup_steps=5"],
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_scale_lr_halves_every_group_now_and_the_schedule_continues_from_there(schedule, tiny_preset):
    preset = tiny_preset(GROUPS)
    out, used, planned = run_recording(preset, *SCHEDULES[schedule], "train.epochs=3",
                                       commands=At({4: ScaleLr(0.5)}))
    assert len(used) == len(planned) == 3 * STEPS_PER_EPOCH
    assert len(used[0]) == 2, "two param groups"
    assert used[:4] == approx_rows(planned[:4])
    assert used[4:] == approx_rows([[lr * 0.5 for lr in row] for row in planned[4:]])
    assert len({tuple(row) for row in planned}) > 2, "the schedule really moves"
    (changed,) = out.of(LrChanged)
    assert (changed.step, changed.manual_factor, changed.reason) == (4, 0.5, "manual")
    assert list(changed.lrs) == pytest.approx([lr * 0.5 for lr in planned[4]], rel=1e-12)


def test_scales_compose(tiny_preset):
    out, used, planned = run_recording(tiny_preset(), "train.epochs=1",
                                       commands=At({2: ScaleLr(0.5), 4: [ScaleLr(0.5), ScaleLr(3.0)]}))
    factors = [e.manual_factor for e in out.of(LrChanged)]
    assert factors == [0.5, 0.25, 0.75]
    assert [row[0] for row in used] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0375, 0.0375, 0.0375])


def torch_schedule(make, epochs: int, interval: str) -> list[float]:
    """The LR of each step with the plain torch scheduler on a one-parameter SGD: the reference."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    sched = make(opt)
    lrs = []
    for _ in range(epochs):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if interval == "step":
                sched.step()
        if interval == "epoch":
            sched.step()
    return lrs


def test_onecycle_per_step_matches_torch_and_the_plan(tiny_preset):
    out, used, planned = run_recording(tiny_preset(), 'scheduler.name="OneCycleLR"', 'scheduler.interval="step"',
                                       "scheduler.pct_start=0.3")
    assert used == approx_rows(planned)
    S = torch.optim.lr_scheduler
    reference = torch_schedule(lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=14, pct_start=0.3), 2, "step")
    assert [row[0] for row in used] == pytest.approx(reference, rel=1e-12)


def test_sequential_with_nested_schedulers(tiny_preset):
    preset = tiny_preset("""
        [scheduler]
        name = "SequentialLR"
        milestones = [2]
        schedulers = [{name = "LinearLR", start_factor = 0.25, total_iters = 2}, {name = "StepLR", step_size = 1, gamma = 0.5}]
    """)
    out, used, planned = run_recording(preset, "train.epochs=4")
    assert used == approx_rows(planned)
    S = torch.optim.lr_scheduler
    reference = torch_schedule(lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.25, total_iters=2), S.StepLR(o, 1, 0.5)],
                                                        milestones=[2]), 4, "epoch")
    assert [row[0] for row in used] == pytest.approx(reference, rel=1e-12)


def test_warmup_ramps_linearly_into_the_schedule(tiny_preset):
    out, used, planned = run_recording(tiny_preset(GROUPS), 'scheduler.name="StepLR"', "scheduler.step_size=1",
                                       "scheduler.gamma=0.1", "scheduler.warmup_steps=10")
    assert used == approx_rows(planned)
    for k in range(10):  # across the epoch boundary at step 7: warm-up is in steps, the schedule in epochs
        gamma = 0.1 if k >= STEPS_PER_EPOCH else 1.0
        assert used[k] == pytest.approx([0.05 * gamma * (k + 1) / 10, 0.2 * gamma * (k + 1) / 10], rel=1e-12)
    assert used[10:] == approx_rows([[0.005, 0.02]] * 4)


def test_reduce_on_plateau_lowers_the_lr_and_says_so(tiny_preset):
    # threshold 100 in absolute mode: no epoch after the first counts as an improvement.
    out, used, planned = run_recording(tiny_preset(), 'scheduler.name="ReduceLROnPlateau"', "scheduler.patience=0",
                                       "scheduler.factor=0.5", 'scheduler.threshold_mode="abs"',
                                       "scheduler.threshold=100.0", "train.epochs=3")
    plan = out.of(RunStarted)[0].plan
    assert plan.adaptive and set(plan.lrs[0]) == {0.05}, "a plateau schedule cannot be planned ahead"
    lrs = [row[0] for row in used]
    assert lrs == pytest.approx([0.05] * 14 + [0.025] * 7, rel=1e-12)
    changes = [(e.step, e.reason, e.lrs) for e in out.of(LrChanged)]
    assert changes == [(14, "plateau", pytest.approx((0.025,))), (21, "plateau", pytest.approx((0.0125,)))]
    assert [e.plateau for e in out.of(EpochEnd)] == [(0, 0), (0, 0), (0, 0)]  # (bad epochs, patience)


# ------------------------------------------------------------------ the plan is the LR used
# The planned LR (RunStarted.plan: the preview and the LR pane draw it) is the LR training really
# uses, at every step, for each kind of schedule, with and without `train.max_steps` cutting the run.
#
# Each case is a real tiny run through `prepare` (as the CLI does); the LR used is read by an
# optimizer step pre-hook, so `used[k]` is what 0-based step k stepped with, and `plan.lrs[g][k]` is
# what the plan says for step k (a short run is planned at every step).

COSINE = ['scheduler.name="CosineAnnealingLR"']  # T_max left out: filled with the run length
ONECYCLE = ['scheduler.name="OneCycleLR"', "scheduler.pct_start=0.3"]  # total_steps filled
STEP = ['scheduler.interval="step"']
CUT = ["train.max_steps=15"]  # mid-epoch of epoch 3 of 4
CASES = {
    "steplr-epoch": ['scheduler.name="StepLR"', "scheduler.step_size=1", "scheduler.gamma=0.5"],
    "steplr-epoch-cut": ['scheduler.name="StepLR"', "scheduler.step_size=1", "scheduler.gamma=0.5", *CUT],
    "steplr-step-warmup-cut": ['scheduler.name="StepLR"', "scheduler.step_size=4", "scheduler.gamma=0.5",
                               *STEP, "scheduler.warmup_steps=3", *CUT],
    "cosine-epoch": COSINE,
    "cosine-epoch-cut": [*COSINE, *CUT],
    # the report's example: 10 epochs configured, max_steps cuts after 3 of them
    "cosine-epoch-cut-at-3-of-10": [*COSINE, "train.epochs=10", "train.max_steps=21"],
    "cosine-epoch-warmup-cut": [*COSINE, "scheduler.warmup_steps=5", *CUT],
    "cosine-step": [*COSINE, *STEP],
    "cosine-step-warmup-cut": [*COSINE, *STEP, "scheduler.warmup_steps=4", *CUT],
    "onecycle-step": [*ONECYCLE, *STEP],
    "onecycle-step-cut": [*ONECYCLE, *STEP, *CUT],
    "onecycle-step-warmup": [*ONECYCLE, *STEP, "scheduler.warmup_steps=3"],
    "onecycle-epoch-cut": [*ONECYCLE, *CUT],
    "linear-epoch": ['scheduler.name="LinearLR"', "scheduler.start_factor=0.25", "scheduler.total_iters=3"],
    "linear-epoch-cut": ['scheduler.name="LinearLR"', "scheduler.start_factor=0.25", "scheduler.total_iters=3",
                         *CUT],
    "linear-step-warmup-cut": ['scheduler.name="LinearLR"', "scheduler.start_factor=0.25",
                               "scheduler.total_iters=10", *STEP, "scheduler.warmup_steps=2", *CUT],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_plan_is_the_lr_training_uses_at_every_step(case, tiny_preset):
    overrides = ["train.epochs=4", *CASES[case]]  # a later train.epochs in the case wins
    seen = {}

    def callbacks(session):
        seen["lrs"] = record_lrs(session.trainer.optimizer)
        return []

    out = run(tiny_preset(GROUPS), "train.log_every=1", *overrides, callbacks=callbacks)
    assert out.final.status == "completed", out.final
    (started,) = out.of(RunStarted)
    plan = started.plan
    used = seen["lrs"]
    assert plan.steps == tuple(range(plan.total_steps)), "a short run is planned at every step"
    assert len(used) == plan.total_steps == started.total_steps, (len(used), plan.total_steps)
    assert plan.groups == ("default", "6")
    planned = [[plan.lrs[g][k] for g in range(len(plan.groups))] for k in plan.steps]
    wrong = [(k, planned[k], used[k]) for k in range(len(used)) if used[k] != pytest.approx(planned[k], rel=1e-12)]
    firsts = [w for i, w in enumerate(wrong) if i == 0 or (w[1], w[2]) != (wrong[i - 1][1], wrong[i - 1][2])]
    assert not wrong, f"{len(wrong)} steps differ; first step of each difference (step: planned != used): " + \
        "; ".join(f"{k}: {[round(v, 5) for v in p]} != {[round(v, 5) for v in u]}" for k, p, u in firsts[:6])
    assert len({tuple(row) for row in used}) > 2, "the schedule really moves"
