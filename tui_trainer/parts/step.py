"""One batch: moving it to the device, the step that turns it into a loss (the default classifier
step or the user's `[step] fn`), what a step returns, and the dry run that checks all of it on a
real batch before the first step (`dry_run`). The engine's trainer does the rest of a step
(autocast, accumulation, backward, clipping, the optimizer); this lives in `parts` because the
start-up check, which is part of building a run, calls the same step the trainer will.

A step is `fn(model, batch, loss_fn) -> loss`, or a dict with "loss" and, for the metrics,
"outputs" and "targets". The trainer calls it under autocast and does the backward pass, the
accumulation, clipping and the optimizer step itself, so that every command, the non-finite guard,
AMP and checkpoints treat a user's step exactly like the default one. Validation calls the same
step under `torch.no_grad()` in eval mode and hands "outputs"/"targets" to the metrics.

The default step is what tui-trainer always did: `loss_fn(first_tensor(model(x)), y)` on an
(input, target) batch. `first_tensor` takes a model's tensor out of a dict (torchvision
segmentation models return {"out": ...}), a named tuple's `.logits`, or a tuple's first item.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tui_trainer.config import StepSection
from tui_trainer.errors import PresetError
from tui_trainer.parts import target
from tui_trainer.parts.batches import describe_structure as describe
from tui_trainer.parts.layers import first_tensor, recording_shapes

if TYPE_CHECKING:
    from tui_trainer.config import Preset
    from tui_trainer.parts.metrics import MetricSet

Step = Callable[[torch.nn.Module, Any, Any], Any]


def default_step(model: torch.nn.Module, batch, loss_fn) -> dict[str, torch.Tensor]:
    """The classifier step: `batch` is (input, target)."""
    x, y = batch
    out = first_tensor(model(x))
    return {"loss": loss_fn(out, y), "outputs": out, "targets": y}


def loss_of(result) -> torch.Tensor:
    """The loss of a step's result: the result itself, or its "loss" (checked at start-up)."""
    return result["loss"] if type(result) is dict else result


def to_device(batch, device: torch.device, non_blocking: bool = True):
    """A batch of any structure on `device`: tensors inside tuples, lists, named tuples and dicts
    (nested) are moved; anything else (strings, ids) is passed through. `non_blocking` overlaps the
    copy with compute when the loader pinned the memory (it does on CUDA)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if type(batch) is tuple or type(batch) is list:  # the common case first: (x, y)
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    if isinstance(batch, dict):
        try:
            return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})
        except TypeError:  # a mapping type that cannot be built from a dict
            return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def batch_size_of(batch) -> int:
    """The number of samples in a batch: the first dimension of its first tensor (host-side shape,
    no device read). 1 when there is no tensor with a dimension."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        n = batch_size_of(value)
        if n:
            return n
    return 0


# --------------------------------------------------------------------------- the user's step


def resolve_step(cfg: StepSection) -> Step:
    """`[step] fn`: "default", or "package.module:fn" taking (model, batch, loss_fn)."""
    if cfg.fn == "default":
        return default_step
    fn = target.resolve(cfg.fn, "step.fn")
    if not callable(fn):
        raise PresetError(f"{cfg.fn} is {type(fn).__name__}, not a function", key="step.fn")
    try:
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY,
                  p.POSITIONAL_OR_KEYWORD) or p.kind is p.VAR_POSITIONAL]
    except (TypeError, ValueError):
        return fn
    if not any(p.kind is p.VAR_POSITIONAL for p in params) and len(params) < 3:
        names = ", ".join(p.name for p in params) or "nothing"
        raise PresetError(f"{cfg.fn} takes ({names}); a step takes (model, batch, loss_fn)", key="step.fn")
    return fn


def _first_line(exc: BaseException, limit: int = 220) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text[:limit]}"


def dry_run(preset: Preset, model: torch.nn.Module, step: Step, loss_fn, batch, device: torch.device,
            metrics: MetricSet | None) -> dict[str, tuple[int, ...]]:
    """Run the step once on a real collated batch (eval mode, so BatchNorm statistics do not move;
    gradients on, so a loss that reaches no trainable weight shows): the model must take the batch,
    the loss must be one number that depends on the weights, and the metrics must take the step's
    outputs. Any failure is bad input, said in one line with the shapes. Returns every module's
    output shape (the layer table's)."""
    custom = preset.step.fn != "default"
    where = f"{preset.step.fn}" if custom else ""
    if not custom and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise PresetError(f"the default step takes (input, target) batches; these batches are {describe(batch)};"
                          ' write a step for them: [step] fn = "package.module:step" (see the README)', key="step.fn")
    batch = to_device(batch, device)
    was_training = model.training
    model.eval()
    try:
        with recording_shapes(model) as shapes, torch.enable_grad():
            if custom:
                try:
                    result = step(model, batch, loss_fn)
                except Exception as exc:  # noqa: BLE001 - the user's code: any failure is bad input
                    raise PresetError(f"{where} failed on a batch of {describe(batch)}: {_first_line(exc)}",
                                      key="step.fn") from None
            else:
                result = _default_checked(preset, model, loss_fn, batch)
        _check_loss(preset, result, where, any(p.requires_grad for p in model.parameters()))
        if metrics is not None:
            _check_metrics(preset, result, metrics, where)
        if preset.checkpoint.monitor == "val_acc" or (preset.early_stopping.enabled
                                                      and preset.early_stopping.monitor == "val_acc"):
            _check_accuracy(preset, result)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return shapes


def dry_runs(preset: Preset, model: torch.nn.Module, step: Step, loss_fn, data, device: torch.device,
             metrics: MetricSet | None) -> dict[str, tuple[int, ...]]:
    """`dry_run` on the data's sample batch (the validation set's when there is one: the metrics are
    checked on it) and on the training set's first samples too (`data.train_batch`), so that a
    training set the step cannot take is bad input at start, not a failed step 0. The sample's shapes."""
    shapes = dry_run(preset, model, step, loss_fn, data.sample_batch, device, metrics)
    if getattr(data, "train_batch", None) is not None:
        dry_run(preset, model, step, loss_fn, data.train_batch, device, None)
    return shapes


def _default_checked(preset: Preset, model, loss_fn, batch) -> dict[str, torch.Tensor]:
    """The default step, with the model's failures and the loss's told apart."""
    x, y = batch
    try:
        out = first_tensor(model(x))
    except Exception as exc:  # noqa: BLE001
        raise PresetError(f"the model cannot take a batch of {describe(x)}: {_first_line(exc)}; "
                          + (_input_hint(model, x) or "check model.arch and the input size (data.image_size,"
                             " data.channels, data.flatten)"), key="model.arch") from None
    if out is None:
        raise PresetError("the model returned no tensor; the default step needs one (or write a [step] fn)",
                          key="model.arch")
    try:
        loss = loss_fn(out, y)
    except Exception as exc:  # noqa: BLE001
        raise PresetError(f"{preset.loss.name} failed on the model's output {describe(out)} and the targets"
                          f" {describe(y)}: {_first_line(exc)}; check [loss] and that the outputs fit the targets",
                          key="loss") from None
    return {"loss": loss, "outputs": out, "targets": y}


def _input_hint(model: torch.nn.Module, x) -> str | None:
    """What to set when the model's first layer plainly wants another input than image batches:
    a flat vector (an MLP: data.flatten, data.channels, data.image_size) or another channel count."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))), None)
    n, c, h, w = x.shape
    if isinstance(first, torch.nn.Conv2d) and first.in_channels != c and first.in_channels in (1, 3):
        return (f"the first Conv2d takes {first.in_channels} channels and the batch has {c}: set data.channels ="
                f" {first.in_channels}")
    if not isinstance(first, torch.nn.Linear):
        return None
    want = first.in_features
    for channels in (c, 1, 3):
        side = round((want / channels) ** 0.5)
        if side * side * channels == want:
            sets = ["data.flatten = true"]
            if channels != c:
                sets.insert(0, f"data.channels = {channels}")
            if side != h or side != w:
                sets.insert(0, f"data.image_size = {side}")
            return (f"the first Linear takes {want} = {channels}x{side}x{side} values per sample and the batch is"
                    f" {c}x{h}x{w} images: set {', '.join(sets)}")
    return f"the first Linear takes {want} values per sample: set data.flatten = true and an input size that gives {want}"


def _check_loss(preset: Preset, result, where: str, trainable: bool) -> None:
    key = "step.fn" if where else "loss"
    who = where or preset.loss.name
    if isinstance(result, dict) and "loss" not in result:
        raise PresetError(f"{who} returned a dict without \"loss\" (keys: {', '.join(map(str, result))});"
                          " return {\"loss\": ..., \"outputs\": ..., \"targets\": ...}", key=key)
    loss = loss_of(result) if isinstance(result, dict) else result
    if not isinstance(loss, torch.Tensor):
        raise PresetError(f"{who} returned {type(loss).__name__}, not a tensor; a step returns the loss tensor"
                          " (or a dict with \"loss\")", key=key)
    if loss.numel() != 1:
        raise PresetError(f"the loss has shape {tuple(loss.shape)}; it must be one number: reduce it (.mean(),"
                          " or the loss's reduction = \"mean\")", key=key)
    if not loss.is_floating_point():
        raise PresetError(f"the loss is {str(loss.dtype).replace('torch.', '')}; it must be a float tensor", key=key)
    if trainable and not loss.requires_grad:
        raise PresetError("the loss does not depend on any trainable weight (it has no grad_fn: detached, .item(),"
                          " or computed under no_grad)", key=key)


def _check_metrics(preset: Preset, result, metrics: MetricSet, where: str) -> None:
    if not (isinstance(result, dict) and "outputs" in result and "targets" in result):
        raise PresetError(f"[[metrics]] need the step's outputs and targets: make {where} return"
                          " {\"loss\": loss, \"outputs\": outputs, \"targets\": targets}", key="step.fn")
    outputs, targets = _detached(result["outputs"]), _detached(result["targets"])
    if (any(m.key == "acc" for m in preset.metrics) and isinstance(targets, torch.Tensor)
            and targets.is_floating_point() and not bool(((targets == 0) | (targets == 1)).all())):
        # a regression's targets: accuracy would count (output > 0) == (target > 0.5), a number of nothing
        odd = targets[(targets != 0) & (targets != 1)].flatten()[0].item()
        raise PresetError(f"accuracy counts classes, and these targets are real numbers ({describe(targets)}, such"
                          f" as {odd:.4g}); for a regression use mae, rmse or r2", key="metrics")
    metrics.reset()
    try:
        metrics.update(outputs, targets)
        metrics.compute()
    except Exception as exc:  # noqa: BLE001
        raise PresetError(f"cannot be computed on outputs {describe(outputs)} and targets {describe(targets)}:"
                          f" {_first_line(exc)}", key="metrics") from None
    finally:
        metrics.reset()


def _check_accuracy(preset: Preset, result) -> None:
    """val_acc is measured for class targets (N x C outputs, N integer targets) or by an accuracy metric."""
    if any(m.key == "acc" for m in preset.metrics):
        return
    out = result.get("outputs") if isinstance(result, dict) else None
    y = result.get("targets") if isinstance(result, dict) else None
    if (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.dim() == 2 and y.dim() == 1
            and not y.is_floating_point()):
        return
    key = "checkpoint.monitor" if preset.checkpoint.monitor == "val_acc" else "early_stopping.monitor"
    raise PresetError("val_acc is measured for class targets (outputs N x classes, integer targets N); these are"
                      f" outputs {describe(out)} and targets {describe(y)}: monitor val_loss, or add"
                      ' [[metrics]] name = "accuracy"', key=key)


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value
