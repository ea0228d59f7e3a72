"""Best-so-far tracking and early stopping: flags checked at epoch ends, never exceptions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Best:
    """The best monitored value so far; `update` says whether this one improved on it."""

    mode: str  # min or max
    min_delta: float = 0.0
    value: float | None = None
    epoch: int | None = None
    bad_epochs: int = 0

    def better(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        if self.mode == "min":
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta

    def update(self, value: float | None, epoch: int) -> bool:
        if value is not None and self.better(value):
            self.value, self.epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class EarlyStopping:
    """Stop when the monitored value has not improved by `min_delta` for `patience` epochs."""

    def __init__(self, mode: str, patience: int, min_delta: float):
        self.best = Best(mode, min_delta)
        self.patience = patience

    def update(self, value: float | None, epoch: int) -> bool:
        return self.best.update(value, epoch)

    @property
    def should_stop(self) -> bool:
        return self.best.bad_epochs >= self.patience
