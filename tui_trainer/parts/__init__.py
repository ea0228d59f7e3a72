"""Preset -> real objects. `check()` is cheap (names and kwargs); `build()` makes everything."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from tui_trainer.parts import target
from tui_trainer.parts.data import DataParts, make_loaders
from tui_trainer.parts.layers import LayerInfo, first_tensor, layer_rows
from tui_trainer.parts.loss import build_loss, check_loss
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

    @property
    def group_names(self) -> list[str]:
        return [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]


def check(preset: Preset) -> None:
    """Fail fast on names and kwargs before anything heavy (data, weights) is touched."""
    with _named_source(preset):
        _check(preset)


def _check(preset: Preset) -> None:
    check_arch(preset.model)
    check_optimizer(preset.optimizer)
    check_scheduler(preset.scheduler)
    check_loss(preset.loss)
    for i, cb in enumerate(preset.callbacks):
        cls = target.resolve(cb.target, f"callbacks[{i}].target")
        target.check_kwargs(cls, cb.kwargs, f"callbacks[{i}]", skip=("self",))
    resolve_device(preset.train.device)


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


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _try_loss(preset: Preset, model: nn.Module, loss_fn, data: DataParts, device: torch.device) -> None:
    """The loss on one sample (eval mode, no grad): a bad loss setting (label_smoothing = "x") or
    outputs that do not fit the targets fail here as a preset error, not at step 1 as a crash."""
    if data.sample_target is None:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss_fn(first_tensor(model(data.sample.to(device))), data.sample_target.to(device))
    except Exception as exc:  # noqa: BLE001
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PresetError(f"{preset.loss.name} failed on the model's output for one sample: {type(exc).__name__}:"
                          f" {text}; check [loss] and that the model's outputs fit the data", key="loss") from None
    finally:
        model.train(was_training)


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


def build(preset: Preset) -> Parts:
    with _named_source(preset):
        return _build(preset)


def _build(preset: Preset) -> Parts:
    _check(preset)
    device = resolve_device(preset.train.device)
    seed_everything(preset.seed, preset.train.deterministic)
    warnings: list[str] = []

    data = make_loaders(preset.data, preset.seed, device)
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
    layers = layer_rows(model, data.sample.to(device))

    optimizer = build_optimizer(preset.optimizer, model)
    steps_per_epoch = data.train_batches.batches_per_epoch
    total_steps = preset.train.epochs * steps_per_epoch
    if preset.train.max_steps:
        total_steps = min(total_steps, preset.train.max_steps)
    sched_cfg = preset.scheduler
    run_length = scheduler_run_length(sched_cfg, preset.train.epochs, total_steps)
    scheduler = build_scheduler(sched_cfg, optimizer, run_length)
    schedule = LrSchedule(optimizer, scheduler, sched_cfg.interval, sched_cfg.warmup_steps)
    group_names = [g["name"] for g in optimizer.param_groups]
    try:  # simulating the real scheduler over the run is where a bad kwarg type shows (step_size = "2")
        plan = plan_lr(preset.optimizer, sched_cfg, group_names, steps_per_epoch, total_steps, run_length=run_length)
    except PresetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the schedule's settings
        raise PresetError(f"{sched_cfg.name} failed while planning the LR: {type(exc).__name__}: {exc}",
                          key="scheduler") from None
    loss_fn = build_loss(preset.loss)
    _try_loss(preset, model, loss_fn, data, device)
    amp_dtype = resolve_amp(preset.train.amp, device)
    if amp_dtype is torch.float16 and isinstance(optimizer, torch.optim.LBFGS):
        raise PresetError("fp16 needs a GradScaler, which LBFGS cannot use; set amp = \"bf16\" or \"off\"",
                          key="train.amp")
    callbacks = []
    for i, cb in enumerate(preset.callbacks):
        cls = target.resolve(cb.target, f"callbacks[{i}].target")
        try:
            callbacks.append(cls(**cb.kwargs))
        except Exception as exc:
            raise PresetError(f"{cb.target}(...) failed: {type(exc).__name__}: {exc}", key=f"callbacks[{i}]") from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return Parts(preset, model, device, name, amp_dtype, data, optimizer, schedule, loss_fn, layers, plan,
                 steps_per_epoch, total_steps, built.weights_note, warnings, callbacks)
