"""Loss: any torch.nn loss by name, or "package.module:ClassOrFunction" (a Dice loss, say)."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from tui_trainer.parts import target
from tui_trainer.config import LossSection
from tui_trainer.errors import PresetError, did_you_mean

# Losses that want a float target shaped like the output: class indices become one-hot for them.
_DENSE_TARGET = {"BCEWithLogitsLoss", "BCELoss", "MultiLabelSoftMarginLoss", "MSELoss", "L1Loss",
                 "SmoothL1Loss", "HuberLoss", "SoftMarginLoss", "KLDivLoss"}


def loss_names() -> list[str]:
    return [n for n in dir(nn) if n.endswith("Loss") and isinstance(getattr(nn, n), type)]


def check_loss(cfg: LossSection):
    if target.is_target(cfg.name):
        obj = target.resolve(cfg.name, "loss.name")
        if not callable(obj):
            raise PresetError(f"{cfg.name} is not callable", key="loss.name")
        target.check_kwargs(obj.__init__ if inspect.isclass(obj) else obj, cfg.kwargs, "loss",
                            skip=("self", "input", "target", "inputs", "targets", "output", "pred", "logits"),
                            provided=_positional(obj))
        return obj
    names = loss_names()
    if cfg.name not in names:
        raise PresetError(f'unknown loss "{cfg.name}"{did_you_mean(cfg.name, names)}'
                          ' (a torch.nn loss, or "package.module:ClassOrFunction")', key="loss.name")
    cls = getattr(nn, cfg.name)
    target.check_kwargs(cls, cfg.kwargs, "loss")
    return cls


def _positional(fn) -> tuple[str, ...]:
    """A loss function's first two parameters are (output, target): we pass them."""
    if inspect.isclass(fn):
        return ()
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()
    return tuple(params[:2])


class OneHotTargets(nn.Module):
    """Give a dense-target loss one-hot floats when the data carries class indices."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype == torch.long and target.dim() == output.dim() - 1:
            target = nn.functional.one_hot(target, output.shape[1]).to(output.dtype)
        return self.loss(output, target)


def build_loss(cfg: LossSection):
    obj = check_loss(cfg)
    if inspect.isclass(obj):
        try:
            loss = obj(**cfg.kwargs)
        except (TypeError, ValueError) as exc:
            raise PresetError(f"{cfg.name} rejected the settings: {exc}", key="loss") from None
    else:
        loss = functools.partial(obj, **cfg.kwargs) if cfg.kwargs else obj
    if cfg.name in _DENSE_TARGET:
        loss = OneHotTargets(loss)
    return loss
