"""The user's own objects instead of a preset's names (`tui_trainer.fit`): model, data, optimizer,
loss, scheduler, step, metrics and callbacks as Python objects -> the same `Parts` the engine runs.

What stays the preset's: the run's settings (train.*, checkpoint.*, early_stopping.*, data.batch_size
for Datasets ...), so the run directory's config.toml says how it ran, and the metrics by name.

Data:
  - Datasets (map-style): the same seeded batches as a preset's data (EpochBatches: the order of
    epoch e depends only on (seed, e), so a resume is exact; sharded on many ranks).
  - A DataLoader: used as it is, with its own sampler, batch size and workers. A resume mid-epoch
    skips the batches done; they are the same samples only when the loader's order is a function of
    the epoch (a DistributedSampler with set_epoch, or no shuffle). A loader with `shuffle=True` draws
    a new order each epoch from torch's global RNG: the run warns once that a resume mid-epoch is
    not exact.

Errors are one line naming the argument of fit (`fit(optimizer=...)`), exit code 2 from the CLI's
point of view; the model, the step, the loss and the metrics are tried on a real batch first.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from tui_trainer.config import Preset
from tui_trainer.errors import UserError
from tui_trainer.parts import Parts, _require_goals, device_label, resolve_amp, resolve_device, seed_everything
from tui_trainer.parts.callbacks import check_callback
from tui_trainer.parts.data import DataParts, make_loaders
from tui_trainer.parts.layers import layer_rows
from tui_trainer.parts.metrics import build_metrics
from tui_trainer.parts.optim import LrPlan, LrSchedule, is_plateau, simulate_plan
from tui_trainer.parts.step import default_step, dry_runs

SOURCE = "fit"
# preset keys in start-up errors -> the argument of fit() that supplied the object
ARGUMENT_OF = {"model.arch": "model", "model": "model", "loss": "loss", "loss.name": "loss", "step.fn": "step",
               "data": "train_data", "data.dataset": "train_data", "data.collate": "train_data", "val_data": "val_data",
               "optimizer": "optimizer", "scheduler": "scheduler"}
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")  # made for a step per batch
PRESET_HINTS = (("check model.arch and the input size (data.image_size, data.channels, data.flatten)",
                 "the model's first layer must take this input"),
                ("check [loss] and that", "check the loss and that"),
                ("(or write a [step] fn)", "(or pass step=fn)"),
                ('[step] fn = "package.module:step" (see the README)',
                 "pass step=fn, a function (model, batch, loss_fn) -> loss (see the README)"))


def is_loader(data: Any) -> bool:
    return isinstance(data, DataLoader)


def is_dataset(data: Any) -> bool:
    return isinstance(data, Dataset) or (hasattr(type(data), "__getitem__") and hasattr(type(data), "__len__")
                                         and not is_loader(data))


def error(argument: str, message: str) -> UserError:
    return UserError(message, key=argument, source=SOURCE)


def scheduler_interval(scheduler, given: str | None) -> str:
    """"step" or "epoch": what the caller said, else "step" for the schedulers made for it."""
    if given is not None:
        return given
    return "step" if scheduler is not None and type(scheduler).__name__ in PER_STEP_SCHEDULERS else "epoch"


# --------------------------------------------------------------------------- data


class LoaderBatches:
    """The engine's view of a user DataLoader's batches (EpochBatches' interface): steps per epoch,
    and `set_epoch(e, start)` = epoch e from optimizer step `start` (a resume skips the batches done)."""

    def __init__(self, loader: DataLoader, accumulate: int):
        self.loader, self.accumulate = loader, accumulate
        self.epoch, self.start = 0, 0
        try:
            self.batches_per_epoch = len(loader)
        except TypeError:
            raise error("train_data", "a DataLoader without a length (an IterableDataset?) cannot say where an epoch"
                                      " ends; give a map-style Dataset or a loader with __len__") from None

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.accumulate

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def exact(self) -> bool:
        """Whether the loader's order is a function of the epoch (a resume mid-epoch finds the same
        batches): no shuffling, or a sampler with set_epoch (DistributedSampler)."""
        sampler = self.loader.batch_sampler.sampler if self.loader.batch_sampler is not None else self.loader.sampler
        return isinstance(sampler, (SequentialSampler, DistributedSampler)) or (
            hasattr(sampler, "set_epoch") and not isinstance(sampler, RandomSampler))


class EpochLoader:
    """Iterates a user DataLoader for the engine: tells its sampler the epoch (set_epoch, when it has
    one), skips the batches a resume has done, and yields whole optimizer steps only."""

    def __init__(self, batches: LoaderBatches):
        self.batches = batches
        self.loader = batches.loader

    def __len__(self) -> int:
        b = self.batches
        return max(0, b.steps_per_epoch - b.start) * b.accumulate

    @property
    def _iterator(self):  # the loader's persistent workers: DataParts.close / kill_workers end them
        return getattr(self.loader, "_iterator", None)

    @_iterator.setter
    def _iterator(self, value) -> None:
        self.loader._iterator = value

    def __iter__(self):
        b = self.batches
        for sampler in (getattr(self.loader, "sampler", None), getattr(self.loader.batch_sampler, "sampler", None)):
            if sampler is not None and callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(b.epoch)
                break
        first, last = b.start * b.accumulate, b.steps_per_epoch * b.accumulate
        return itertools.islice(iter(self.loader), first, last)


def loader_data(train: DataLoader, val, accumulate: int, world: int) -> tuple[DataParts, list[str]]:
    """DataParts around the user's DataLoader(s); the warnings to show."""
    notes: list[str] = []
    if world > 1:
        sampler = train.batch_sampler.sampler if train.batch_sampler is not None else train.sampler
        if not isinstance(sampler, DistributedSampler):
            raise error("train_data", f"{world} ranks would each take every batch of this DataLoader; pass Datasets"
                                      " (tui-trainer shards them) or give the loader a DistributedSampler")
    batches = LoaderBatches(train, accumulate)
    if batches.steps_per_epoch == 0:
        raise error("train_data", f"the DataLoader gives {batches.batches_per_epoch} batches per epoch; accumulate ="
                                  f" {accumulate} needs at least that many")
    if val is not None and not is_loader(val):
        if not is_dataset(val):
            raise error("val_data", f"is a {type(val).__name__}; give a Dataset, a DataLoader or None")
        val = DataLoader(val, batch_size=train.batch_size or 64, shuffle=False, collate_fn=train.collate_fn)
    if not batches.exact:
        notes.append("train_data is a DataLoader that shuffles with torch's global RNG: a resume mid-epoch skips"
                     " the batches already done, but not the same samples (pass the Dataset instead, or a sampler"
                     " with set_epoch, for an exact resume)")
    sample_from = val if val is not None else train
    try:
        sample_batch = next(iter(sample_from))
    except Exception as exc:  # noqa: BLE001 - the user's data
        raise error("val_data" if val is not None else "train_data",
                    f"the DataLoader failed on its first batch: {type(exc).__name__}: {_first_line(exc)}") from None
    classes = list(getattr(train.dataset, "classes", None) or [])
    sample = sample_target = None
    if isinstance(sample_batch, (tuple, list)) and len(sample_batch) == 2 and isinstance(sample_batch[0], torch.Tensor):
        sample = sample_batch[0]
        sample_target = sample_batch[1] if isinstance(sample_batch[1], torch.Tensor) else None
    n_train = len(train.dataset) if hasattr(train.dataset, "__len__") else "?"
    n_val = (len(val.dataset) if hasattr(val.dataset, "__len__") else "?") if val is not None else 0
    note = f"your DataLoader: {n_train} train / {n_val} val" + (f", {len(classes)} classes" if classes else "")
    data = DataParts(EpochLoader(batches), val, batches, len(classes) or None, classes, sample, note, sample_target,
                     sample_batch=sample_batch)
    return data, notes


def dataset_data(preset: Preset, train, val, device: torch.device, rank: int, world: int) -> DataParts:
    """The seeded batches of a preset's data, over the user's Datasets."""
    for name, ds in (("train_data", train), ("val_data", val)):
        if ds is not None and not is_dataset(ds):
            raise error(name, f"is a {type(ds).__name__}; give a map-style Dataset (__len__ and __getitem__),"
                              " a DataLoader, or None for val_data")
    classes = list(getattr(train, "classes", None) or [])
    return make_loaders(preset.data, preset.seed, device, accumulate=preset.train.accumulate, rank=rank,
                        world=world, datasets=(train, val, classes))


# --------------------------------------------------------------------------- the LR plan


def plan_objects(optimizer: torch.optim.Optimizer, scheduler, interval: str, warmup_steps: int, steps_per_epoch: int,
                 total_steps: int, group_names: list[str], max_points: int = 2000, strict: bool = False) -> LrPlan:
    """The planned LR of every group over the run: the user's scheduler, copied onto a throw-away
    optimizer with the same param groups (its state and its LR rule as they are now), stepped as the
    engine will step it. ReduceLROnPlateau has no planned future; a scheduler that cannot be copied
    is "not plannable": both show only the current LR and its history. `strict` (fit, before the
    run): a copy that fails while it is stepped through the run is bad input, since the scheduler
    itself would fail at that step (OneCycleLR made for more steps an epoch than the run makes)."""
    current = [float(g["lr"]) for g in optimizer.param_groups]

    def flat(note: str, adaptive: bool = True) -> LrPlan:
        return LrPlan(tuple(group_names), (0,), tuple((lr,) for lr in current), total_steps, adaptive, note)

    if scheduler is not None and is_plateau(type(scheduler)):
        return flat("")
    try:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [nn.Parameter(torch.zeros(1))]}
                  for g in optimizer.param_groups]
        dummy = torch.optim.SGD(groups, lr=current[0] if current else 0.01)
        copied = copy.deepcopy(scheduler, memo={id(optimizer): dummy}) if scheduler is not None else None
        if copied is not None and getattr(copied, "optimizer", dummy) is not dummy:
            return flat("not plannable: the scheduler does not keep its optimizer where it can be replaced")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return simulate_plan(LrSchedule(dummy, copied, interval, warmup_steps), group_names, steps_per_epoch,
                                     total_steps, max_points)
            except Exception as exc:  # noqa: BLE001 - the user's scheduler
                if strict:
                    raise _fails_in_run(scheduler, exc, steps_per_epoch, total_steps) from None
                raise
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's scheduler: the run goes on without a plan
        return flat(f"not plannable: copying {type(scheduler).__name__} failed ({type(exc).__name__})")


def _fails_in_run(scheduler, exc: BaseException, steps_per_epoch: int, total_steps: int) -> UserError:
    name = type(scheduler).__name__
    hint = (f"; give it total_steps={total_steps} (or epochs and steps_per_epoch={steps_per_epoch})"
            if name == "OneCycleLR" else "")
    return error("scheduler", f"{name} fails when stepped through the run's {total_steps} optimizer steps"
                              f" ({steps_per_epoch} an epoch: a last partial batch is dropped): {type(exc).__name__}:"
                              f" {_first_line(exc)}{hint}")


# --------------------------------------------------------------------------- everything


def from_objects(preset: Preset, *, model: nn.Module, train, val, optimizer: torch.optim.Optimizer, loss_fn,
                 scheduler=None, interval: str = "epoch", step_fn=None, callbacks=(), rank: int = 0, world: int = 1,
                 local_rank: int = 0):
    """Parts (see parts/__init__.py) from the user's objects; a one-line UserError naming the
    argument of fit() for anything that cannot run, before any step."""
    try:
        return _from_objects(preset, model, train, val, optimizer, loss_fn, scheduler, interval, step_fn,
                             list(callbacks), rank, world, local_rank)
    except UserError as err:
        if err.source in (None, SOURCE, preset.source):
            err.key = ARGUMENT_OF.get(err.key or "", err.key)
            err.source = SOURCE
            for preset_words, words in PRESET_HINTS:  # the start-up checks speak of preset keys
                err.message = err.message.replace(preset_words, words)
        raise


def _from_objects(preset, model, train, val, optimizer, loss_fn, scheduler, interval, step_fn, callbacks, rank,
                  world, local_rank) -> Parts:
    if not isinstance(model, nn.Module):
        raise error("model", f"is a {type(model).__name__}; give a torch.nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise error("optimizer", f"is a {type(optimizer).__name__}; give a torch.optim.Optimizer made on the model's"
                                 " parameters")
    if isinstance(loss_fn, type):  # callable, but calling it makes a loss instead of computing one
        raise error("loss", f"is the class {loss_fn.__name__}, not a loss; give an instance, e.g. {loss_fn.__name__}()")
    if not callable(loss_fn):
        raise error("loss", f"is a {type(loss_fn).__name__}; give a loss function or module, e.g."
                            " torch.nn.CrossEntropyLoss()")
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise error("optimizer", "holds none of the model's parameters: make it on this model's parameters"
                                 " (model.parameters())")
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise error("scheduler", "was made for another optimizer; make it on the optimizer given to fit")
    device = resolve_device(preset.train.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    seed_everything(preset.seed, preset.train.deterministic)
    warnings_: list[str] = list(preset._notes)
    if is_loader(train):
        data, notes = loader_data(train, val, preset.train.accumulate, world)
        warnings_ += notes
    else:
        data = dataset_data(preset, train, val, device, rank, world)
    model.to(device)  # in place: the optimizer keeps the same Parameter objects
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise error("model", "nothing is trainable: every parameter has requires_grad = False")
    step_fn = step_fn or default_step
    metrics = build_metrics(preset.metrics, device, data.num_classes) if preset.metrics else None
    goals = dict(preset.goals)
    if metrics is not None:
        goals.update(metrics.goals)
        _require_goals(preset, goals)
    shapes = dry_runs(preset, model, step_fn, loss_fn, data, device, metrics)
    layers = layer_rows(model, shapes=shapes)
    for i, cb in enumerate(callbacks):
        try:
            check_callback(cb, i)
        except UserError as err:
            raise error("callbacks", f"[{i}]: {err.message}") from None
    steps_per_epoch = data.train_batches.steps_per_epoch
    total_steps = preset.train.epochs * steps_per_epoch
    if preset.train.max_steps:
        total_steps = min(total_steps, preset.train.max_steps)
    warmup = preset.scheduler.warmup_steps
    schedule = LrSchedule(optimizer, scheduler, interval, warmup)
    group_names = [str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)]
    plan = plan_objects(optimizer, scheduler, interval, warmup, steps_per_epoch, total_steps, group_names, strict=True)
    planned = getattr(scheduler, "total_steps", None) if type(scheduler).__name__ == "OneCycleLR" else None
    if isinstance(planned, int) and planned > total_steps:  # sized by len(loader): counts the dropped partial batch
        warnings_.append(f"scheduler: OneCycleLR is sized for {planned} steps and the run makes {total_steps}"
                         f" ({steps_per_epoch} an epoch: a last partial batch is dropped), so the run ends before"
                         f" its annealing does; give it total_steps={total_steps}")
    amp_dtype = resolve_amp(preset.train.amp, device)
    return Parts(preset, model, device, device_label(device), amp_dtype, data, optimizer, schedule, loss_fn, layers,
                 plan, steps_per_epoch, total_steps, f"your {type(model).__name__}", warnings_, callbacks, step_fn,
                 metrics, goals)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__
