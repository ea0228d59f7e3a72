"""The planned LR (RunStarted.plan: the preview and the LR pane draw it) is the LR training really
uses, at every step, for each kind of schedule, with and without `train.max_steps` cutting the run.

Each case is a real tiny run through `prepare` (as the CLI does); the LR used is read by an
optimizer step pre-hook, so `used[k]` is what 0-based step k stepped with, and `plan.lrs[g][k]` is
what the plan says for step k (a short run is planned at every step)."""

from __future__ import annotations

import pytest

from tests.helpers.engine import record_lrs, run
from tui_trainer.engine.events import RunStarted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS_PER_EPOCH = 7  # the tiny preset: 120 training samples, batches of 16, last one dropped
GROUPS = """
[[optimizer.groups]]
params = ["6"]
lr = 0.2
"""

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
