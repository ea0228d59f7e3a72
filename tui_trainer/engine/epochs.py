"""The end of an epoch: validation, best-so-far and early stopping, the epoch step of the scheduler,
EpochEnd, and the epoch's checkpoint (epoch-NNNN.pt, best.pt).

It runs once an epoch, so it lives outside trainer.py, which keeps what runs every step. `end_epoch`
takes the trainer and uses its state and helpers (`_report`, `_save`, `_emit`) as its method did;
`evaluate` is the validation pass itself and knows no trainer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tui_trainer.engine.commands import Stop
from tui_trainer.engine.events import EpochEnd, LrChanged
from tui_trainer.engine.stopping import monitored
from tui_trainer.parts.metrics import MetricSet
from tui_trainer.parts.step import batch_size_of, default_step, loss_of, to_device

if TYPE_CHECKING:
    from tui_trainer.engine.trainer import Trainer


def end_epoch(t: Trainer) -> bool:
    """Validate, track the best, step the epoch scheduler, checkpoint. True = stop early."""
    t._report(force=False)
    t0 = time.monotonic()
    t._active += t0 - t._t_report  # the training time of losses not reported yet (samples/s)
    t._t_report = t0  # the report clock stops for validation: samples/s and the ETA count training only
    waited, wall = t._epoch_waited, t._epoch_active + t0 - t._epoch_t
    t._epoch_waited = t._epoch_active = 0.0
    result = validate(t)
    val_loss, val_acc = result.loss, result.acc
    t._val_seconds = time.monotonic() - t0
    t._t_report = time.monotonic()
    if t._stop is not None:
        return False  # stopped during validation: this epoch is not complete
    # the epoch's last losses, left for the floor (log_min_interval_s) when training ended, go out
    # now if validation took that long: before the epoch's end, not after it with a save's read
    # (nothing is read here: no collective, so ranks need not agree on the clock)
    t._report(force=False)
    epoch_no = t.epoch + 1
    total, count = t.epoch_loss
    train_loss = total / count if count else None
    metrics = {"val_loss": val_loss, "val_acc": val_acc, "train_loss": train_loss, **result.metrics}
    if t._hook("on_validation_end", epoch=t.epoch, metrics=dict(metrics)):
        t.control.send(Stop(reason="callback"))  # after this epoch's checkpoint, before the next step
    value, monitor = monitored(metrics, t.monitor, t.best.mode, train_loss)
    improved = t.best.update(value, epoch_no) if value is not None else False
    if improved:
        t.best_monitor = monitor
    stop_early = False
    if t.early is not None:
        t.early.update(monitored(metrics, t.es_monitor, t.early.best.mode, train_loss)[0], epoch_no)
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
        t.schedule.plateau_status(), dict(result.metrics), waited / wall if wall > 0 else None,
    ))
    cfg = t.preset.checkpoint
    tags = []
    if cfg.every_epochs and epoch_no % cfg.every_epochs == 0:
        tags += ["epoch", "last"]
    if improved and cfg.save_best:
        tags.append("best")
    if tags:
        t._save(tuple(tags))
    if t._hook("on_epoch_end", epoch=t.epoch - 1, metrics=dict(metrics)):
        t.control.send(Stop(reason="callback"))
    t._t_report = t._epoch_t = time.monotonic()  # samples/s measures training, not validation and saving
    return stop_early


@dataclass
class Validation:
    loss: float | None = None
    acc: float | None = None  # class targets only, or an accuracy metric
    metrics: dict[str, float | None] = field(default_factory=dict)  # val_<label> of every other [[metrics]]


def validate(t: Trainer) -> Validation:
    """The trainer's validation pass; commands are applied between batches, and a stop ends it."""
    loader = t.parts.data.val
    if loader is None:
        return Validation(metrics={m: None for m in t.parts.metrics.monitors if m != "val_acc"}
                          if t.parts.metrics else {})

    def stop() -> bool:
        if t.dist.active:  # ranks validate different numbers of batches: commands wait for the next step
            return False
        t._drain_commands()
        return t._stop is not None

    t.model.eval()
    result = evaluate(t.model, loader, t.loss_fn, t.device, t._autocast, stop, step=t.step_fn,
                      metrics=t.parts.metrics, reduce=t.dist.sum_ if t.dist.active else None)
    t._train_mode()
    return result


def evaluate(model: torch.nn.Module, loader: Iterable, loss_fn, device: torch.device, autocast: Callable,
             stop: Callable[[], bool], *, step=default_step, metrics: MetricSet | None = None,
             reduce: Callable[[list[torch.Tensor]], None] | None = None) -> Validation:
    """Mean loss over `loader` (weighted by batch size), accuracy for class targets (N x C outputs,
    N integer targets), and `metrics` on the step's outputs and targets. `stop` is asked before each
    batch. Everything stays on the device until one host sync at the end."""
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    n, classify = 0, True
    if metrics is not None:
        metrics.reset()
    with torch.no_grad(), autocast():
        for batch in loader:
            if stop():
                break
            batch = to_device(batch, device)
            result = step(model, batch, loss_fn)
            size = batch_size_of(batch)
            total += loss_of(result).float() * size
            out = result.get("outputs") if type(result) is dict else None
            y = result.get("targets") if type(result) is dict else None
            if classify and out is not None and out.dim() == 2 and y is not None and y.dim() == 1 \
                    and not y.is_floating_point():
                correct += (out.argmax(dim=1) == y).sum()
            else:
                classify = False
            if metrics is not None:
                metrics.update(out, y)
            n += size
    if reduce is not None:  # many ranks: sums and counts over all of them, then divided once (exact)
        count = torch.tensor([float(n), float(classify), 1.0], device=device)  # samples, ranks classifying, ranks
        if metrics is not None:
            metrics.align(reduce)  # a rank whose shard was empty has no class / width-sized sums yet
        reduce([total, correct, count, *(metrics.state_tensors() if metrics is not None else [])])
        ranks_n, ranks_classify, ranks = count.tolist()
        n, classify = int(ranks_n), ranks_classify == ranks
    if n == 0:
        return Validation(metrics={m: None for m in metrics.monitors if m != "val_acc"} if metrics else {})
    computed = metrics.compute(synced=reduce is not None) if metrics is not None else {}
    names = list(computed)
    values = torch.stack([total, correct, *(computed[m].float().to(device).reshape(()) for m in names)]).tolist()
    loss_sum, right, rest = values[0], values[1], dict(zip(names, values[2:]))  # one host sync per validation
    rest = {k: (None if math.isnan(v) else v) for k, v in rest.items()}  # NaN: the metric had nothing to measure
    acc = rest.pop("val_acc", right / n if classify else None)
    return Validation(loss_sum / n, acc, rest)
