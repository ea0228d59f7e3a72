"""LR planning and LrSchedule (tui_trainer/parts/optim.py) without training: warm-up x scheduler x
manual factor, per-step vs per-epoch scheduling, exact StepLR values. (train.max_steps is not
tested here: tests/integration/test_lr.py covers it through runs.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tui_trainer.config import OptimizerSection, ParamGroup, SchedulerSection
from tui_trainer.errors import PresetError
from tui_trainer.parts.optim import LrPlan, LrSchedule, build_scheduler, check_scheduler, plan_lr


def plan(sched: SchedulerSection, *, steps_per_epoch: int, total_steps: int, opt: OptimizerSection | None = None,
         groups=("default",), **kw) -> LrPlan:
    return plan_lr(opt or OptimizerSection(name="SGD", lr=0.1), sched, list(groups),
                   steps_per_epoch=steps_per_epoch, total_steps=total_steps, **kw)


def approx(values):
    return pytest.approx(values, rel=1e-12)


# --------------------------------------------------------------------------- plan_lr


def test_no_scheduler_is_flat():
    p = plan(SchedulerSection(), steps_per_epoch=3, total_steps=6)
    assert p == LrPlan(("default",), (0, 1, 2, 3, 4, 5), ((0.1,) * 6,), 6, False)


def test_steplr_per_epoch_exact_values_for_each_group():
    opt = OptimizerSection(name="SGD", lr=0.1, groups=[ParamGroup(params=["head"], lr=0.4)])
    p = plan(SchedulerSection(name="StepLR", step_size=1, gamma=0.5), steps_per_epoch=3, total_steps=9, opt=opt,
             groups=("default", "head"))
    assert p.groups == ("default", "head") and p.steps == tuple(range(9)) and p.total_steps == 9
    assert p.lrs[0] == approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3), "changes at each epoch boundary"
    assert p.lrs[1] == approx([0.4] * 3 + [0.2] * 3 + [0.1] * 3), "a group's own lr, same schedule"
    assert not p.adaptive


def test_steplr_per_step_changes_every_step_size_steps():
    p = plan(SchedulerSection(name="StepLR", interval="step", step_size=2, gamma=0.5), steps_per_epoch=3,
             total_steps=7)
    assert p.lrs[0] == approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]), "epoch boundaries do not matter"


def test_warmup_ramps_linearly_to_the_base_lr():
    p = plan(SchedulerSection(warmup_steps=4), steps_per_epoch=3, total_steps=7)
    assert p.lrs[0] == approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1]), "(step + 1) / warmup_steps"


def test_warmup_multiplies_a_per_epoch_schedule_across_the_boundary():
    p = plan(SchedulerSection(name="StepLR", step_size=1, gamma=0.1, warmup_steps=4), steps_per_epoch=3,
             total_steps=6)
    # epoch 1 at 0.1, epoch 2 at 0.01; warm-up (k+1)/4 over steps 0..3 whatever the epoch
    assert p.lrs[0] == approx([0.1 * 0.25, 0.1 * 0.5, 0.1 * 0.75, 0.01 * 1.0, 0.01, 0.01])


def test_a_per_step_schedule_starts_after_the_warmup():
    p = plan(SchedulerSection(name="StepLR", interval="step", step_size=2, gamma=0.5, warmup_steps=2),
             steps_per_epoch=3, total_steps=9)
    # warm-up 0.05, 0.1; then the scheduler's own steps 0, 1, 2, ... from step 2 on
    assert p.lrs[0] == approx([0.05, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])


def test_cosine_per_step_fills_its_length_with_the_run():
    p = plan(SchedulerSection(name="CosineAnnealingLR", interval="step"), steps_per_epoch=3, total_steps=6)
    reference = []
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    for _ in range(6):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert p.lrs[0] == approx(reference)
    assert p.lrs[0][0] == 0.1 and p.lrs[0][-1] < 0.01


def test_plateau_cannot_be_planned_ahead():
    p = plan(SchedulerSection(name="ReduceLROnPlateau"), steps_per_epoch=3, total_steps=9)
    assert p.adaptive and set(p.lrs[0]) == {0.1}


def test_an_optimizer_that_needs_real_parameters_is_planned_with_its_lr():
    p = plan(SchedulerSection(name="StepLR", step_size=1), steps_per_epoch=2, total_steps=4,
             opt=OptimizerSection(name="LBFGS", lr=0.5))
    assert p.lrs[0] == approx([0.5, 0.5, 0.05, 0.05])


def test_a_long_run_is_thinned_but_keeps_both_ends():
    p = plan(SchedulerSection(warmup_steps=10), steps_per_epoch=100, total_steps=10_000, max_points=100)
    assert len(p.steps) == 101 and p.steps[:3] == (0, 100, 200) and p.steps[-1] == 9_999
    assert len(p.lrs[0]) == len(p.steps) and p.lrs[0][0] == pytest.approx(0.01) and p.lrs[0][-1] == 0.1
    assert p.total_steps == 10_000


# --------------------------------------------------------------------------- LrSchedule


def two_groups(lr_a=0.1, lr_b=1.0):
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": lr_b}], lr=lr_a)


def test_schedule_sets_the_first_steps_lr_at_once():
    opt = two_groups()
    s = LrSchedule(opt, None, "epoch", warmup_steps=4)
    assert s.current() == approx([0.025, 0.25])
    assert s.needs_per_step and not s.plateau and s.plateau_status() is None
    for done, want in ((1, 0.5), (2, 0.75), (3, 1.0), (4, 1.0), (9, 1.0)):
        s.after_step(done)
        assert s.current() == approx([0.1 * want, 1.0 * want]), done


def test_without_warmup_or_per_step_scheduler_nothing_is_per_step():
    s = LrSchedule(two_groups(), None, "epoch", warmup_steps=0)
    assert not s.needs_per_step and s.current() == [0.1, 1.0]
    s.after_epoch(None)  # no scheduler: nothing to step
    assert s.current() == [0.1, 1.0]


def test_manual_factor_multiplies_warmup_and_composes():
    s = LrSchedule(two_groups(), None, "epoch", warmup_steps=2)
    s.scale(0.5)
    assert s.current() == approx([0.1 * 0.5 * 0.5, 1.0 * 0.5 * 0.5]), "warm-up 1/2 times factor 1/2"
    s.after_step(1)
    assert s.current() == approx([0.05, 0.5])
    s.scale(0.5)
    s.scale(3.0)
    assert s.manual_factor == pytest.approx(0.75) and s.current() == approx([0.075, 0.75])


def test_the_scheduler_never_sees_the_manual_factor():
    opt = two_groups()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    s = LrSchedule(opt, sched, "epoch", warmup_steps=0)
    s.scale(0.1)
    assert s.current() == approx([0.01, 0.1])
    s.after_epoch(0.3)
    assert s.base == approx([0.05, 0.5]), "the scheduler halved its own value, not the scaled one"
    assert s.current() == approx([0.005, 0.05])
    s.after_step(1)  # a per-epoch scheduler is not stepped per step
    assert s.current() == approx([0.005, 0.05])


def test_per_step_scheduler_steps_after_steps_not_epochs():
    opt = two_groups()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    s = LrSchedule(opt, sched, "step", warmup_steps=0)
    s.after_epoch(None)
    assert s.current() == approx([0.1, 1.0]), "after_epoch leaves a per-step scheduler alone"
    s.after_step(1)
    s.after_step(2)
    assert s.current() == approx([0.025, 0.25])


def test_plateau_steps_only_on_a_metric():
    opt = two_groups()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    s = LrSchedule(opt, sched, "epoch", warmup_steps=0)
    assert s.plateau and s.plateau_status() == (0, 0)
    s.after_epoch(1.0)
    s.after_epoch(None)  # no metric this epoch: not stepped
    assert s.current() == approx([0.1, 1.0])
    s.after_epoch(2.0)  # worse: patience 0 -> halve
    assert s.current() == approx([0.05, 0.5])


def test_state_dict_restores_factor_base_and_scheduler():
    def make():
        opt = two_groups()
        return LrSchedule(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), "epoch", warmup_steps=0)

    s = make()
    s.scale(0.5)
    for _ in range(4):  # epochs 1..4: halved once, at 3
        s.after_epoch(None)
    state = s.state_dict()
    assert state["manual_factor"] == 0.5 and state["base"] == approx([0.05, 0.5])

    s2 = make()
    s2.load_state_dict(state)
    s2.before_step(0)  # the restored terms are applied at the next step
    assert s.current() == approx([0.025, 0.25])
    assert s2.current() == approx(s.current())
    for _ in range(2):  # epochs 5, 6: halved at 6 (a scheduler restarted at 0 would not halve before 3)
        s.after_epoch(None)
        s2.after_epoch(None)
    assert s.current() == approx([0.0125, 0.125])
    assert s2.current() == approx(s.current()), "the scheduler's count resumed too"


# --------------------------------------------------------------------------- ReduceLROnPlateau's mode


def plateau_schedule(monitor: str, goals=None, **kwargs):
    opt = two_groups()
    cfg = SchedulerSection(name="ReduceLROnPlateau", monitor=monitor, **kwargs)
    return LrSchedule(opt, build_scheduler(cfg, opt, 10, goals), "epoch", warmup_steps=0)


@pytest.mark.parametrize(("monitor", "goals", "mode"), [
    ("val_acc", None, "max"), ("val_loss", None, "min"), ("train_loss", None, "min"),
    ("val_f1", {"val_f1": "max"}, "max"), ("val_mae", {"val_mae": "min"}, "min"),
])
def test_plateau_mode_follows_the_monitor(monitor, goals, mode):
    s = plateau_schedule(monitor, goals, patience=1)
    assert s.scheduler.mode == mode
    assert plateau_schedule(monitor, goals, mode="auto").scheduler.mode == mode, '"auto" means the same'


def test_plateau_on_accuracy_keeps_the_lr_while_it_rises_and_cuts_when_flat():
    rising = plateau_schedule("val_acc", patience=1, factor=0.5)
    for acc in (0.5, 0.6, 0.7, 0.8, 0.9):
        rising.after_epoch(acc)
        assert rising.current() == approx([0.1, 1.0]), f"cut after accuracy rose to {acc}"
    flat = plateau_schedule("val_acc", patience=1, factor=0.5)
    flat.after_epoch(0.5)
    flat.after_epoch(0.5)  # 1 bad epoch: within patience
    assert flat.current() == approx([0.1, 1.0]) and flat.plateau_status() == (1, 1)
    flat.after_epoch(0.5)  # 2 bad epochs > patience 1: cut
    assert flat.current() == approx([0.05, 0.5])


def test_a_plateau_mode_against_the_monitor_is_refused():
    with pytest.raises(PresetError) as info:
        plateau_schedule("val_acc", mode="min")
    assert info.value.key == "scheduler.mode"
    assert info.value.message == ('"min" with monitor "val_acc" would cut the LR when it improves;'
                                  ' use mode = "max" (or leave it out)')
    with pytest.raises(PresetError) as info:  # fails fast too
        check_scheduler(SchedulerSection(name="ReduceLROnPlateau", monitor="val_f1", mode="min"), {"val_f1": "max"})
    assert info.value.key == "scheduler.mode" and 'use mode = "max"' in info.value.message
    check_scheduler(SchedulerSection(name="ReduceLROnPlateau", monitor="val_acc", mode="max"))
    # a monitor whose direction is not known: the given mode stands
    assert plateau_schedule("val_custom", mode="max").scheduler.mode == "max"


def test_plan_lr_and_build_scheduler_work_without_goals():
    p = plan(SchedulerSection(name="ReduceLROnPlateau", monitor="val_acc"), steps_per_epoch=2, total_steps=4)
    assert p.adaptive and set(p.lrs[0]) == {0.1}
    p = plan(SchedulerSection(name="ReduceLROnPlateau", monitor="val_f1"), steps_per_epoch=2, total_steps=4,
             goals={"val_f1": "max"})
    assert p.adaptive


# --------------------------------------------------------------------------- adopting LR writes


def steplr_schedule(warmup_steps=0, gamma=0.5):
    opt = two_groups()
    return LrSchedule(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma), "epoch",
                      warmup_steps=warmup_steps)


def test_an_lr_written_into_a_group_is_adopted_and_the_schedule_continues_from_it():
    s = steplr_schedule()
    s.after_epoch(None)
    assert s.current() == approx([0.05, 0.5])
    assert not s.adopt(), "nothing written"
    s.optimizer.param_groups[1]["lr"] = 2.0  # a user callback: 4x the schedule for this group
    assert s.adopt()
    assert s.current() == approx([0.05, 2.0]) and s.group_factors == approx([1.0, 4.0])
    assert s.base == approx([0.05, 0.5]), "the scheduler's own value is untouched"
    assert not s.adopt(), "reported once"
    s.after_epoch(None)
    assert s.current() == approx([0.025, 1.0]), "StepLR halves the adopted value"
    s.scale(0.5)
    assert s.current() == approx([0.0125, 0.5]), "the manual factor composes with the group factor"


def test_a_write_is_never_overwritten_even_before_adopt_is_called():
    s = steplr_schedule()
    s.optimizer.param_groups[0]["lr"] = 0.3
    s.after_epoch(None)  # the scheduler steps first: the write is adopted, not lost
    assert s.current() == approx([0.15, 0.5])
    assert s.adopt(), "and adopt() still reports it"
    assert not s.adopt()
    s.optimizer.param_groups[0]["lr"] = 0.6
    s.scale(0.5)
    assert s.current() == approx([0.3, 0.25]) and s.adopt()


def test_a_tiny_difference_is_not_a_write():
    s = steplr_schedule()
    s.optimizer.param_groups[0]["lr"] *= 1 + 1e-15
    assert not s.adopt()


def test_a_write_during_warmup_keeps_its_ratio_to_the_schedule():
    s = steplr_schedule(warmup_steps=4)
    assert s.current() == approx([0.025, 0.25])
    s.optimizer.param_groups[0]["lr"] = 0.05  # 2x what the warm-up gives now
    assert s.adopt() and s.group_factors == approx([2.0, 1.0])
    s.after_step(1)
    assert s.current() == approx([0.1, 0.5])
    for done in (2, 3, 4):
        s.after_step(done)
    assert s.current() == approx([0.2, 1.0])


def test_a_write_over_a_zero_lr_goes_into_the_base():
    s = LrSchedule(two_groups(lr_a=0.0), None, "epoch", warmup_steps=0)
    s.optimizer.param_groups[0]["lr"] = 0.3
    assert s.adopt()
    assert s.base == approx([0.3, 1.0]) and s.group_factors == [1.0, 1.0] and s.current() == approx([0.3, 1.0])


def test_state_dict_keeps_the_group_factors_and_an_old_checkpoint_loads_with_ones():
    s = steplr_schedule()
    s.after_epoch(None)
    s.optimizer.param_groups[1]["lr"] = 2.0
    s.adopt()
    state = s.state_dict()
    assert state["group_factors"] == approx([1.0, 4.0])

    s2 = steplr_schedule()
    s2.optimizer.param_groups[1]["lr"] = 123.0  # whatever the optimizer holds before the first step
    s2.load_state_dict(state)
    assert not s2.adopt(), "nothing to adopt until the restored terms are applied"
    s2.before_step(0)
    assert s2.current() == approx([0.05, 2.0])
    s.after_epoch(None)
    s2.after_epoch(None)
    assert s2.current() == approx(s.current()) and s.current() == approx([0.025, 1.0])

    old = {k: v for k, v in state.items() if k != "group_factors"}
    s3 = steplr_schedule()
    s3.load_state_dict(old)
    s3.before_step(0)
    assert s3.group_factors == [1.0, 1.0] and s3.current() == approx([0.05, 0.5])
