"""Model factories for failure tests, named from presets as arch = "tests.helpers.models:...".

`misbehaving_cnn(plan={"5": "raise"})` wraps the real `examples.models.small_cnn` and misbehaves on
the k-th training forward pass (1-based, counted per process, so a resumed run counts from its own
first step). Actions: raise, oom, nan, inf, nangrad, or a signal name (SIGTERM...) sent to its own process.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

from examples.models import small_cnn


class Misbehaving(nn.Module):
    def __init__(self, inner: nn.Module, plan: dict[str, str]):
        super().__init__()
        self.inner = inner
        self.plan = {int(k): v for k, v in plan.items()}
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.inner(x)
        self.calls += 1
        action = self.plan.get(self.calls)
        if action == "raise":
            raise RuntimeError(f"deliberate failure in forward at call {self.calls}")
        if action == "oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)")
        if action and action.startswith("SIG"):
            os.kill(os.getpid(), getattr(signal, action))
        out = self.inner(x)
        if action == "nan":
            return out * float("nan")
        if action == "inf":
            return out * float("inf")
        if action == "nangrad":  # the loss stays finite, the gradient of the first weight is NaN
            weight = next(self.inner.parameters())
            return out + 0.0 * torch.sqrt(0.0 * weight).sum()
        return out


def misbehaving_cnn(plan: dict[str, str], num_classes: int = 10, width: int = 4) -> nn.Module:
    return Misbehaving(small_cnn(num_classes=num_classes, width=width), plan)


def another_cnn(num_classes: int = 10) -> nn.Module:
    """A different architecture: its checkpoints must not load into small_cnn."""
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, num_classes))
