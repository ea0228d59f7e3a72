"""Optimizer with per-layer param groups; scheduler with warm-up, a manual factor and per-group
factors; LR planning.

The LR group g trains with is  scheduler_lr_g(t) * warmup(step) * manual_factor * group_factor_g.
The scheduler only ever sees its own value (we put it back before each `scheduler.step()`), so a
manual change composes with every scheduler the same way - chainable ones (CosineAnnealingLR) and
closed-form ones (OneCycleLR) alike - and a resume restores all the terms. A group factor is an LR
someone else wrote into a param group (a user callback), adopted (`LrSchedule.adopt`).

The scheduler is a torch.optim.lr_scheduler class, a user's class, or a tutorial's function
`adjust_learning_rate(optimizer, epoch)` (`FunctionRule`); `lr_lambda` may be an arithmetic
expression of epoch or step (parts/lr_rules.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from tui_trainer.parts import target
from tui_trainer.parts.layers import matches
from tui_trainer.config import BUILTIN_MONITORS, OptimizerSection, SchedulerSection, resolve_mode
from tui_trainer.errors import PresetError, did_you_mean
from tui_trainer.parts.lr_rules import compile_rule, is_expression, variable_for

# --------------------------------------------------------------------------- optimizer


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if target.is_target(name):
        return target.resolve(name, "optimizer.name")
    names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
             and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"]
    if name not in names:
        raise PresetError(f'unknown optimizer "{name}"{did_you_mean(name, names)} (torch.optim has: {", ".join(names)})',
                          key="optimizer.name")
    return getattr(torch.optim, name)


def check_optimizer(cfg: OptimizerSection) -> type[torch.optim.Optimizer]:
    cls = optimizer_class(cfg.name)
    target.check_kwargs(cls, {"lr": cfg.lr, **cfg.kwargs}, "optimizer", skip=("params",))
    for i, group in enumerate(cfg.groups):
        target.check_kwargs(cls, group.kwargs, f"optimizer.groups[{i}]", skip=("params",), provided=_all_params(cls))
    if cls is torch.optim.LBFGS and cfg.groups:
        raise PresetError("LBFGS does not support per-layer param groups; remove [[optimizer.groups]]",
                          key="optimizer.groups")
    return cls


def _all_params(cls) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(cls).parameters)


def group_params(cfg: OptimizerSection, model: nn.Module) -> list[dict]:
    """Param groups: "default" (everything no group names) first, then one per [[optimizer.groups]]."""
    named = list(model.named_parameters())
    owner: dict[str, int] = {}
    for gi, group in enumerate(cfg.groups):
        for pi, prefix in enumerate(group.params):
            hits = [n for n, _ in named if matches(n, prefix)]
            if not hits:
                from tui_trainer.parts.model import check_prefixes

                check_prefixes(model, [prefix], f"optimizer.groups[{gi}].params")
            for n in hits:
                if n in owner and owner[n] != gi:
                    raise PresetError(
                        f'"{prefix}" overlaps optimizer.groups[{owner[n]}] (both hold {n}); a parameter can be in one group',
                        key=f"optimizer.groups[{gi}].params[{pi}]",
                    )
                owner[n] = gi
    groups = []
    rest = [p for n, p in named if n not in owner]
    if rest:
        groups.append({"params": rest, "name": "default"})
    for gi, group in enumerate(cfg.groups):
        params = [p for n, p in named if owner.get(n) == gi]
        groups.append({"params": params, "name": ",".join(group.params), **group.kwargs})
    return groups


def build_optimizer(cfg: OptimizerSection, model: nn.Module) -> torch.optim.Optimizer:
    cls = check_optimizer(cfg)
    # Every parameter, frozen or not, is in the optimizer from the start: freezing later is then
    # just requires_grad, and unfreezing needs no rebuild.
    groups = group_params(cfg, model)
    try:
        return cls(groups, lr=cfg.lr, **cfg.kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. IndexError for betas = [0.9]: a setting, not a bug
        raise PresetError(f"torch.optim.{cls.__name__} rejected the settings: {exc}", key="optimizer") from None


# --------------------------------------------------------------------------- scheduler

_CALLABLE_KWARGS = ("lr_lambda", "scale_fn")


def scheduler_class(name: str):
    """The scheduler class `name` names; or, for a "package.module:function" path, whatever it
    resolves to (a user's scheduler class, or a function rule: see `FunctionRule`)."""
    import torch.optim.lr_scheduler as S

    if target.is_target(name):
        obj = target.resolve(name, "scheduler.name")
        if not callable(obj):
            raise PresetError(f'"{name}" is a {type(obj).__name__}, not a scheduler class or a function'
                              " f(optimizer, epoch)", key="scheduler.name")
        return obj
    names = [n for n in dir(S) if isinstance(getattr(S, n), type) and not n.startswith("_")
             and issubclass(getattr(S, n), (S.LRScheduler, S.ReduceLROnPlateau)) and n != "LRScheduler"]
    if name not in names:
        raise PresetError(f'unknown scheduler "{name}"{did_you_mean(name, names)}'
                          f' (torch.optim.lr_scheduler has: {", ".join(names)}; or "none")', key="scheduler.name")
    return getattr(S, name)


def is_plateau(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau)


def is_function_rule(obj) -> bool:
    """A plain function named as the scheduler (`adjust_learning_rate(optimizer, epoch)`), not a class."""
    return callable(obj) and not isinstance(obj, type)


def _autofill(cls, kwargs: dict, run_length: int) -> dict:
    """Fill the run length a scheduler needs when the preset leaves it out."""
    import torch.optim.lr_scheduler as S

    kwargs = dict(kwargs)
    if cls is S.CosineAnnealingLR:
        kwargs.setdefault("T_max", max(1, run_length))
    if cls is S.OneCycleLR and "total_steps" not in kwargs and "epochs" not in kwargs:
        kwargs["total_steps"] = max(1, run_length)
    return kwargs


def plateau_mode(monitor: str, mode: str | None, goals: dict[str, str] | None = None) -> str:
    """ReduceLROnPlateau's mode: the monitor's direction (config.resolve_mode) when `mode` is left
    out or "auto"; a given mode that contradicts a known direction is an error."""
    wants = resolve_mode(monitor, "auto", goals)
    if mode is None or mode == "auto":
        return wants
    known = monitor in BUILTIN_MONITORS or bool(goals and monitor in goals)
    if known and mode != wants:
        raise PresetError(f'"{mode}" with monitor "{monitor}" would cut the LR when it improves;'
                          f' use mode = "{wants}" (or leave it out)', key="scheduler.mode")
    return mode


def check_scheduler(cfg: SchedulerSection, goals: dict[str, str] | None = None) -> None:
    """Names, kwargs, lr_lambda expressions and a function rule's signature, before anything is built.
    `goals`: Preset.goals (monitor -> "max"/"min"), for ReduceLROnPlateau's mode."""
    if cfg.name.lower() == "none":
        return
    cls = scheduler_class(cfg.name)
    if is_function_rule(cls):
        _check_function_rule(cls, cfg)
        return
    provided = ("T_max", "total_steps", "max_lr") if cls.__name__ in ("CosineAnnealingLR", "OneCycleLR") else ()
    _check_nested(cls, cfg.kwargs, "scheduler", cfg.interval, provided)
    if is_plateau(cls):
        if cfg.interval != "epoch":
            raise PresetError("ReduceLROnPlateau steps on a validation metric once an epoch; set interval = \"epoch\"",
                              key="scheduler.interval")
        plateau_mode(cfg.monitor, cfg.kwargs.get("mode"), goals)


def _check_nested(cls, kwargs: dict, section: str, interval: str, provided=()) -> None:
    target.check_kwargs(cls, kwargs, section, skip=("optimizer",), provided=provided)
    if "lr_lambda" in kwargs:
        _lr_rules(kwargs["lr_lambda"], interval, f"{section}.lr_lambda")
    for i, sub in enumerate(kwargs.get("schedulers", []) or []):
        if not isinstance(sub, dict) or "name" not in sub:
            raise PresetError('each entry is a table with a name, e.g. {name = "LinearLR", total_iters = 5}',
                              key=f"{section}.schedulers[{i}]")
        sub_cls = scheduler_class(sub["name"])
        if is_function_rule(sub_cls):
            raise PresetError(f'"{sub["name"]}" is a function; a function rule is the whole schedule'
                              " (scheduler.name), it cannot be one of schedulers", key=f"{section}.schedulers[{i}]")
        _check_nested(sub_cls, {k: v for k, v in sub.items() if k != "name"}, f"{section}.schedulers[{i}]", interval)


def _lr_rule(spec, interval: str, key: str):
    """One lr_lambda: an expression (lr_rules) or a "package.module:function" path."""
    if is_expression(spec):
        return compile_rule(spec, interval, key)
    if isinstance(spec, str):
        fn = target.resolve(spec, key)
        if not callable(fn):
            raise PresetError(f'"{spec}" is a {type(fn).__name__}, not a function', key=key)
        return fn
    raise PresetError(f'is {spec!r}; give an expression such as "0.95 ** {variable_for(interval)}",'
                      ' a list of them (one per param group), or "package.module:function"', key=key)


def _lr_rules(spec, interval: str, key: str, n_groups: int | None = None, group_names=()):
    """lr_lambda as LambdaLR takes it: one rule, or a list with one per param group (`n_groups`,
    known only once the optimizer is built)."""
    if not isinstance(spec, list):
        return _lr_rule(spec, interval, key)
    if n_groups is not None and len(spec) != n_groups:
        names = f" ({', '.join(group_names)})" if group_names else ""
        raise PresetError(f"has {len(spec)} {'entry' if len(spec) == 1 else 'entries'} but the optimizer has"
                          f" {n_groups} param group{'s' if n_groups != 1 else ''}{names}; give one per group,"
                          " or a single expression for all", key=key)
    return [_lr_rule(item, interval, f"{key}[{i}]") for i, item in enumerate(spec)]


def scheduler_run_length(cfg: SchedulerSection, epochs: int, total_steps: int) -> int:
    """The run length a scheduler is built for (what `T_max`, OneCycleLR's `total_steps` and the
    like are filled with), in `cfg.interval` units. The one place that says it: the real scheduler
    and the plan (`plan_lr`) both take it from here, so the plan shows what training does.

    Per epoch: `epochs` as configured (`train.epochs`), even when `train.max_steps` ends the run
    earlier - the schedule is the configured one, cut, not squeezed into the shorter run.
    Per step: the steps the run takes (`total_steps`, after `max_steps`) less the warm-up, during
    which the scheduler is not stepped.
    """
    if cfg.interval == "step":
        return max(1, total_steps - cfg.warmup_steps)
    return max(1, epochs)


def build_scheduler(cfg: SchedulerSection, optimizer, run_length: int, goals: dict[str, str] | None = None):
    """The real torch scheduler on `optimizer` (or a `FunctionRule`), or None.
    `run_length`: `scheduler_run_length`; `goals`: Preset.goals, for ReduceLROnPlateau's mode."""
    if cfg.name.lower() == "none":
        return None
    cls = scheduler_class(cfg.name)
    if is_function_rule(cls):
        _check_function_rule(cls, cfg)
        return FunctionRule(cls, optimizer, cfg.kwargs, name=cfg.name)
    kwargs = _autofill(cls, cfg.kwargs, run_length)
    if cls.__name__ == "OneCycleLR":
        kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
    if is_plateau(cls):
        kwargs["mode"] = plateau_mode(cfg.monitor, kwargs.get("mode"), goals)
    return _construct(cls, kwargs, optimizer, "scheduler", run_length, cfg.interval)


def _construct(cls, kwargs: dict, optimizer, section: str, run_length: int, interval: str):
    kwargs = dict(kwargs)
    if "lr_lambda" in kwargs:
        groups = optimizer.param_groups
        kwargs["lr_lambda"] = _lr_rules(kwargs["lr_lambda"], interval, f"{section}.lr_lambda", len(groups),
                                        [str(g.get("name", i)) for i, g in enumerate(groups)])
    for key in _CALLABLE_KWARGS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = target.resolve(kwargs[key], f"{section}.{key}")
    if "schedulers" in kwargs:
        kwargs["schedulers"] = [
            _construct(scheduler_class(s["name"]), _autofill(scheduler_class(s["name"]),
                       {k: v for k, v in s.items() if k != "name"}, run_length),
                       optimizer, f"{section}.schedulers[{i}]", run_length, interval)
            for i, s in enumerate(kwargs["schedulers"])
        ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()" noise from planning
            if cls.__name__ == "ChainedScheduler":
                return cls(kwargs.pop("schedulers"), optimizer=optimizer, **kwargs)
            return cls(optimizer, **kwargs)
    except PresetError:
        raise  # an lr_lambda expression that fails at the first value
    except Exception as exc:  # noqa: BLE001 - e.g. ZeroDivisionError for OneCycleLR div_factor = 0
        raise PresetError(f"{cls.__name__} rejected the settings: {exc}", key=section) from None


# --------------------------------------------------------------------------- function rules


def _check_function_rule(fn, cfg: SchedulerSection) -> None:
    import inspect

    label = getattr(fn, "__name__", cfg.name)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = None  # a builtin without a signature: the first call will say
    if params is not None:
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise PresetError(f'"{cfg.name}" is a function {label}({", ".join(p.name for p in params)}); a function'
                              " rule takes (optimizer, epoch) and sets each param_group[\"lr\"], or name an"
                              " LRScheduler class", key="scheduler.name")
        target.check_kwargs(fn, cfg.kwargs, "scheduler", skip=tuple(p.name for p in positional[:2]))
    if cfg.interval != "epoch":
        raise PresetError(f"{label}(optimizer, epoch) is called once an epoch; set interval = \"epoch\"",
                          key="scheduler.interval")


class FunctionRule:
    """A tutorial's `adjust_learning_rate(optimizer, epoch)` as a scheduler: called with epoch 0
    when built and with the 0-based epoch about to start at each `step()`. Whatever LR it sets is
    the scheduler's value (LrSchedule puts the scheduler's own value back before each step, so a
    rule that multiplies the current LR works too). Its state is the epoch counter only."""

    def __init__(self, fn, optimizer, kwargs: dict | None = None, *, name: str | None = None):
        self.fn, self.optimizer, self.kwargs = fn, optimizer, dict(kwargs or {})
        self.name = name or getattr(fn, "__name__", "rule")
        self.last_epoch = 0
        try:
            self._call(0)
        except PresetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's function: say what it raised, on one line
            label = getattr(fn, "__name__", self.name)
            raise PresetError(f"{label}(optimizer, 0) raised {type(exc).__name__}: {exc}",
                              key="scheduler.name") from None

    def _call(self, epoch: int) -> None:
        self.fn(self.optimizer, epoch, **self.kwargs)

    def step(self) -> None:
        self.last_epoch += 1
        self._call(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": int(self.last_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])


# --------------------------------------------------------------------------- LR over time


class LrSchedule:
    """Drives the real scheduler plus linear warm-up, the manual factor and per-group factors (see
    module doc): group g trains with  base_g * warmup * manual_factor * group_factors[g].

    `before_step(step)` sets the LR for that step (0-based); `after_step(done)` steps a
    per-step scheduler; `after_epoch(metric)` steps a per-epoch one (or ReduceLROnPlateau).
    `adopt()` takes an LR someone else wrote into a param group (a user callback) as that group's
    manual change; every other method adopts such a write first, so none is silently overwritten.
    """

    def __init__(self, optimizer, scheduler, interval: str, warmup_steps: int):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.per_step = interval == "step"
        self.warmup_steps = warmup_steps
        self.plateau = scheduler is not None and is_plateau(type(scheduler))
        self.manual_factor = 1.0
        self.base = [g["lr"] for g in optimizer.param_groups]  # what the scheduler last set
        self.group_factors = [1.0] * len(self.base)
        self._applied_warmup = -1.0
        self._applied: list[float] | None = None  # the LRs last written; None: not since a load
        self._adopted_unreported = False
        self.before_step(0)

    @property
    def needs_per_step(self) -> bool:
        return self.per_step or self.warmup_steps > 0

    def warmup(self, step: int) -> float:
        return (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0

    def before_step(self, step: int) -> None:
        w = self.warmup(step)
        if w != self._applied_warmup:
            self._adopt()
            self._apply(w)

    def _apply(self, warm: float) -> None:
        self._applied_warmup = warm
        applied = []
        for group, base, factor in zip(self.optimizer.param_groups, self.base, self.group_factors):
            group["lr"] = base * warm * self.manual_factor * factor
            applied.append(group["lr"])
        self._applied = applied

    def adopt(self) -> bool:
        """Take LRs written into param groups since the schedule last set them (a user callback's
        `param_group["lr"] = ...`) as per-group manual factors, so the schedule continues from them.
        True when something was adopted since the last call (here or inside another method)."""
        changed = self._adopt() or self._adopted_unreported
        self._adopted_unreported = False
        return changed

    def _adopt(self) -> bool:
        if self._applied is None:
            return False
        changed = False
        warm = self._applied_warmup if self._applied_warmup > 0 else 1.0
        for g, (group, applied) in enumerate(zip(self.optimizer.param_groups, self._applied)):
            lr = float(group["lr"])
            if math.isclose(lr, applied, rel_tol=1e-12, abs_tol=0.0):
                continue
            changed = True
            product = self.base[g] * warm * self.manual_factor
            if product != 0:
                self.group_factors[g] = lr / product
            else:  # nothing to scale: the written value becomes the scheduler's own
                denom = warm * self.manual_factor
                self.base[g] = lr / denom if denom else lr
                self.group_factors[g] = 1.0
        if changed:
            self._apply(self._applied_warmup)
            self._adopted_unreported = True
        return changed

    def _step_scheduler(self, *args) -> None:
        self._adopt()
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base  # the scheduler sees only its own value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.scheduler.step(*args)
        self.base = [g["lr"] for g in self.optimizer.param_groups]
        self._apply(self._applied_warmup)

    def after_step(self, done: int) -> None:
        if self.per_step and self.scheduler is not None and done > self.warmup_steps:
            self._step_scheduler()
        if self.warmup_steps:
            self.before_step(done)

    def after_epoch(self, metric: float | None) -> None:
        if self.per_step or self.scheduler is None:
            return
        if self.plateau:
            if metric is not None:
                self._step_scheduler(metric)
        else:
            self._step_scheduler()

    def scale(self, factor: float) -> None:
        self._adopt()
        self.manual_factor *= factor
        self._apply(self._applied_warmup)

    def current(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def plateau_status(self) -> tuple[int, int] | None:
        """(bad epochs, patience) of ReduceLROnPlateau, for the UI."""
        if not self.plateau:
            return None
        return int(self.scheduler.num_bad_epochs), int(self.scheduler.patience)

    def state_dict(self) -> dict:
        return {"manual_factor": self.manual_factor, "base": list(self.base),
                "group_factors": [float(f) for f in self.group_factors],
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.manual_factor = float(state["manual_factor"])
        self.base = [float(b) for b in state["base"]]
        factors = state.get("group_factors")  # a checkpoint from before group factors: 1.0 each
        self.group_factors = ([float(f) for f in factors] if factors is not None and len(factors) == len(self.base)
                              else [1.0] * len(self.base))
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._applied_warmup = -1.0
        self._applied = None  # the optimizer's LRs may be loaded before or after: nothing to adopt until applied
        self._adopted_unreported = False


@dataclass(frozen=True)
class LrPlan:
    """The planned LR of every group, sampled at `steps` (at most ~2k points over the run)."""

    groups: tuple[str, ...]
    steps: tuple[int, ...]
    lrs: tuple[tuple[float, ...], ...]  # lrs[g][i] at steps[i]
    total_steps: int
    adaptive: bool  # ReduceLROnPlateau: no future can be planned, only the current value
    note: str = ""  # why there is no plan when it is not ReduceLROnPlateau ("not plannable: ...")


def plan_lr(opt_cfg: OptimizerSection, sched_cfg: SchedulerSection, group_names: list[str],
            steps_per_epoch: int, total_steps: int, max_points: int = 2000, *,
            run_length: int | None = None, goals: dict[str, str] | None = None) -> LrPlan:
    """Simulate the real scheduler class on a throw-away optimizer for every step of the run.

    `run_length`: the one the real scheduler was built with (`scheduler_run_length`); left out,
    that of a run whose `total_steps` are all its configured epochs (no `max_steps` cut).
    `goals`: Preset.goals, as given to `build_scheduler`.
    `lrs[g][i]` is the LR group g trains step `steps[i]` with (step 0: the first step's)."""
    cls = optimizer_class(opt_cfg.name)
    groups = []
    kwargs_by_name = {",".join(g.params): g.kwargs for g in opt_cfg.groups}
    for name in group_names:
        groups.append({"params": [nn.Parameter(torch.zeros(1, 1))], "name": name, **kwargs_by_name.get(name, {})})
    try:
        dummy = cls(groups, lr=opt_cfg.lr, **opt_cfg.kwargs)
    except Exception:  # an optimizer that insists on real params: its LRs are all the plan needs
        dummy = torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=0.9)
    if run_length is None:
        run_length = scheduler_run_length(sched_cfg, -(-total_steps // steps_per_epoch), total_steps)
    schedule = LrSchedule(dummy, build_scheduler(sched_cfg, dummy, run_length, goals), sched_cfg.interval,
                          sched_cfg.warmup_steps)
    return simulate_plan(schedule, group_names, steps_per_epoch, total_steps, max_points)


def simulate_plan(schedule: LrSchedule, group_names: list[str], steps_per_epoch: int, total_steps: int,
                  max_points: int = 2000) -> LrPlan:
    """Step a throw-away `schedule` as the trainer steps the real one, for the whole run: the LR
    of every group at (at most ~max_points) steps. plan_lr and parts/objects.plan_objects use it."""
    stride = max(1, total_steps // max_points)
    steps, values = [], []
    for step in range(total_steps):
        schedule.before_step(step)
        if step % stride == 0 or step == total_steps - 1:
            steps.append(step)
            values.append(schedule.current())
        if schedule.needs_per_step:
            schedule.after_step(step + 1)
        if (step + 1) % steps_per_epoch == 0:
            schedule.after_epoch(None)
    lrs = tuple(tuple(v[g] for v in values) for g in range(len(group_names)))
    return LrPlan(tuple(group_names), tuple(steps), lrs, total_steps, schedule.plateau)
