"""The scheduler forms tutorials use: `lr_lambda` as an arithmetic expression (tui_trainer/parts/
lr_rules.py: a restricted AST walker, never eval), a list of them per param group, and a function
rule `adjust_learning_rate(optimizer, epoch)` named as the scheduler (optim.FunctionRule)."""

from __future__ import annotations

import ast
import builtins
import io
import math
import types

import pytest
import torch
from torch import nn

from tui_trainer.config import OptimizerSection, ParamGroup, SchedulerSection
from tui_trainer.errors import PresetError
from tui_trainer.parts.lr_rules import compile_rule, is_expression
from tui_trainer.parts.optim import FunctionRule, LrSchedule, build_scheduler, check_scheduler, plan_lr

HERE = "tests.unit.test_lr_rules"


def approx(values):
    return pytest.approx(values, rel=1e-12)


def sgd(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr, "name": f"g{i}"} for i, lr in enumerate(lrs)]
    return torch.optim.SGD(groups, lr=lrs[0])


def per_epoch(sched: SchedulerSection, epochs: int, opt: OptimizerSection | None = None, groups=("default",)):
    """The LR of each group per epoch, from the plan (one step an epoch)."""
    p = plan_lr(opt or OptimizerSection(name="SGD", lr=0.1), sched, list(groups), steps_per_epoch=1,
                total_steps=epochs)
    return [list(lrs) for lrs in p.lrs]


def error(fn, *args, **kwargs) -> PresetError:
    with pytest.raises(PresetError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------- expressions

HELP = ("an lr_lambda expression may use epoch (the scheduler steps per epoch), numbers, + - * / ** and min, max,"
        " math functions")


@pytest.mark.parametrize(("text", "interval", "want"), [
    ("0.95 ** epoch", "epoch", lambda n: 0.95 ** n),
    ("min(1.0, (step + 1) / 100)", "step", lambda n: min(1.0, (n + 1) / 100)),
    ("0.5 * (1 + math.cos(math.pi * epoch / 10))", "epoch", lambda n: 0.5 * (1 + math.cos(math.pi * n / 10))),
    ("0.5 * (1 + cos(pi * epoch / 10))", "epoch", lambda n: 0.5 * (1 + math.cos(math.pi * n / 10))),
    ("1.0 if epoch < 3 else 0.1", "epoch", lambda n: 1.0 if n < 3 else 0.1),
    ("0.1 ** (epoch // 2) * abs(-1) + 0 * (epoch % 3)", "epoch", lambda n: 0.1 ** (n // 2)),
    ("max(0.01, 1 - step / 4) * -(-1) * +1", "step", lambda n: max(0.01, 1 - n / 4)),
    ("math.exp(-0.1 * epoch) * (0 < epoch + 1 <= 100)", "epoch", lambda n: math.exp(-0.1 * n)),
    ("e ** (-epoch) + math.e * 0", "epoch", lambda n: math.e ** -n),
    ("  0.9 ** epoch\n", "epoch", lambda n: 0.9 ** n),
])
def test_an_expression_is_a_function_of_the_schedulers_counter(text, interval, want):
    rule = compile_rule(text, interval)
    assert [rule(n) for n in range(12)] == approx([want(n) for n in range(12)])
    assert all(type(rule(n)) is float for n in range(3))


def test_the_rule_is_a_plain_function_so_checkpoints_hold_no_tree():
    rule = compile_rule("0.95 ** epoch", "epoch")
    assert isinstance(rule, types.FunctionType)
    opt = sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rule)
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None], "LambdaLR keeps the __dict__ of callables that are not functions"
    buffer = io.BytesIO()
    torch.save({"scheduler": state}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["scheduler"]["lr_lambdas"] == [None]


def test_the_users_text_is_only_parsed_never_compiled_or_evaluated(monkeypatch):
    calls = []
    real_compile = builtins.compile

    def only_to_a_tree(source, filename, mode, flags=0, *args, **kwargs):
        calls.append(flags)
        assert flags & ast.PyCF_ONLY_AST, "compiled to code"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "compile", only_to_a_tree)
    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    rule = compile_rule("0.5 * (1 + math.cos(math.pi * epoch / 10))", "epoch")
    assert rule(10) == pytest.approx(0.0, abs=1e-15)
    assert calls, "ast.parse went through compile(..., PyCF_ONLY_AST)"


def test_unknown_name_says_what_an_expression_may_use():
    err = error(compile_rule, "0.95 ** epoch + x", "epoch")
    assert err.key == "scheduler.lr_lambda"
    assert str(err) == f'scheduler.lr_lambda: "0.95 ** epoch + x": unknown name "x"; {HELP}'


def test_the_variable_follows_the_interval():
    err = error(compile_rule, "0.95 ** step", "epoch")
    assert err.message == '"0.95 ** step": uses step but scheduler.interval = "epoch"; use epoch'
    err = error(compile_rule, "0.95 ** epoch", "step")
    assert err.message.startswith('"0.95 ** epoch": uses epoch but scheduler.interval = "step"; use step')
    assert 'or set interval = "epoch"' in err.message


def test_a_syntax_error_gives_its_column():
    err = error(compile_rule, "0.95 ** (epoch", "epoch")
    assert err.key == "scheduler.lr_lambda"
    assert err.message.startswith('"0.95 ** (epoch": syntax error at column 9:'), err.message
    assert error(compile_rule, "   ", "epoch").message.startswith("is empty")


def test_division_by_zero_at_the_first_value_is_reported_when_compiled():
    err = error(compile_rule, "1 / epoch", "epoch")
    assert err.message == '"1 / epoch" divides by zero at epoch = 0; e.g. write (epoch + 1)'


def test_a_value_that_fails_later_names_the_epoch():
    rule = compile_rule("1 / (3 - epoch)", "epoch")
    assert rule(2) == 1.0
    err = error(rule, 3)
    assert err.key == "scheduler.lr_lambda" and "at epoch = 3" in err.message
    err = error(compile_rule("math.sqrt(2 - epoch)", "epoch"), 3)
    assert err.message == '"math.sqrt(2 - epoch)" at epoch = 3: ValueError: math domain error'


@pytest.mark.parametrize(("text", "says"), [
    ("__import__('os').system('true')", "only math.<name> may be written with a dot"),
    ("__import__('os')", 'unknown name "__import__"'),
    ("os.system('true')", "only math.<name> may be written with a dot"),
    ("epoch.__class__", "only math.<name> may be written with a dot"),
    ("math.pi.real", "only math.<name> may be written with a dot"),
    ("(lambda: 1)()", "only min, max, abs and math functions can be called"),
    ("[1, 2][epoch]", "(indexing) is not allowed"),
    ("'0.9' * epoch", "(a string) is not allowed"),
    ("max(epoch, key=abs)", "(keyword arguments) is not allowed"),
    ("epoch << 1", "(<<) is not allowed"),
    ("0.9 if epoch in [1] else 1", "(in) is not allowed"),
    ("(x := 1)", "(an assignment) is not allowed"),
    ("print(epoch)", 'unknown name "print"'),
    ("cs(epoch)", 'unknown name "cs"; did you mean "cos"?'),
    ("math.cosine(epoch)", 'unknown name "math.cosine"'),
    ("cos", "cos is a function; call it, e.g. cos(epoch)"),
    ("math", 'unknown name "math"'),
    ("(-1) ** 0.5", "ValueError: math domain error"),  # no complex numbers
    ("10 ** 10 ** 10", "OverflowError"),  # a float power: no giant integer to compute
    ("math.inf * 0 + epoch", "not a finite number"),
])
def test_anything_else_is_refused_with_one_line(text, says):
    err = error(compile_rule, text, "epoch")
    assert err.key == "scheduler.lr_lambda"
    assert says in err.message and "\n" not in str(err), err.message


def test_a_path_stays_a_function_path():
    assert not is_expression("mypkg.train:warmup_lambda")
    assert is_expression("0.95 ** epoch") and is_expression("1 if epoch < 3 else 0.1")
    assert is_expression("a if b else c:d"), "has spaces: an expression (which then fails), not a path"


# --------------------------------------------------------------------------- through the scheduler


def lambda_rule(epoch: int) -> float:  # named by path in tests
    return 0.5 ** epoch


def test_check_scheduler_checks_the_expression_cheaply():
    check_scheduler(SchedulerSection(name="LambdaLR", lr_lambda="0.95 ** epoch"))
    err = error(check_scheduler, SchedulerSection(name="LambdaLR", lr_lambda="0.95 ** epoch + x"))
    assert err.key == "scheduler.lr_lambda" and 'unknown name "x"' in err.message
    err = error(check_scheduler, SchedulerSection(name="LambdaLR", interval="step", lr_lambda="0.9 ** epoch"))
    assert err.key == "scheduler.lr_lambda" and "uses epoch" in err.message
    err = error(check_scheduler, SchedulerSection(name="LambdaLR", lr_lambda=["0.9 ** epoch", "1 / epoch"]))
    assert err.key == "scheduler.lr_lambda[1]" and "divides by zero" in err.message
    err = error(check_scheduler, SchedulerSection(name="LambdaLR", lr_lambda=0.95))
    assert err.key == "scheduler.lr_lambda" and '"0.95 ** epoch"' in err.message
    err = error(check_scheduler, SchedulerSection(name="SequentialLR", milestones=[1], schedulers=[
        {"name": "LambdaLR", "lr_lambda": "1 + y"}, {"name": "StepLR", "step_size": 1}]))
    assert err.key == "scheduler.schedulers[0].lr_lambda"


def test_lambdalr_expression_per_epoch_and_per_step():
    assert per_epoch(SchedulerSection(name="LambdaLR", lr_lambda="0.5 ** epoch"), 4)[0] == \
        approx([0.1, 0.05, 0.025, 0.0125])
    p = plan_lr(OptimizerSection(name="SGD", lr=0.1),
                SchedulerSection(name="LambdaLR", interval="step", warmup_steps=2, lr_lambda="1 / (step + 1)"),
                ["default"], steps_per_epoch=3, total_steps=6)
    # warm-up 1/2, 2/2 at the scheduler's value for its step 0; then its own steps 1, 2, 3, ...
    assert p.lrs[0] == approx([0.05, 0.1, 0.1, 0.05, 0.1 / 3, 0.025])


def test_multiplicative_expression():
    assert per_epoch(SchedulerSection(name="MultiplicativeLR", lr_lambda="0.5 if epoch % 2 else 1.0"), 5)[0] == \
        approx([0.1, 0.05, 0.05, 0.025, 0.025])


def test_a_function_path_still_works_alone_and_in_a_list():
    sched = SchedulerSection(name="LambdaLR", lr_lambda=f"{HERE}:lambda_rule")
    check_scheduler(sched)
    assert per_epoch(sched, 3)[0] == approx([0.1, 0.05, 0.025])
    opt = OptimizerSection(name="SGD", lr=0.1, groups=[ParamGroup(params=["head"], lr=1.0)])
    sched = SchedulerSection(name="LambdaLR", lr_lambda=[f"{HERE}:lambda_rule", "1 + epoch"])
    check_scheduler(sched)
    lrs = per_epoch(sched, 3, opt, groups=("default", "head"))
    assert lrs[0] == approx([0.1, 0.05, 0.025]) and lrs[1] == approx([1.0, 2.0, 3.0])


def test_a_list_needs_one_entry_per_param_group():
    sched = SchedulerSection(name="LambdaLR", lr_lambda=["0.9 ** epoch"] * 3)
    check_scheduler(sched)  # the number of groups is not known before the optimizer is built
    err = error(build_scheduler, sched, sgd(0.1, 1.0), 5)
    assert err.key == "scheduler.lr_lambda"
    assert "3 entries" in err.message and "2 param groups (g0, g1)" in err.message


def test_an_expression_inside_sequential_lr():
    sched = SchedulerSection(name="SequentialLR", milestones=[2], schedulers=[
        {"name": "LambdaLR", "lr_lambda": "(epoch + 1) / 2"}, {"name": "StepLR", "step_size": 1, "gamma": 0.5}])
    check_scheduler(sched)
    assert per_epoch(sched, 4)[0] == approx([0.05, 0.1, 0.1, 0.05])


def test_lambdalr_state_with_an_expression_survives_weights_only_load():
    opt = sgd(0.1)
    sched = build_scheduler(SchedulerSection(name="LambdaLR", lr_lambda="0.5 ** epoch"), opt, 5)
    s = LrSchedule(opt, sched, "epoch", 0)
    s.after_epoch(None)
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = sgd(0.1)
    s2 = LrSchedule(opt2, build_scheduler(SchedulerSection(name="LambdaLR", lr_lambda="0.5 ** epoch"), opt2, 5),
                    "epoch", 0)
    s2.load_state_dict(state)
    s2.before_step(0)
    s.after_epoch(None)
    s2.after_epoch(None)
    assert s2.current() == approx(s.current()) and s.current() == approx([0.025])


# --------------------------------------------------------------------------- function rules


def adjust_learning_rate(optimizer, epoch):
    """The PyTorch ImageNet example's rule: decay by 10 every 2 epochs (30 there)."""
    lr = 0.05 * (0.1 ** (epoch // 2))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr


def decay_in_place(optimizer, epoch, milestones=(2,), gamma=0.1):
    """A rule that multiplies whatever LR the groups have."""
    if epoch in milestones:
        for group in optimizer.param_groups:
            group["lr"] *= gamma


def rule_with_settings(optimizer, epoch, lr0, every=2):
    for group in optimizer.param_groups:
        group["lr"] = lr0 * 0.5 ** (epoch // every)


def rule_that_fails(optimizer, epoch):
    raise KeyError("lr_schedule")


def not_a_rule(optimizer):
    return None


def test_a_function_rule_sets_the_lr_per_epoch_and_the_plan_shows_it():
    sched = SchedulerSection(name=f"{HERE}:adjust_learning_rate")
    check_scheduler(sched)
    scheduler = build_scheduler(sched, sgd(0.3), 5)
    assert isinstance(scheduler, FunctionRule)
    assert per_epoch(sched, 5)[0] == approx([0.05, 0.05, 0.005, 0.005, 0.0005]), "called with epoch 0 when built"


def test_a_relative_rule_sees_the_schedulers_own_value_and_composes_with_scale():
    opt = OptimizerSection(name="SGD", lr=0.1, groups=[ParamGroup(params=["head"], lr=1.0)])
    sched = SchedulerSection(name=f"{HERE}:decay_in_place", milestones=[1, 3], gamma=0.5)
    lrs = per_epoch(sched, 4, opt, groups=("default", "head"))
    assert lrs[0] == approx([0.1, 0.05, 0.05, 0.025]) and lrs[1] == approx([1.0, 0.5, 0.5, 0.25])
    o = sgd(0.1)
    s = LrSchedule(o, build_scheduler(sched, o, 4), "epoch", 0)
    s.scale(0.1)
    s.after_epoch(None)
    assert s.current() == approx([0.005]), "the rule halved 0.1, not the scaled 0.01"


def test_a_function_rule_takes_its_settings_from_the_scheduler_section():
    sched = SchedulerSection(name=f"{HERE}:rule_with_settings", lr0=0.2, every=1)
    check_scheduler(sched)
    assert per_epoch(sched, 3)[0] == approx([0.2, 0.1, 0.05])
    err = error(check_scheduler, SchedulerSection(name=f"{HERE}:rule_with_settings"))
    assert err.key == "scheduler.lr0" and "needs lr0" in err.message
    err = error(check_scheduler, SchedulerSection(name=f"{HERE}:rule_with_settings", lr0=0.1, gama=0.1))
    assert err.key == "scheduler.gama"


def test_a_function_rule_is_per_epoch_only():
    err = error(check_scheduler, SchedulerSection(name=f"{HERE}:adjust_learning_rate", interval="step"))
    assert err.key == "scheduler.interval" and 'set interval = "epoch"' in err.message
    err = error(build_scheduler, SchedulerSection(name=f"{HERE}:adjust_learning_rate", interval="step"), sgd(0.1), 3)
    assert err.key == "scheduler.interval"


def test_a_function_rule_that_raises_when_built_is_a_preset_error():
    err = error(build_scheduler, SchedulerSection(name=f"{HERE}:rule_that_fails"), sgd(0.1), 3)
    assert err.key == "scheduler.name"
    assert err.message == "rule_that_fails(optimizer, 0) raised KeyError: 'lr_schedule'"


def test_a_function_that_is_not_a_rule_says_what_a_rule_is():
    err = error(check_scheduler, SchedulerSection(name=f"{HERE}:not_a_rule"))
    assert err.key == "scheduler.name" and "takes (optimizer, epoch)" in err.message
    err = error(check_scheduler, SchedulerSection(name="SequentialLR", milestones=[1], schedulers=[
        {"name": f"{HERE}:adjust_learning_rate"}, {"name": "StepLR", "step_size": 1}]))
    assert err.key == "scheduler.schedulers[0]"


def test_a_function_rule_resumes_its_epoch_counter():
    def make():
        o = sgd(0.3)
        return LrSchedule(o, build_scheduler(SchedulerSection(name=f"{HERE}:adjust_learning_rate"), o, 6), "epoch", 0)

    s = make()
    for _ in range(3):
        s.after_epoch(None)
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["scheduler"] == {"last_epoch": 3}
    s2 = make()
    s2.load_state_dict(state)
    s2.before_step(0)
    assert s2.current() == approx(s.current()) and s.current() == approx([0.005])
    s.after_epoch(None)
    s2.after_epoch(None)
    assert s2.current() == approx(s.current()) and s.current() == approx([0.0005]), "epoch 4: 4 // 2 = 2 decays"


# --------------------------------------------------------------------------- real runs


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("scheduler", "per_epoch_lr"), [
    (f'name = "{HERE}:adjust_learning_rate"', [0.05, 0.05, 0.005]),
    ('name = "LambdaLR"\nlr_lambda = "0.5 ** epoch"', [0.05, 0.025, 0.0125]),
])
def test_a_run_trains_with_the_lr_the_rule_says(scheduler, per_epoch_lr, tiny_preset):
    from tests.helpers.engine import record_lrs, run
    from tui_trainer.engine.events import RunStarted

    seen = {}

    def callbacks(session):
        seen["lrs"] = record_lrs(session.trainer.optimizer)
        return []

    out = run(tiny_preset(f"[scheduler]\n{scheduler}\n"), "train.epochs=3", "checkpoint.every_epochs=0",
              callbacks=callbacks)
    assert out.final.status == "completed", out.final
    steps = 7  # the tiny preset's steps per epoch
    used = [row[0] for row in seen["lrs"]]
    assert used == approx([lr for lr in per_epoch_lr for _ in range(steps)])
    plan = out.of(RunStarted)[0].plan
    assert list(plan.lrs[0]) == approx(used), "the plan shows it too"
