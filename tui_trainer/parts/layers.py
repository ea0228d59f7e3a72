"""The model as a table of layers: prefix matching, trainable state, output shapes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerInfo:
    """One module that owns parameters directly (a leaf of the layer tree) or a container row.

    `params` counts the module's whole subtree; `own` says whether it holds parameters itself.
    """

    name: str
    type: str
    depth: int
    params: int
    own: bool
    out_shape: tuple[int, ...] | None


def matches(name: str, prefix: str) -> bool:
    """Dotted-boundary prefix: "layer1" matches "layer1.0.conv1" but not "layer10"."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def layer_rows(model: nn.Module, sample: torch.Tensor | None = None, *,
               shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[LayerInfo, ...]:
    """Every module whose subtree holds parameters, in registration order, with output shapes:
    `shapes` as `recording_shapes` collected them, or from one dry forward pass of `sample` (eval
    mode, no grad, so BatchNorm statistics do not move)."""
    if shapes is None:
        shapes = output_shapes(model, sample) if sample is not None else {}
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        total = sum(p.numel() for p in module.parameters())
        if total == 0:
            continue
        own = any(True for _ in module.parameters(recurse=False))
        rows.append(
            LayerInfo(name, type(module).__name__, name.count("."), total, own, shapes.get(name))
        )
    return tuple(rows)


@contextlib.contextmanager
def recording_shapes(model: nn.Module):
    """While inside, every named module's first output shape is recorded into the yielded dict."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            tensor = first_tensor(output)
            if tensor is not None and name not in shapes:
                shapes[name] = tuple(tensor.shape)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def output_shapes(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
    was_training = model.training
    with recording_shapes(model) as shapes:
        try:
            model.eval()
            with torch.no_grad():
                model(sample)
        finally:
            model.train(was_training)
    return shapes


def first_tensor(output):
    """The tensor a module produced: itself, `.logits` of a named tuple, `["out"]`, or the first."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        return output.logits
    if isinstance(output, dict):
        return first_tensor(output.get("out", next(iter(output.values()), None)))
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    return None


def trainable_state(model: nn.Module, rows: tuple[LayerInfo, ...]) -> tuple[bool | None, ...]:
    """Per row: True all trainable, False all frozen, None mixed."""
    flags: dict[str, bool] = {n: p.requires_grad for n, p in model.named_parameters()}
    out = []
    for row in rows:
        values = {v for n, v in flags.items() if matches(n, row.name)}
        out.append(values.pop() if len(values) == 1 else None)
    return tuple(out)
