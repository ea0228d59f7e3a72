"""When training should stop. Best-so-far tracking and early stopping: flags checked at epoch
ends, never exceptions. The non-finite guard: train.nonfinite ("stop" or "skip") and the check that
no checkpoint is written from non-finite weights; it raises NonFinite, which ends the run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from tui_trainer.engine.events import RunWarning


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


def monitored(metrics: dict, monitor: str, mode: str, train_loss: float | None) -> tuple[float | None, str]:
    """(value, name) an epoch is judged by: its `monitor`; where the epoch has none, its train_loss
    if the monitor is minimized too (a loss for a loss), else nothing (None: the epoch is not
    judged). Never a train loss for a monitor that goes up: its "best" would be the worst epoch."""
    value = metrics.get(monitor)
    if value is not None:
        return value, monitor
    if mode == "min" and train_loss is not None:
        return train_loss, "train_loss"
    return None, monitor


def without_validation(monitor: str, has_val: bool, what: str) -> tuple[str, str | None]:
    """(monitor, warning): a val_ monitor of a run with no validation data becomes train_loss, said once."""
    if has_val or not monitor.startswith("val_"):
        return monitor, None
    return "train_loss", (f"{what} = \"{monitor}\" but the run has no validation data: it follows train_loss"
                          " (give validation data, data.val_fraction > 0, or set it to train_loss)")


class EarlyStopping:
    """Stop when the monitored value has not improved by `min_delta` for `patience` epochs. An epoch
    with no value (`update(None)`) is not counted either way."""

    def __init__(self, mode: str, patience: int, min_delta: float):
        self.best = Best(mode, min_delta)
        self.patience = patience

    def update(self, value: float | None, epoch: int) -> bool:
        if value is None:
            return False
        return self.best.update(value, epoch)

    @property
    def should_stop(self) -> bool:
        return self.best.bad_epochs >= self.patience


def resume_best(best: Best, saved: dict | None, monitor: str, saved_monitor: str | None, key: str,
                source: str) -> str | None:
    """A checkpoint's best (value, epoch, epochs without improvement) put back into `best`, when the
    checkpoint judged the same `monitor` the same way (`saved_monitor` None: a checkpoint that did
    not record it, taken as the same); this run's own mode and min_delta are kept. Else `best` stays
    fresh and the warning says so: a best val_f1 (max) loaded as a best val_loss stopped a run whose
    val_loss improved."""
    if not saved:
        return None
    old_mode = saved.get("mode", best.mode)
    if saved_monitor in (None, monitor) and old_mode == best.mode:
        best.value, best.epoch = saved.get("value"), saved.get("epoch")
        best.bad_epochs = int(saved.get("bad_epochs", 0))
        return None
    return (f"{key} is {monitor} ({best.mode}) and {source} followed {saved_monitor or monitor} ({old_mode}):"
            f" its best and its epochs without improvement start afresh")


def early_stop_message(monitor: str, epochs: int) -> str:
    """Finished's message of an early stop (the engine's and the loop's)."""
    return f"early stop: no {monitor} improvement for {epochs} epoch{'' if epochs == 1 else 's'}"


# --------------------------------------------------------------------------- the non-finite guard


class NonFinite(Exception):
    """A non-finite loss or weight where the run must stop: it ends as Finished("nonfinite"), exit 1."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} at step {step}")
        self.step = step


class NonFiniteGuard:
    """train.nonfinite. "stop" (and always with LBFGS): the first non-finite loss ends the run. It is
    found at report time in the losses the report reads anyway, so the step path gets no host sync.
    "skip": a step whose loss or gradients are not finite makes no update (checked per step, which
    costs one sync), and the report warns about each such step."""

    def __init__(self, mode: str, *, closure: bool, scaler: bool):
        self.stops = mode == "stop" or closure
        # LBFGS updates inside optimizer.step (nothing to skip) and fp16's GradScaler skips by itself
        self.skips = mode == "skip" and not closure and not scaler
        self.warning = ('train.nonfinite = "skip": LBFGS updates inside its step, so nothing can be skipped;'
                        " a non-finite loss stops the run") if mode == "skip" and closure else None
        self._skipped: list[int] = []  # steps whose update skip mode dropped, not yet reported

    def update_is_finite(self, loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
        """train.nonfinite = "skip": are the loss and every gradient finite? This costs one host
        sync per step, paid in skip mode only ("stop" checks at report and save time and adds no
        per-step sync). Skipping on the device instead would mean a copy of every parameter and
        optimizer state per step; fp16 needs none of this, as its GradScaler already skips steps
        with non-finite gradients (and lowers the scale), so skip mode leaves that path alone."""
        grads = [p.grad for p in params if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        flags = torch.stack([loss.detach().float().reshape(()), *[n.float() for n in norms]])
        return bool(torch.isfinite(flags).all())

    def skipped(self, step: int) -> None:
        self._skipped.append(step)

    def check_losses(self, values: list[float], first: int) -> tuple[list[float], list[RunWarning], NonFinite | None]:
        """The losses of steps `first`, `first + 1`, ... as a report shows them, the warnings to send
        before it, and the NonFinite to raise after it. "stop": the losses up to the first non-finite
        one, and its NonFinite. Otherwise a warning for each step whose update was skipped."""
        if self.stops:
            at = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            if at is None:
                return values, [], None
            return values[: at + 1], [], NonFinite(first + at, f"non-finite loss ({values[at]})")
        skipped, self._skipped = set(self._skipped), []
        warnings = []
        for i, v in enumerate(values):
            if not math.isfinite(v) or first + i in skipped:
                what = f"non-finite loss ({v})" if not math.isfinite(v) else "non-finite gradients"
                warnings.append(RunWarning(first + i, f"{what} at step {first + i}: update skipped"))
        return values, warnings, None


def check_weights_finite(params: list[torch.Tensor], step: int) -> None:
    """Raise NonFinite unless every weight is finite: before each save, in every mode, so no
    checkpoint is ever written from non-finite weights. One host sync, at save time only."""
    with torch.no_grad():
        norms = torch._foreach_norm([p.detach() for p in params])
        ok = bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
    if not ok:
        raise NonFinite(step, "non-finite weights")
