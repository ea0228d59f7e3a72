"""Preset -> real objects. `check()` is cheap (names and kwargs); `build()` makes everything."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from tui_trainer.parts import target
from tui_trainer.parts.callbacks import build_callbacks
from tui_trainer.parts.step import dry_runs, resolve_step
from tui_trainer.parts.data import DataParts, check_data, make_loaders
from tui_trainer.parts.layers import LayerInfo, layer_rows
from tui_trainer.parts.loss import build_loss, check_loss
from tui_trainer.parts.metrics import MetricSet, build_metrics, check_metrics
from tui_trainer.parts.model import build_model, check_arch
from tui_trainer.parts.optim import (
    LrPlan,
    LrSchedule,
    build_optimizer,
    build_scheduler,
    check_optimizer,
    check_scheduler,
    plan_lr,
    scheduler_run_length,
)
from tui_trainer.config import Preset
from tui_trainer.errors import PresetError, UserError


@dataclass
class Parts:
    """Everything the engine needs, built and checked."""

    preset: Preset
    model: nn.Module
    device: torch.device
    device_name: str
    amp_dtype: torch.dtype | None
    data: DataParts
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    loss_fn: object
    layers: tuple[LayerInfo, ...]
    plan: LrPlan
    steps_per_epoch: int
    total_steps: int
    weights_note: str
    warnings: list[str] = field(default_factory=list)
    callbacks: list[object] = field(default_factory=list)
    step_fn: object = None  # fn(model, batch, loss_fn): parts/step.py default_step, or [step] fn
    metrics: MetricSet | None = None  # [[metrics]], evaluated at each epoch end
    goals: dict[str, str] = field(default_factory=dict)  # monitor -> "max"/"min" of the metrics

    @property
    def group_names(self) -> list[str]:
        return [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]


def check(preset: Preset) -> None:
    """Fail fast on names and kwargs before anything heavy (data, weights) is touched."""
    with _named_source(preset):
        _check(preset)


def _check(preset: Preset) -> dict[str, str]:
    """Returns the metrics' goals (monitor -> "max"/"min")."""
    check_arch(preset.model)
    check_data(preset.data)
    check_optimizer(preset.optimizer)
    check_scheduler(preset.scheduler, preset.goals)
    check_loss(preset.loss)
    resolve_step(preset.step)
    for i, cb in enumerate(preset.callbacks):
        cls = target.resolve(cb.target, f"callbacks[{i}].target")
        target.check_kwargs(cls, cb.kwargs, f"callbacks[{i}]", skip=("self",))
    goals = {**preset.goals, **check_metrics(preset.metrics)}
    _require_goals(preset, goals, known_later=True)
    if preset.train.accumulate > 1 and preset.optimizer.name == "LBFGS":
        raise PresetError("LBFGS evaluates its closure many times per step; it cannot accumulate batches:"
                          " set accumulate = 1", key="train.accumulate")
    device = resolve_device(preset.train.device)
    if preset.train.sync_bn and device.type != "cuda":
        raise PresetError("SyncBatchNorm works on CUDA only; set it to false here (each rank then keeps its own"
                          " BatchNorm statistics)", key="train.sync_bn")
    return goals


def _require_goals(preset: Preset, goals: dict[str, str], known_later: bool = False) -> None:
    """A monitored metric needs a direction (max or min) unless the section says its mode.
    `known_later`: torchmetrics task wrappers (F1Score(task=...)) say theirs only once built."""
    used = {"checkpoint": preset.checkpoint.mode == "auto",
            "early_stopping": preset.early_stopping.enabled and preset.early_stopping.mode == "auto",
            "scheduler": "Plateau" in preset.scheduler.name and preset.scheduler.kwargs.get("mode", "auto") == "auto"}
    for section in (s for s, needs in used.items() if needs):
        cfg = getattr(preset, section)
        metric = next((m for m in preset.metrics if f"val_{m.key}" == cfg.monitor), None)
        if metric is None or cfg.monitor in goals or (known_later and metric.name.startswith("torchmetrics:")):
            continue
        raise PresetError(f'{cfg.monitor} comes from {metric.name}, whose direction is unknown; say which way'
                          ' is better: mode = "max" or "min" in its [[metrics]] entry', key=f"{section}.monitor")


def resolve_device(name: str) -> torch.device:
    key = "train.device"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PresetError(f'"{name}" is not a device; use "auto", "cpu", "cuda" or "cuda:1"', key=key) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PresetError(f'"{name}" asked for, but CUDA is not available here; use "auto" or "cpu"', key=key)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PresetError(f'"{name}": this machine has {torch.cuda.device_count()} CUDA device(s)', key=key)
    return device


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS says; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_label(device: torch.device) -> str:
    """The device as the header and the start line name it: the GPU's own name; on CPU how many threads
    torch computes with (its speed there; a rank started by our launcher gets the cores shared out)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu, {n} thread{'' if n == 1 else 's'}"
    return device.type


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def _named_source(preset: Preset):
    """Builders name only the key; the error learns here whether the file or a --set gave it."""
    try:
        yield
    except UserError as err:
        if err.key and not err.source:
            err.source = preset.key_source(err.key)
        raise


def build(preset: Preset, *, rank: int = 0, world: int = 1, local_rank: int = 0) -> Parts:
    """`rank`/`world`: this process's place in a distributed run (its shard of the batches, and on
    CUDA the GPU `local_rank`)."""
    with _named_source(preset):
        return _build(preset, rank, world, local_rank)


def device_type(preset: Preset) -> str:
    """"cuda", "mps" or "cpu": what `train.device` resolves to (which backend the ranks join)."""
    return resolve_device(preset.train.device).type


def _build(preset: Preset, rank: int = 0, world: int = 1, local_rank: int = 0) -> Parts:
    goals = _check(preset)
    device = resolve_device(preset.train.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # one GPU per rank
        torch.cuda.set_device(device)
    seed_everything(preset.seed, preset.train.deterministic)
    warnings: list[str] = []
    if world > 1 and device.type == "cpu":
        here, cores = int(os.environ.get("LOCAL_WORLD_SIZE", world)), usable_cores()
        if here > cores:
            warnings.append(f"{here} CPU ranks share {cores} core{'' if cores == 1 else 's'} here: each waits for"
                            f" the others; {cores} (train.devices, or torchrun's --nproc-per-node) train faster")

    data = make_loaders(preset.data, preset.seed, device, accumulate=preset.train.accumulate, rank=rank, world=world)
    model_cfg = preset.model
    if data.num_classes and model_cfg.num_classes and model_cfg.num_classes != data.num_classes:
        raise PresetError(
            f"is {model_cfg.num_classes} but the data has {data.num_classes} classes; set it to"
            f" {data.num_classes} or remove it", key="model.num_classes")
    if model_cfg.num_classes is None and data.num_classes and not target.is_target(model_cfg.arch):
        model_cfg = model_cfg.model_copy(update={"num_classes": data.num_classes})
    built = build_model(model_cfg)
    warnings += built.warnings
    model = built.model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        key = "model.freeze" if preset.model.freeze else "model.arch"
        raise PresetError("nothing is trainable: every parameter is frozen (freeze = [\"\"] freezes a new head"
                          " too); use model.freeze_backbone = true to train only the head", key=key)

    loss_fn = build_loss(preset.loss)
    step_fn = resolve_step(preset.step)
    metrics = build_metrics(preset.metrics, device, data.num_classes) if preset.metrics else None
    if metrics is not None:
        goals = {**goals, **metrics.goals}
        _require_goals(preset, goals)
    # the step, the model, the loss and the metrics, once on a real batch: bad input fails here
    shapes = dry_runs(preset, model, step_fn, loss_fn, data, device, metrics)
    layers = layer_rows(model, shapes=shapes)

    optimizer = build_optimizer(preset.optimizer, model)
    steps_per_epoch = data.train_batches.steps_per_epoch  # optimizer steps (train.accumulate batches each)
    total_steps = preset.train.epochs * steps_per_epoch
    if preset.train.max_steps:
        total_steps = min(total_steps, preset.train.max_steps)
    sched_cfg = preset.scheduler
    run_length = scheduler_run_length(sched_cfg, preset.train.epochs, total_steps)
    scheduler = build_scheduler(sched_cfg, optimizer, run_length, goals=goals)
    schedule = LrSchedule(optimizer, scheduler, sched_cfg.interval, sched_cfg.warmup_steps)
    group_names = [g["name"] for g in optimizer.param_groups]
    try:  # simulating the real scheduler over the run is where a bad kwarg type shows (step_size = "2")
        plan = plan_lr(preset.optimizer, sched_cfg, group_names, steps_per_epoch, total_steps, run_length=run_length,
                       goals=goals)
    except PresetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the schedule's settings
        raise PresetError(f"{sched_cfg.name} failed while planning the LR: {type(exc).__name__}: {exc}",
                          key="scheduler") from None
    amp_dtype = resolve_amp(preset.train.amp, device)
    if amp_dtype is torch.float16 and isinstance(optimizer, torch.optim.LBFGS):
        raise PresetError("fp16 needs a GradScaler, which LBFGS cannot use; set amp = \"bf16\" or \"off\"",
                          key="train.amp")
    callbacks = build_callbacks(preset)
    return Parts(preset, model, device, device_label(device), amp_dtype, data, optimizer, schedule, loss_fn, layers,
                 plan, steps_per_epoch, total_steps, built.weights_note, warnings, callbacks, step_fn, metrics, goals)
