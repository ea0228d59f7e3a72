"""The end of an epoch: validation, best-so-far and early stopping, the epoch step of the scheduler,
EpochEnd, and the epoch's checkpoint (epoch-NNNN.pt, best.pt).

It runs once an epoch, so it lives outside trainer.py, which keeps what runs every step. `end_epoch`
takes the trainer and uses its state and helpers (`_report`, `_save`, `_emit`) as its method did;
`evaluate` is the validation pass itself and knows no trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from tui_trainer.engine.events import EpochEnd, LrChanged
from tui_trainer.parts.layers import first_tensor

if TYPE_CHECKING:
    from tui_trainer.engine.trainer import Trainer


def end_epoch(t: Trainer) -> bool:
    """Validate, track the best, step the epoch scheduler, checkpoint. True = stop early."""
    t._report()
    t0 = time.monotonic()
    val_loss, val_acc = validate(t)
    t._val_seconds = time.monotonic() - t0
    if t._stop is not None:
        return False  # stopped during validation: this epoch is not complete
    epoch_no = t.epoch + 1
    total, count = t.epoch_loss
    train_loss = total / count if count else None
    metrics = {"val_loss": val_loss, "val_acc": val_acc, "train_loss": train_loss}
    monitor = t.preset.checkpoint.monitor
    value = metrics[monitor] if metrics[monitor] is not None else train_loss
    improved = t.best.update(value, epoch_no)
    stop_early = False
    if t.early is not None:
        es_value = metrics[t.preset.early_stopping.monitor]
        t.early.update(es_value if es_value is not None else train_loss, epoch_no)
        stop_early = t.early.should_stop
    before = t.schedule.current()
    t.schedule.after_epoch(metrics[t.preset.scheduler.monitor])
    if t.schedule.plateau and t.schedule.current() != before:
        t._emit(LrChanged(t.step, tuple(t.schedule.current()), t.schedule.manual_factor, "plateau"))
    t.epoch += 1
    t.batch_in_epoch = 0
    t.epoch_loss = [0.0, 0]
    es_state = t.early.best if t.early else None
    t._emit(EpochEnd(
        epoch_no, t.step, train_loss, val_loss, val_acc, time.monotonic() - t0, monitor, value,
        t.best.value, t.best.epoch, improved,
        es_state.bad_epochs if es_state else 0, t.early.patience if t.early else None,
        t.schedule.plateau_status(),
    ))
    cfg = t.preset.checkpoint
    tags = []
    if cfg.every_epochs and epoch_no % cfg.every_epochs == 0:
        tags += ["epoch", "last"]
    if improved and cfg.save_best:
        tags.append("best")
    if tags:
        t._save(tuple(tags))
    t._t_report = time.monotonic()  # samples/s measures training, not validation and saving
    return stop_early


def validate(t: Trainer) -> tuple[float | None, float | None]:
    """The trainer's validation pass; commands are applied between batches, and a stop ends it."""
    loader = t.parts.data.val
    if loader is None:
        return None, None

    def stop() -> bool:
        t._drain_commands()
        return t._stop is not None

    t.model.eval()
    result = evaluate(t.model, loader, t.parts.loss_fn, t.device, t._autocast, stop)
    t._train_mode()
    return result


def evaluate(model: torch.nn.Module, loader: Iterable, loss_fn, device: torch.device, autocast: Callable,
             stop: Callable[[], bool]) -> tuple[float | None, float | None]:
    """Mean loss over `loader` and, for a classifier (N x C outputs, N targets), accuracy. `stop` is
    asked before each batch. On the device until one host sync at the end."""
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    n, classify = 0, True
    with torch.no_grad(), autocast():
        for x, y in loader:
            if stop():
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = first_tensor(model(x))
            total += loss_fn(out, y).float() * len(y)
            if out.dim() == 2 and y.dim() == 1:
                correct += (out.argmax(dim=1) == y).sum()
            else:
                classify = False
            n += len(y)
    if n == 0:
        return None, None
    loss_sum, right = torch.stack([total, correct]).tolist()  # one host sync per validation
    return loss_sum / n, (right / n if classify else None)
