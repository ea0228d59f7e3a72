"""`tui_trainer.loop`: the user's own training loop, unchanged, in the monitor and steerable.

    def train(run):
        for epoch in run.epochs(10):                 # 0, 1, ... 9, from the resumed epoch on
            model.train()
            for x, y in run.batches(loader):         # commands between batches; pause blocks here
                ...the user's step...
                run.log(loss=loss)                   # a tensor stays on the device until a report
            run.log_epoch(val_loss=vl, val_acc=va)
            scheduler.step()

    sys.exit(tui_trainer.loop(train, model=model, optimizer=optimizer, scheduler=scheduler))

The run directory, recorder, control socket (`attach`, `ls`), app, headless lines and signals are
those of a preset run (run/launch.py `open_run`, run/fit.py `run_session`); this module is the
engine in their place. `Run` is what `train_fn` gets; it is also the session's "trainer" (`run()`,
`step`, `epoch_of_step`, `kill_workers`, `dist`).

Decisions (what a careful user may rely on):

- Threads. In a terminal the app owns the main thread and `train_fn(run)` runs in the engine's
  worker thread; headless (`ui=False`, or no terminal) it runs on the main thread. `loop` must be
  called from the main thread. One process only (not under torchrun).
- A step is a batch that `run.batches` yielded and whose body finished. `log_every` counts them.
- Where commands act: only at safe points, where the state is one a resume can continue from:
  (a) inside `run.batches`, before each next batch is fetched (position: epoch e, k batches done);
  (b) in `run.epochs`, after an epoch's body has run (its validation, `log_epoch`, the user's
  `scheduler.step()`), before the next epoch (position: epoch e+1, batch 0). A key pressed during
  validation acts at (b). Pause blocks at the safe point. Save, the LR keys and freeze act there.
- Stop: at (a) the run saves there at once ("final"), `run.batches` stops yielding and `run.epochs`
  ends after the body of the epoch (its validation still runs; a `log_epoch` of that incomplete
  epoch is noted in the log, not made an epoch result); at (b) it saves and `run.epochs` ends.
  Code after the loop runs; nothing it changes is saved. A stop between the last batch and the end
  of the epoch lets the epoch end as usual first.
- Epochs: `run.epochs(n)` yields 0-based epoch numbers like `range(n)`. An epoch ends when its body
  has run: EpochEnd (train_loss: the mean of `run.log(loss=...)`; the `run.log_epoch` values; means of
  `run.log`'s other values as train_<name>), best tracking by `checkpoint.monitor`, and the epoch
  checkpoint (`checkpoint.every_epochs`, default 1; best.pt when the monitor improved) are written
  at the safe point (b), after the user's `scheduler.step()`, so that a resume from it is exact.
  Without `run.epochs`, each `run.batches` call is an epoch (a resume then cannot restart the
  user's own epoch counter: the run says so). `run.epochs` is called once per loop; `run.batches`
  once per epoch (for the training batches: iterate validation loaders directly).
- A `break` out of `run.batches` ends the epoch's batches (the batch in flight counts when
  `run.log` was called for it); a `break` out of `run.epochs` ends the loop: its epoch ends and the
  final checkpoint is written when `train_fn` returns. A `return` (or a break out of both) from
  inside `run.batches` before the epoch's last batch, with no `run.log_epoch` for it, leaves that
  epoch unfinished, as a stop does: no epoch result, no best.pt from part of an epoch, and the final
  last.pt is at that batch, so a resume finishes the epoch.
- LR keys: every param group's LR is the user's schedule value x the manual factor. The user's
  scheduler instance is wrapped for the run (its class is swapped for a subclass whose `step()` puts
  the schedule's own LR back into the param groups, steps, and applies the factor again), so
  chainable (StepLR, ExponentialLR, ReduceLROnPlateau) and closed-form (OneCycleLR, LambdaLR)
  schedulers alike continue from their own value; `scheduler.get_last_lr()` returns that own
  value. The class is restored when the loop ends. An LR the user's code writes into a param group
  is taken as it is (the keys scale from there; engine `LrSchedule.adopt`). The LR plan is simulated
  on a copy of the scheduler as it was when `loop` was called, per epoch (per step for OneCycleLR
  and CyclicLR; `interval="step"` says so for others).
- Freeze / unfreeze: `requires_grad` of the parameters under a module prefix, and `.grad = None` for
  the frozen ones, so no optimizer moves them (an optimizer skips parameters without a gradient).
- Saves (atomic, engine/checkpoint.py CheckpointDir): model, optimizer, the schedule (manual factor,
  the scheduler's state), RNG states (python, numpy, torch, CUDA), position (step, epoch, batch in
  epoch), the trainable map, best so far. `last.pt` is always the newest good save. A save never
  writes non-finite weights; a non-finite loss (train.nonfinite = "stop", the default) ends the loop
  like a stop but without a save, exit 1 ("skip": a warning only; the update is the user's code).
- Failure: an exception from `train_fn` ends the run as Failed (exit 1), the traceback in the Log
  pane, events.jsonl and, after the terminal is restored, stderr. Nothing is written over a good
  checkpoint: last.pt stays the last good save. The only save on a failure is an emergency file
  (emergency-step-N.pt, never last.pt) when the exception came from the loader while
  `run.batches` fetched the next batch: then the weights, optimizer and position are exactly those
  of the last safe point. Anywhere else, the state could be half a step (after optimizer.step(),
  before the batch counted), and is not saved.
- Resume (`resume="auto"`: the newest last.pt of this name; or a path): the objects are restored
  before `train_fn` starts; `run.epochs` starts at the saved epoch and `run.batches` skips the
  batches already done. Exact, bit for bit, with `seeded_loader` (the order of each epoch is a
  function of (seed, epoch), the skipped batches are not even loaded), or with a loader that does
  not shuffle, as long as data workers draw no random numbers. A loader with a plain
  `shuffle=True` draws each epoch's order from torch's global RNG: a resume at an epoch boundary is
  exact, one mid-epoch skips the right number of batches but not the same samples, and says so
  once.
- Prints: see run/capture.py (everything the loop's thread writes to stdout/stderr, and logging
  handlers on them, becomes `Printed` lines; headless they are printed as lines).
- Settings (keyword arguments): train.log_every (`log_every`), train.nonfinite, checkpoint.*,
  early_stopping.*, ui.*, log.tensorboard and scheduler.interval; anything else is the loop's own
  business (device, AMP, batch size ...) and an error. `checkpoint.monitor` may name any
  val_<name> the loop gives `run.log_epoch` (`mode="max"` for a score whose name tui-trainer does
  not know).
- The default run name is the file name of the script (or module) that defines `train_fn`, so
  `resume="auto"` finds this script's runs.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import queue
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from tui_trainer.config import Preset, resolve_mode
from tui_trainer.engine import checkpoint as ckpt
from tui_trainer.engine.commands import Control, Pause, Resume, SaveCheckpoint, ScaleLr, SetTrainable, Stop
from tui_trainer.engine.distributed import Dist
from tui_trainer.engine.events import (CheckpointSaved, EpochEnd, Event, Failed, Finished, LayerShapes, LayerStats,
                                       LrChanged, LrPlanned, Printed, RunStarted, RunWarning, StateChanged, StepReport,
                                       TrainableChanged)
from tui_trainer.engine.probes import MemoryProbe
from tui_trainer.engine.trainer import INPUT_BOUND, INPUT_BOUND_S, input_bound_advice
from tui_trainer.engine.stopping import Best, EarlyStopping, early_stop_message, monitored, resume_best
from tui_trainer.errors import UserError, did_you_mean
from tui_trainer.parts import device_label
from tui_trainer.parts.layers import first_tensor, layer_rows, matches, trainable_state
from tui_trainer.parts.optim import LrPlan, LrSchedule

SOURCE = "loop"
RESUME = f"{SOURCE}: resume"  # what a resume's errors name (checkpoint.api_names)
# the settings that mean something to a loop tui-trainer does not run itself (module docstring)
ALLOWED = ("train.log_every", "train.log_min_interval_s", "train.nonfinite", "checkpoint.", "early_stopping.", "ui.", "log.",
           "scheduler.interval")
ARGUMENTS = ("model", "optimizer", "scheduler", "name", "ui", "resume", "run_dir")
STATS_BUDGET = 0.005  # the share of wall time per-layer statistics may cost (as the engine's)


# --------------------------------------------------------------------------- the entry point


def loop(train_fn: Callable[[Run], Any], *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
         scheduler=None, name: str | None = None, ui: bool | None = None, resume: str | os.PathLike | None = None,
         run_dir: str | os.PathLike | None = None, **settings) -> int:
    """Run your own training loop `train_fn(run)` in the tui-trainer monitor, steerable.

    `train_fn` iterates `run.epochs(n)` and `run.batches(loader)` and calls `run.log(loss=...)` and
    `run.log_epoch(val_loss=..., val_acc=...)` (see `Run`); everything else in it is yours. The
    keys act on `model` (freeze / unfreeze a layer), `optimizer` (LR lower / undo, composed with
    `scheduler`) and the run (pause, save, stop) between batches.

    - `ui`: None = the monitor when stdin and stderr are a terminal, else headless lines; False:
      headless. `name`: the run's name (default: the script's file name); runs go to
      runs/<name>-<time>/ unless `run_dir` says where.
    - `resume`: "auto" (the newest last.pt of this name) or a checkpoint's path: the model,
      optimizer, scheduler, manual LR factor, RNG and loop position are restored before
      `train_fn` starts. Exact with `seeded_loader`.
    - `**settings`: log_every=10, every_epochs=1, every_steps=0, keep_last=3, save_best=True,
      checkpoint={"monitor": "val_acc"}, early_stopping={"enabled": True, "patience": 3},
      lr_reduce_factor=0.5, tensorboard=True, interval="step" (the LR plan's), nonfinite="stop".

    Returns the exit code: 0 completed (or stopped by a key, or early-stopped), 128+N stopped by
    signal N after a save, 1 failed (the traceback is printed on stderr) or a non-finite loss, 2
    bad input (one line on stderr, nothing written), 130 aborted (Ctrl+C twice). Use it as
    `sys.exit(tui_trainer.loop(...))`. See the module docstring of tui_trainer.run.loop for the
    exact semantics of stop, save, resume and failures."""
    from tui_trainer.run.fit import run_session

    outer = (sys.stdout, sys.stderr)
    ending: dict[str, Any] = {}
    try:
        _check_objects(train_fn, model, optimizer, scheduler)
        cfg, interval = loop_settings(train_fn, name, settings, model, optimizer, scheduler)
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise UserError("runs in one process; under torchrun use tui_trainer.fit or the CLI (train.devices)",
                            source=SOURCE)

        def opener(*, sinks, should_stop=None, layer_stats=False, serve=False):
            return open_loop(cfg, train_fn, model=model, optimizer=optimizer, scheduler=scheduler, interval=interval,
                             resume=resume, run_dir=run_dir, sinks=[*sinks, _Ending(ending)], should_stop=should_stop,
                             layer_stats=layer_stats, serve=serve, outer=outer)

        code = run_session(opener, ui)
    except UserError as err:
        _say(f"tui-trainer: error: {err}")
        return 2
    except KeyboardInterrupt:  # Ctrl+C twice, headless: abort without a save (the CLI's 130)
        _say("tui-trainer: aborted")
        return 130
    final = ending.get("final")
    if isinstance(final, Failed) and final.traceback:  # the terminal is the user's again: say it there too
        _say(final.traceback.rstrip())
        _say(f"tui-trainer: FAILED at step {final.step}: {final.error}; the run is in {ending.get('run_dir', '?')}")
    return code


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _Ending:
    """A sink that keeps the final event (and where the run is) for `loop`'s last words."""

    def __init__(self, into: dict[str, Any]):
        self.into = into

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                self.into["run_dir"] = event.run_dir
            case Finished() | Failed():
                self.into["final"] = event


def _error(argument: str, message: str) -> UserError:
    return UserError(message, key=argument, source=SOURCE)


def _check_objects(train_fn, model, optimizer, scheduler) -> None:
    if not callable(train_fn):
        raise _error("train_fn", f"is a {type(train_fn).__name__}; give a function train(run)")
    try:
        inspect.signature(train_fn).bind(object())
    except TypeError:
        raise _error("train_fn", f"{getattr(train_fn, '__name__', 'it')}{inspect.signature(train_fn)} cannot be"
                                 " called with one argument; it is called as train_fn(run)") from None
    except ValueError:  # no signature (a builtin): the call will say
        pass
    if not isinstance(model, nn.Module):
        raise _error("model", f"is a {type(model).__name__}; give the torch.nn.Module your loop trains")
    if not any(True for _ in model.parameters()):
        raise _error("model", "has no parameters")
    if optimizer is not None:
        if isinstance(optimizer, (list, tuple)) and optimizer and all(
                isinstance(o, torch.optim.Optimizer) for o in optimizer):
            raise _error("optimizer", f"is {len(optimizer)} optimizers; loop takes one: give the one the LR keys"
                                      " should act on (its state is saved and resumed; the others' are yours"
                                      " to save)")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise _error("optimizer", f"is a {type(optimizer).__name__}; give the torch.optim.Optimizer your loop"
                                      " steps (or leave it out)")
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in held for p in model.parameters()):
            raise _error("optimizer", "holds none of the model's parameters: give the optimizer made on"
                                      " model.parameters()")
    if scheduler is not None:
        if optimizer is None:
            raise _error("scheduler", "needs its optimizer: pass optimizer=... too")
        if not callable(getattr(scheduler, "step", None)):
            raise _error("scheduler", f"is a {type(scheduler).__name__} without step(); give a"
                                      " torch.optim.lr_scheduler object")
        if getattr(scheduler, "optimizer", optimizer) is not optimizer:
            raise _error("scheduler", "was made for another optimizer than optimizer=...")


def default_name(train_fn) -> str:
    """The file name of the script or module that defines `train_fn` ("textbook_loop"), else "loop"."""
    path = getattr(sys.modules.get(getattr(train_fn, "__module__", "") or ""), "__file__", None)
    if path is None:
        try:
            path = inspect.getfile(train_fn)
        except TypeError:
            path = None
    return file_name(path) or "loop"


def file_name(path: str | None) -> str:
    """A run name from a source file's path ("textbook_loop"); "" for none (an interactive session)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem if path else "").strip("._-")
    return stem if not stem.startswith("<") else ""


def loop_settings(train_fn, name: str | None, settings: dict[str, Any], model, optimizer,
                  scheduler) -> tuple[Preset, str]:
    """The run's settings as a validated Preset (run/fit.py `settings_preset`), and the interval the
    LR plan assumes. A setting that a loop run does not use is an error naming it."""
    from tui_trainer.parts.objects import scheduler_interval
    from tui_trainer.run.fit import object_names, settings_preset

    flat = _dotted(settings)
    for key in flat:
        if not key.startswith(ALLOWED):
            what = ("give the epochs to run.epochs(n)" if key == "train.epochs" else
                    "your loop does this itself (tui-trainer runs none of it)")
            raise UserError(f"is not a setting of loop: {what}; loop takes log_every, nonfinite, checkpoint.*,"
                            " early_stopping.*, ui.*, tensorboard and interval", source=SOURCE, key=key)
    metrics = []
    for key in ("checkpoint.monitor", "early_stopping.monitor"):
        monitor = flat.get(key)
        if isinstance(monitor, str) and monitor not in ("val_loss", "val_acc", "train_loss", "val_accuracy"):
            if not re.fullmatch(r"val_[A-Za-z0-9_]+", monitor):
                raise UserError(f'"{monitor}": a monitor is val_loss, val_acc, train_loss or val_<name> of'
                                " run.log_epoch(val_<name>=...)", source=SOURCE, key=key)
            label = monitor[4:]
            mode = flat.get(key.replace("monitor", "mode"), "auto")
            if label not in [m["label"] for m in metrics]:
                metrics.append({"name": label, "label": label, "mode": mode})
    record = object_names(model=model, optimizer=optimizer, scheduler=scheduler)
    groups = getattr(optimizer, "param_groups", None)
    if groups and isinstance(groups[0].get("lr"), (int, float)) and groups[0]["lr"] > 0:
        record["optimizer.lr"] = float(groups[0]["lr"])
    try:
        cfg = settings_preset(None, name or default_name(train_fn), flat, metrics or None, record)
    except UserError as err:
        err.source = SOURCE if err.source in (None, "fit") else err.source
        err.message = err.message.replace("fit takes", "loop takes")
        raise
    interval = scheduler_interval(scheduler, cfg.scheduler.interval if "scheduler.interval" in flat else None)
    return cfg, interval


def _dotted(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as dotted preset keys (`log_every` -> train.log_every; a section's dict)."""
    from tui_trainer import config

    sections = {n: f for n, f in config.Preset.model_fields.items() if isinstance(f.default, config.BaseModel)}
    owners: dict[str, list[str]] = {}
    for section, info in sections.items():
        for key in type(info.default).model_fields:
            owners.setdefault(key, []).append(section)
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ARGUMENTS:
            continue
        if key in sections and isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        elif "." in key:
            out[key] = value
        else:
            usable = [s for s in owners.get(key, []) if f"{s}.{key}".startswith(ALLOWED)]
            where = usable or owners.get(key, [])
            if len(where) == 1:
                out[f"{where[0]}.{key}"] = value
            elif len(where) > 1:
                raise UserError(f"{key} is a key of {', '.join(where)}; say which: {where[0]}={{\"{key}\": ...}}",
                                source=SOURCE, key=key)
            else:
                known = [k for k, secs in owners.items() if any(f"{s}.{k}".startswith(ALLOWED) for s in secs)]
                raise UserError(f"unknown setting{did_you_mean(key, [*known, *ARGUMENTS])}; loop takes log_every,"
                                " nonfinite, checkpoint.* (every_epochs, keep_last, monitor ...), early_stopping.*,"
                                " ui.*, tensorboard and interval", source=SOURCE, key=key)
    return out


def open_loop(cfg: Preset, train_fn, *, model, optimizer, scheduler, interval: str, resume, run_dir, sinks,
              should_stop=None, layer_stats: bool = False, serve: bool = False, outer=(None, None)):
    """The opener of a loop run (run/fit.py `run_session`): checkpoint to resume, run directory,
    `Run`, then the recorder, socket and sinks (run/launch.py `open_run`). Bad input is a UserError
    before anything is written."""
    from tui_trainer.run.launch import FanOut, _tensorboard_writer_class, open_run
    from tui_trainer.run.rundir import choose_run_dir, resume_checkpoint
    from tui_trainer.signals import protect_forked_children

    protect_forked_children()  # the user's DataLoader workers must never run our signal handlers
    arg = ckpt.api_names(SOURCE)
    resume_path = resume_checkpoint(cfg.name, str(resume) if resume is not None else None, arg=arg)
    state = ckpt.load(resume_path, arg=arg) if resume_path is not None else None
    if state is not None:
        ckpt.check_kind(state, resume_path, loop=True, arg=arg)
    tensorboard = _tensorboard_writer_class(cfg) if cfg.log.tensorboard else None
    rd, fresh = choose_run_dir(cfg.name, run_dir, resume_path, arg=arg)
    fan_out = FanOut([])
    control = Control()
    run = Run(cfg, train_fn, model=model, optimizer=optimizer, scheduler=scheduler, interval=interval, sink=fan_out,
              control=control, run_dir=rd, should_stop=should_stop, layer_stats=layer_stats, outer=outer)
    if state is not None:
        run._load(state, str(resume_path))
    n_groups = len(optimizer.param_groups) if optimizer is not None else 1
    session = open_run(cfg, run, rd, fresh, control=control, fan_out=fan_out, sinks=sinks, serve=serve,
                       tensorboard=tensorboard, n_groups=n_groups,
                       refuse_key=arg.run_dir if run_dir is not None else arg.resume)
    server = session.server
    if server is not None:  # an attached viewer's Layers pane gets what an in-process monitor's does
        run.stats_for_viewers(server.watched)
    return session


# --------------------------------------------------------------------------- the seeded loader


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, in an order that is a function of (seed, epoch) only: the same in a resumed
    run as in a straight one. `set_epoch(e, skip)` names the epoch of the next pass and how many
    indices to leave out at its start; a pass without it takes the next epoch (so a plain
    `for batch in loader` outside `run.batches` still gets a new order each epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(_mix(self.seed, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        return iter(self.order(epoch)[skip:])

    def __len__(self) -> int:
        return self.n


class SeededLoader(DataLoader):
    """A DataLoader made by `seeded_loader` (see there)."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next pass is epoch `epoch`, without its first `skip_batches` batches (not loaded)."""
        self.sampler.set_epoch(epoch, skip_batches * (self.batch_size or 1))
        self.generator.manual_seed(_mix(self.sampler.seed + 1, epoch))  # the workers' base seed of this epoch


def _mix(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


def seeded_loader(dataset, batch_size: int = 1, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                  **loader_kwargs) -> DataLoader:
    """A `torch.utils.data.DataLoader` whose batch order is a function of (seed, epoch): use it in
    place of `DataLoader(dataset, batch_size=..., shuffle=True)` for an exact resume of
    `tui_trainer.loop` mid-epoch (`run.batches` tells it the epoch and skips the batches already
    done without loading them). The data workers' seeds are a function of (seed, epoch) too.
    Outside `run.batches`, each pass over it is the next epoch. `loader_kwargs` are the
    DataLoader's (num_workers, collate_fn, pin_memory ...), but not sampler, batch_sampler,
    generator or shuffle."""
    for key in ("sampler", "batch_sampler", "generator"):
        if key in loader_kwargs:
            raise TypeError(f"seeded_loader makes its own {key}; use a plain DataLoader for your own")
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError("seeded_loader needs a dataset with a length (a map-style Dataset)") from None
    generator = torch.Generator()
    generator.manual_seed(_mix(seed + 1, 0))
    return SeededLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n, shuffle, seed), drop_last=drop_last,
                        generator=generator, **loader_kwargs)


def _exact_loader(loader) -> bool:
    """A resume mid-epoch finds the same batches: ours, no shuffling, or a sampler with set_epoch
    that is not a RandomSampler (DistributedSampler)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if isinstance(loader, SeededLoader):
        return True
    if not isinstance(loader, DataLoader):
        return False
    sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
    return isinstance(sampler, SequentialSampler) or (hasattr(sampler, "set_epoch")
                                                      and not isinstance(sampler, RandomSampler))


# --------------------------------------------------------------------------- the run


class Run:
    """What your loop gets: `run.epochs(n)`, `run.batches(loader)`, `run.log(...)` and
    `run.log_epoch(...)`. `run.step` counts the batches done in the whole run, `run.epoch` is the
    0-based epoch in progress, `run.stopping` says that a stop was asked (the loop is ending),
    `run.run_dir` is where the run is written; `run.model`, `run.optimizer` and `run.scheduler` are
    the objects given to `loop`. (`run()`, `epoch_of_step`, `kill_workers` and `dist` are what the
    monitor drives it with.)"""

    def __init__(self, cfg: Preset, train_fn, *, model: nn.Module, optimizer, scheduler, interval: str, sink,
                 control: Control, run_dir, should_stop=None, layer_stats: bool = False, outer=(None, None)):
        self._cfg = cfg
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.run_dir = Path(run_dir.path)
        self.dist = Dist()  # one process
        self._fn = train_fn
        self._sink = sink
        self._control = control
        self._commands: queue.SimpleQueue = control.queue
        self._should_stop = should_stop or (lambda: False)
        self._asked_stop = should_stop  # None: nothing outside can ask (the fast path skips the call)
        self._outer = outer
        self._checkpoints = ckpt.CheckpointDir(run_dir.checkpoints, cfg.checkpoint.keep_last)
        self._device = next(model.parameters()).device
        self._params = list(model.parameters())
        self._layers = layer_rows(model)
        self._schedule = LrSchedule(optimizer, scheduler, "epoch", 0) if optimizer is not None else None
        self._interval = interval
        self._plan_from = _fresh_copy(optimizer, scheduler)
        self._log_every = cfg.train.log_every
        self._log_min_s = cfg.train.log_min_interval_s
        self._every_steps = cfg.checkpoint.every_steps
        self._stop_on_nonfinite = cfg.train.nonfinite == "stop"
        goals = cfg.goals
        self._monitor = cfg.checkpoint.monitor
        self._best = Best(resolve_mode(self._monitor, cfg.checkpoint.mode, goals))
        self._best_monitor = self._monitor  # what _best.value is: train_loss where an epoch logged no monitor
        self._said_unlogged = False  # the warning that the monitor is never logged, said once
        self._monitors_logged: set[str] = set()  # every number an epoch has logged (none falls back to train_loss)
        es = cfg.early_stopping
        self._early = EarlyStopping(resolve_mode(es.monitor, es.mode, goals), es.patience, es.min_delta) \
            if es.enabled else None
        self._layer_stats = layer_stats and optimizer is not None

        # position
        self.step = 0  # batches done in the whole run
        self.epoch = 0  # 0-based epoch in progress (= epochs completed)
        self._in_epoch = 0  # batches done in this epoch
        self._epoch_loss = [0.0, 0]
        self._epoch_more: dict[str, list[float]] = {}
        self._epoch_metrics: dict[str, Any] = {}  # run.log_epoch's, for the epoch in progress
        self._epoch_trained = False  # run.batches ran in this epoch
        self._n_epochs: int | None = None
        self._steps_per_epoch = 0
        self._seen_per_epoch = 0  # a loader with no len: the batches of its last whole epoch (for the ETA)
        self._planned_late = False  # ... and its LR plan, made once its first epoch gave a length (LrPlanned)
        self._batch_size = 0

        # state
        self._epochs_used = False
        self._left_epochs = False  # a break out of run.epochs: its epoch ends when train_fn returns
        self._left_mid = False  # the last run.batches was left before its end (a break, a return)
        self._read_lrs: tuple[float, ...] | None = None  # the LRs when the newest unreported loss was read
        self._started = False
        self._early_events: list[Event] = []
        self._warnings: list[str] = []
        self._emitting = False
        self._ended = False
        self._paused = False
        self._stop: Stop | None = None
        self._stopped_mid = False
        self._final_done = False
        self._final_error = ""
        self._nonfinite: str | None = None
        self._early_stopped = False
        self._saved_at: tuple[int, int, int] | None = None
        self._save_error = ""
        self._last_path: Path | None = None
        self._best_path: Path | None = None
        self._safe_failure: BaseException | None = None
        self._resumed_from: str | None = None
        self._rng: dict | None = None  # the RNG state to restore when train_fn starts
        self._warned_inexact = False
        self._warned_no_epochs = False
        self._iterator = None  # the DataLoader iterator run.batches is on (its workers: kill_workers)
        self._capture = None
        self._shape_hooks: list = []  # forward hooks taking the output shapes from the first forward
        self._shapes: dict[str, tuple[int, ...]] = {}

        # reports
        self._pending: list[Any] = []  # the losses since the last report: tensors (as logged) or floats
        self._pending_more: list[tuple[str, Any]] = []
        self._logged_step = -1  # the step the last run.log was for
        self._loss_step = -1  # the step the last logged loss was for
        self._reported_step = 0
        self._t_report = time.monotonic()
        self._t_tail: float | None = None  # when the epoch's batches ended (validation time follows)
        self._tail_seconds = 0.0
        self._step_time: float | None = None
        self._memory = MemoryProbe(self._device)
        self._mem_at = 0.0
        self._reported_at = 0.0  # when the last StepReport was sent (train.log_min_interval_s)
        self._wait = 0.0  # seconds waiting for batches since the last StepReport
        self._active = 0.0  # batch-loop seconds before _t_report whose losses are not reported yet
        self._unreported: list[float] = []  # losses read, not reported yet (an epoch's end between)
        self._epoch_waited = 0.0  # this epoch's seconds waiting for batches ...
        self._epoch_active = 0.0  # ... and in its batches (pauses left out), up to _epoch_t
        self._epoch_t = time.monotonic()
        self._bound_since: float | None = None
        self._bound_warned = False
        self._workers: int | None = None  # the loader's num_workers, for the input-bound advice
        self._stats = None
        self._stats_hooked: list = []  # the optimizer hooks that take them (_stats_hooks)
        self._stats_wanted = None  # stats_for_viewers: take them only while a viewer looks
        self._stats_due = False
        self._stats_at = 0.0
        self._stats_cost = 0.0

    # ------------------------------------------------------------------ what the loop calls

    @property
    def stopping(self) -> bool:
        """A stop was asked (a key, a signal, early stopping, a non-finite loss): the loop is ending."""
        return self._stop is not None

    @property
    def epoch_of_step(self) -> int:
        """The 1-based epoch of the last step done (0 before the first): every event's `epoch`."""
        return self.epoch + 1 if self._in_epoch else self.epoch

    def epochs(self, n: int) -> Iterator[int]:
        """0, 1, ... n-1 like `range(n)`, from the epoch a resume continues (module docstring: an
        epoch ends after its body; the checkpoint and the commands come between epochs). Ends early
        when a stop was asked."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"run.epochs(n): n is the number of epochs, a positive int (got {n!r})")
        if self._epochs_used:
            raise RuntimeError("run.epochs(n) is called once per loop (it continues where a resume starts)")
        self._epochs_used = True
        self._n_epochs = n
        return self._epochs(n)

    def _epochs(self, n: int) -> Iterator[int]:
        try:
            while self.epoch < n:
                if self._started and self._between():  # (before the first run.batches: at its first batch)
                    break
                self._epoch_trained = False
                yield self.epoch
                if self._stopped_mid:
                    self._note_unfinished_epoch()
                    return  # saved where it stopped
                self._end_epoch()
                if self._nonfinite:
                    return
            self._final_save()
        except GeneratorExit:  # a break out of run.epochs (or an exception passing through the loop)
            self._left_epochs = True
            raise

    def batches(self, loader) -> Iterator[Any]:
        """The batches of `loader` (any iterable; a DataLoader, or `seeded_loader` for an exact
        resume). Between batches the keys' commands are applied and pause waits; a stop ends the
        iteration. On resume, the batches of this epoch already done are skipped."""
        if self._stop is not None or self._nonfinite:
            return iter(())  # the loop is ending: no more batches, and the epoch stays as it was saved
        if self._epoch_trained:
            if self._epochs_used:
                raise RuntimeError(f"run.batches(...) a second time in epoch {self.epoch}: it gives the epoch's"
                                   " training batches, once per epoch (iterate validation loaders directly)")
            self._end_epoch()  # without run.epochs, each run.batches is an epoch
        elif not self._epochs_used and self._resumed_from and not self._warned_no_epochs:
            self._warned_no_epochs = True
            self._warn(f"resumed at epoch {self.epoch + 1} without run.epochs(n): your loop's own epoch counter"
                       " starts again from 0; use run.epochs(n) so that it continues")
        if not self._started:
            self._start(loader)
        return self._batches(loader)

    def _batches(self, loader) -> Iterator[Any]:
        self._epoch_trained, self._left_mid = True, False
        if self._t_tail is not None:
            self._tail_seconds = time.monotonic() - self._t_tail
            self._t_tail = None
        self._t_report = self._epoch_t = time.monotonic()  # samples/s measures training, not validation
        it = self._iterate(loader, self._in_epoch)
        self._workers = getattr(loader, "num_workers", None)
        empty, should_stop = self._commands.empty, self._asked_stop
        log_every, every, floor, clock = self._log_every, self._every_steps, self._log_min_s, time.perf_counter
        try:
            while True:
                # the fast path of every batch: nothing queued, not paused, no stop
                if self._paused or self._stop is not None or not empty() or (should_stop is not None and should_stop()):
                    if self._between():
                        if not self._steps_per_epoch or self._in_epoch < self._steps_per_epoch:
                            self._stopped_mid = True
                            self._final_save()
                        return
                try:
                    t = clock()
                    batch = next(it)
                    waited = clock() - t  # host time blocked on the data (no device sync)
                    self._wait += waited
                    self._epoch_waited += waited
                except StopIteration:
                    self._report(force=False)  # the epoch's last losses read, before the loop's validation prints
                    return
                except Exception as exc:
                    self._safe_failure = exc  # the state is the last safe point's: an emergency save is sound
                    raise
                if not self._batch_size:
                    self._batch_size = _batch_size_of(batch) or -1  # -1: no size to count samples by
                yield batch
                self.step = step = self.step + 1
                self._in_epoch += 1
                if step % log_every == 0 and time.monotonic() - self._reported_at >= floor:
                    self._report()
                if every and step % every == 0:
                    self._save(("step", "last"))
        except GeneratorExit:  # a break out of the batches (or an exception passing through)
            if self._logged_step == self.step + 1 and not self._ended:
                self.step += 1  # the batch in flight was trained (run.log was called for it)
                self._in_epoch += 1
            self._left_mid = not self._steps_per_epoch or self._in_epoch < self._steps_per_epoch
            raise
        finally:
            self._iterator = None
            self._t_tail = time.monotonic()
            if not self._paused:
                self._epoch_active += self._t_tail - self._epoch_t

    def log(self, loss=None, **more) -> None:
        """The loss of this batch (a tensor stays on its device: read once per report, every
        log_every batches), and any other numbers of it (their epoch means show as train_<name>).
        Called more than once in a batch, the last value counts.

        `loss` is the loss your step backwards: the tensor itself is kept until the report reads
        it, and its graph, whose buffers your `backward()` frees, costs nothing. A loss you log but
        never backward keeps its graph until that report: log `loss.detach()` then. The other
        numbers are kept without their graph (they need not be backwarded)."""
        step = self.step + 1
        if loss is not None:
            # The tensor itself, not its `.data` or `.detach()`: no new tensor a batch. Between two
            # tiny steps `.data` cost ~3.7 us a batch (its alias made on cold caches and freed at
            # the report; benchmarks/RESULTS.md, session 10). The graph is freed by the backward;
            # only its emptied nodes wait for the report. Read on the host at the report.
            value = loss if isinstance(loss, torch.Tensor) else _number("loss", loss)
            if self._loss_step == step and self._pending:
                self._pending[-1] = value
            else:
                self._pending.append(value)
                self._loss_step = step
        if more:
            for key, v in more.items():
                self._pending_more.append((key, v.data if isinstance(v, torch.Tensor) else _number(key, v)))
        self._logged_step = step

    def log_epoch(self, **metrics) -> None:
        """This epoch's results: val_loss, val_acc, and any other number (by its name: "val_f1").
        Shown in the epoch table when the epoch ends; `checkpoint.monitor` (default val_loss) picks
        the best epoch (best.pt). Tensors are fine (read here)."""
        for key, value in metrics.items():
            if value is None:
                self._epoch_metrics[key] = None
                continue
            try:
                self._epoch_metrics[key] = float(value.detach().float().mean() if isinstance(value, torch.Tensor)
                                                 else value)
            except (TypeError, ValueError):
                raise TypeError(f"run.log_epoch({key}=...) is a {type(value).__name__}; give a number") from None

    # ------------------------------------------------------------------ the engine's side: run()

    def run(self) -> Finished | Failed:
        """Run `train_fn(self)` to its end (the session's engine: a worker thread or headless)."""
        from tui_trainer.run.capture import Capture

        t0 = time.monotonic()
        self._capture = Capture(self._printed, lambda: self._emitting, outer=self._outer)
        undo = _compose(self.scheduler, self._schedule, self)
        if self._layer_stats:
            self._stats_hooked = self._stats_hooks()
        self._capture.start()
        try:
            for path in self._checkpoints.clean_stray():
                self._warn(f"removed an incomplete checkpoint left by a killed run: {path.name}")
            if undo is None and self.scheduler is not None:
                self._warn(f"the LR keys cannot be composed with {type(self.scheduler).__name__}: its next step()"
                           " may undo a change by hand")
            try:
                if self._rng is not None:
                    ckpt.set_rng_state(self._rng)
                    self._rng = None
                self._fn(self)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's loop: its failure is the run's
                return self._fail(exc, traceback.format_exc())
            try:
                return self._finish(t0)
            except Exception as exc:  # noqa: BLE001 - never a dead thread without a final event
                return self._fail(exc, traceback.format_exc())
        finally:
            self._ended = True
            self._capture.stop()
            for h in self._stats_hooked:
                h.remove()
            self._unhook_shapes()  # a loop that ended before its first forward
            if undo is not None:
                undo()

    def kill_workers(self) -> None:
        """SIGKILL the data workers of the loader `run.batches` is on (an abort: Session.abort)."""
        import signal

        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        for worker in getattr(self._iterator, "_workers", ()) or ():
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except (OSError, TypeError):
                pass

    # ------------------------------------------------------------------ safe points

    def _between(self) -> bool:
        """Apply queued commands; wait while paused. True when the loop must end (a stop)."""
        if self._commands.empty() and not self._paused and not self._should_stop():
            return self._stop is not None  # the fast path of every batch
        while True:
            try:
                while True:
                    self._apply(self._commands.get_nowait())
            except queue.Empty:
                pass
            if self._should_stop() and self._stop is None:
                self._apply(Stop(reason="cancelled"))
            if self._stop is not None:
                return True
            if not self._paused:
                return False
            try:  # paused: sleep on the queue, so that a command wakes us at once
                self._apply(self._commands.get(timeout=0.1))
            except queue.Empty:
                pass

    def _apply(self, cmd) -> None:
        if isinstance(cmd, SaveCheckpoint):
            self._save((cmd.tag, "last"))
        elif isinstance(cmd, ScaleLr):
            if self._schedule is None:
                self._warn("no optimizer was given to loop (optimizer=...): the LR keys change nothing")
                return
            self._schedule.scale(cmd.factor)
            self._emit(LrChanged(self.step, tuple(self._schedule.current()), self._schedule.manual_factor, "manual"))
        elif isinstance(cmd, SetTrainable):
            self._set_trainable(cmd.prefixes, cmd.trainable, cmd.rest)
        elif isinstance(cmd, Pause) and not self._paused:
            self._paused = True
            self._report()
            self._epoch_active += time.monotonic() - self._epoch_t
            self._set_state("paused")
        elif isinstance(cmd, Resume) and self._paused:
            self._paused = False
            self._t_report = self._epoch_t = time.monotonic()  # a pause is not slow training
            self._set_state("running")
        elif isinstance(cmd, Stop) and self._stop is None:
            self._stop = cmd
            self._set_state("stopping")

    def _set_trainable(self, prefixes: tuple[str, ...], trainable: bool, rest: bool | None = None) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        unknown = [p for p in prefixes if not any(matches(n, p) for n in names)]
        if unknown:
            self._warn(f"no layer named {', '.join(unknown)}; nothing changed")
            return
        for name, param in self.model.named_parameters():
            value = trainable if any(matches(name, p) for p in prefixes) else rest
            if value is None:
                continue
            param.requires_grad_(value)
            if not value:
                param.grad = None  # no stale gradient may reach the optimizer
        if isinstance(self.optimizer, torch.optim.LBFGS):
            self.optimizer.state.clear()  # its direction uses every parameter's history (engine/trainer.py)
        self._emit(TrainableChanged(self.step, tuple(prefixes), trainable, trainable_state(self.model, self._layers),
                                    sum(p.numel() for p in self._params if p.requires_grad),
                                    sum(p.numel() for p in self._params), "command"))

    def _end_epoch(self) -> None:
        """The epoch's body has run: EpochEnd, best, early stopping, the epoch checkpoint."""
        self._report(force=False)
        epoch_no = self.epoch + 1
        total, count = self._epoch_loss
        metrics = dict(self._epoch_metrics)
        train_loss = metrics.pop("train_loss", None)
        if train_loss is None and count:
            train_loss = total / count
        val_loss, val_acc = metrics.pop("val_loss", None), metrics.pop("val_acc", None)
        for key, (s, c) in self._epoch_more.items():
            name = key if key.startswith("train_") else f"train_{key}"
            metrics.setdefault(name, s / c if c else None)
        everything = {"val_loss": val_loss, "val_acc": val_acc, "train_loss": train_loss, **metrics}
        # an epoch without the monitored number (no run.log_epoch of it) is judged by its train_loss
        # when the monitor is a loss too, else not at all (stopping.monitored)
        # ... but only until the loop logs the monitor itself: after that an epoch without it is not judged (a
        # train loss against a best validation loss), and the first epoch with it starts the best afresh
        logged = {k for k, v in everything.items() if v is not None}
        if self._monitor in logged and self._best_monitor != self._monitor:
            self._best.value, self._best.epoch, self._best.bad_epochs = None, None, 0
        seen = self._monitors_logged
        seen |= logged
        if self._best_monitor == self._monitor and self._best.value is not None:
            seen.add(self._monitor)  # judged by it before (a resume's best too)
        value, monitor = monitored(everything, self._monitor, self._best.mode,
                                   None if self._monitor in seen else train_loss)
        if value is None and not self._said_unlogged and everything.get(self._monitor) is None:
            self._said_unlogged = True  # else a run with save_best made no best.pt, silently
            have = ", ".join(k for k, v in everything.items() if v is not None) or "nothing"
            what = ("it is not judged (only epochs that log it are)" if self._monitor in seen
                    else "no epoch is judged and no best.pt is kept")
            self._warn(f"checkpoint.monitor is {self._monitor} and epoch {epoch_no} logged none ({have}): {what};"
                       f" run.log_epoch({self._monitor}=...) each epoch, or"
                       f' checkpoint={{"monitor": "<one of those>"}}')
        improved = self._best.update(value, epoch_no) if value is not None else False
        if improved:
            self._best_monitor = monitor
        if self._early is not None:
            es = self._cfg.early_stopping
            self._early.update(monitored(everything, es.monitor, self._early.best.mode,
                                         None if es.monitor in seen else train_loss)[0], epoch_no)
        self.epoch += 1
        if not self._steps_per_epoch:
            self._seen_per_epoch = self._in_epoch
        self._in_epoch = 0
        self._epoch_loss = [0.0, 0]
        self._epoch_more = {}
        self._epoch_metrics = {}
        self._epoch_trained = False
        seconds = self._tail_seconds if self._t_tail is None else time.monotonic() - self._t_tail
        es = self._early.best if self._early is not None else None
        waited, wall = self._epoch_waited, self._epoch_active
        self._epoch_waited = self._epoch_active = 0.0
        self._emit(EpochEnd(epoch_no, self.step, train_loss, val_loss, val_acc, seconds, monitor, value,
                            self._best.value, self._best.epoch, improved, es.bad_epochs if es else 0,
                            self._early.patience if self._early is not None else None,
                            self._schedule.plateau_status() if self._schedule is not None else None, metrics,
                            waited / wall if wall > 0 else None))
        if (self._seen_per_epoch and self._n_epochs and not self._planned_late and self.optimizer is not None
                and not isinstance(self._plan_from, str)):
            # a loader with no len: now it has shown one epoch's length, plan every epoch as long
            self._planned_late = True
            per_epoch = self._seen_per_epoch
            total = self._n_epochs * per_epoch
            self._emit(LrPlanned(self.step, per_epoch, self._plan(total, self._group_names(), per_epoch)))
        cfg = self._cfg.checkpoint
        tags: list[str] = []
        if cfg.every_epochs and epoch_no % cfg.every_epochs == 0:
            tags += ["epoch", "last"]
        if improved and cfg.save_best:
            tags.append("best")
        if tags:
            self._save(tuple(tags))
        if self._early is not None and self._early.should_stop and self._stop is None:
            self._early_stopped = True
            self._apply(Stop(reason="early"))

    def _note_unfinished_epoch(self) -> None:
        if self._epoch_metrics:
            said = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in self._epoch_metrics.items())
            self._emit(Printed(self.step, f"epoch {self.epoch + 1} was stopped after {self._in_epoch} batches;"
                                          f" its log_epoch ({said}) is not an epoch result", "note"))
            self._epoch_metrics = {}

    # ------------------------------------------------------------------ reports

    def _report(self, force: bool = True) -> None:
        """Read the pending losses (one host read) and report every loss not reported yet. `force`
        False (an epoch's end): report only if train.log_min_interval_s has passed since the last
        report; else they go with the next one (short epochs do not double the reports)."""
        pending, more = self._pending, self._pending_more
        if not pending and not more and self.step == self._reported_step:
            return
        values, more_values = _read(pending, [v for _, v in more])
        more_keys = [k for k, _ in more]
        self._pending, self._pending_more = [], []
        finite = [v for v in values if math.isfinite(v)]
        self._epoch_loss[0] += sum(finite)
        self._epoch_loss[1] += len(finite)
        for key, v in zip(more_keys, more_values):
            if math.isfinite(v):
                acc = self._epoch_more.setdefault(key, [0.0, 0])
                acc[0] += v
                acc[1] += 1
        bad = next((v for v in values if not math.isfinite(v)), None) if len(finite) != len(values) else None
        now = time.monotonic()
        self._unreported += values
        if values and self.optimizer is not None:  # the LR they trained at: a report emitted later (after
            self._read_lrs = tuple(float(g["lr"]) for g in self.optimizer.param_groups)  # the loop's sched.step)
        if not force and bad is None and now - self._reported_at < self._log_min_s:
            self._active += now - self._t_report  # their training time, for samples/s
            self._t_report = now
            return
        values, self._unreported = self._unreported, []
        steps = self.step - self._reported_step
        dt = max(self._active + now - self._t_report, 1e-9)  # batch-loop time: validation and pauses left out
        self._t_report = self._reported_at = now
        self._active = 0.0
        wait, self._wait = min(self._wait, dt), 0.0
        if steps > 0:
            per_step = dt / steps
            self._step_time = per_step if self._step_time is None else 0.7 * self._step_time + 0.3 * per_step
        self._reported_step = self.step
        total = self._total_steps() or (self._n_epochs or 0) * self._seen_per_epoch  # (no len: as the last epoch)
        eta = None
        if total and self._step_time is not None:
            epochs_left = max(0, (self._n_epochs or 0) - self.epoch - 1)
            eta = max(0, total - self.step) * self._step_time + epochs_left * self._tail_seconds
        memory = None
        if now - self._mem_at >= 0.5:
            self._mem_at = now
            memory = self._memory.read()
        if self._schedule is not None and self._schedule.adopt():  # the loop wrote an LR itself
            self._emit(LrChanged(self.step, tuple(self._schedule.current()), self._schedule.manual_factor, "loop"))
        lrs = self._read_lrs or (tuple(float(g["lr"]) for g in self.optimizer.param_groups)
                                 if self.optimizer is not None else ())
        self._read_lrs = None
        self._emit(StepReport(self.step, self.epoch_of_step, self.step - len(values) + 1, tuple(values), lrs,
                              max(steps, 0) * max(self._batch_size, 0) / dt, eta, memory, data_wait=wait / dt))
        self._input_bound(wait / dt, now)
        if bad is not None and not self._nonfinite:
            if self._stop_on_nonfinite:
                self._end_nonfinite(f"non-finite loss ({bad}) by step {self.step}")
            else:
                self._warn(f"non-finite loss ({bad}) by step {self.step} (nonfinite = \"skip\": the loop goes on)")
        if self._stats_wanted is not None and (self._stats is not None) != self._stats_wanted():
            self._watch_layers(self._stats is None)
        if self._stats is not None and now - self._stats_at >= 0.5:
            self._stats_due = True
        if self._capture is not None:
            self._capture.ensure()
        if self._shape_hooks:
            self._shapes_seen()

    def _input_bound(self, share: float, now: float) -> None:
        """Warn once when the loop waited for its batches more than INPUT_BOUND of the time for
        INPUT_BOUND_S (as the engine does), with what to try."""
        if share <= INPUT_BOUND:
            self._bound_since = None
        elif self._bound_since is None:
            self._bound_since = now
        elif now - self._bound_since >= INPUT_BOUND_S and not self._bound_warned:
            self._bound_warned = True
            self._warn(input_bound_advice(share, self._workers, None))

    def _end_nonfinite(self, message: str) -> None:
        """Non-finite loss or weights: the loop ends like a stop, and nothing more is saved."""
        self._nonfinite = message
        if self._stop is None:
            self._apply(Stop(reason="nonfinite"))

    def _total_steps(self) -> int:
        return (self._n_epochs or 0) * self._steps_per_epoch

    # ------------------------------------------------------------------ checkpoints

    def _save(self, tags: tuple[str, ...]) -> Path | None:
        self._report(force="final" in tags or "emergency" in tags)  # read: no save after an unread non-finite loss
        if self._nonfinite:
            return None
        if not _finite(self._params):
            self._warn(f"checkpoint NOT saved at step {self.step}: the weights are not finite; the loop ends")
            self._end_nonfinite(f"non-finite weights at step {self.step}")
            return None
        t0 = time.monotonic()
        name = ckpt.file_name(tags, self.step, self.epoch)
        try:
            path, size = self._checkpoints.save(name, tags, self._state())
        except OSError as exc:
            why = ckpt.describe_write_error(exc, self._checkpoints.root)
            self._save_error = f"{name}: {why}"
            if "final" not in tags:
                goes_on = "" if "emergency" in tags else "; the previous checkpoint is intact; training goes on"
                self._warn(f"checkpoint NOT saved ({name}): {why}{goes_on}")
            return None
        if "last" in tags:  # where last.pt is: the final save skips only that (not a best.pt alone)
            self._saved_at = (self.step, self.epoch, self._in_epoch)
            self._last_path = self._checkpoints.root / "last.pt"
        if "best" in tags:
            self._best_path = self._checkpoints.root / "best.pt"
        self._emit(CheckpointSaved(self.step, self.epoch_of_step, str(path), tags, time.monotonic() - t0, size))
        return path

    def _final_save(self) -> None:
        """The run's last checkpoint, at the safe point where the loop ends (once)."""
        if self._final_done or self._nonfinite:
            return
        self._final_done = True
        self._report()
        if self._saved_at == (self.step, self.epoch, self._in_epoch) or self._nonfinite:
            return
        if self._save(("final", "last")) is None and not self._nonfinite:
            self._final_error = self._save_error or "the checkpoint could not be written"

    def _state(self) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "kind": "loop",
            "run_name": self._cfg.name,
            "saved_at": time.time(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self._in_epoch,
            "epoch_loss": list(self._epoch_loss),
            "epoch_more": {k: list(v) for k, v in self._epoch_more.items()},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "optimizer_class": type(self.optimizer).__name__ if self.optimizer is not None else None,
            "schedule": self._schedule.state_dict() if self._schedule is not None else None,
            "rng": ckpt.rng_state(),
            "trainable": {n: p.requires_grad for n, p in self.model.named_parameters()},
            "best": self._best.state_dict(),
            "best_monitor": self._best_monitor,
            "monitor": self._monitor,  # what `best` and `early_stopping` judged (ckpt.load_trainer_state's rule)
            "es_monitor": self._cfg.early_stopping.monitor,
            "early_stopping": self._early.best.state_dict() if self._early is not None else None,
            "config": self._cfg.to_dict(),
            "epochs": self._n_epochs,
            "steps_per_epoch": self._steps_per_epoch,
            "world": 1,
        }

    def _load(self, state: dict[str, Any], source: str) -> None:
        """Put a loop checkpoint back into the user's objects (before train_fn starts)."""
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise UserError(f"{source} is from another model ({lines[1][:160] if len(lines) > 1 else lines[0]})",
                            source=RESUME) from None
        trainable = state.get("trainable") or {}
        for name, param in self.model.named_parameters():
            param.requires_grad_(bool(trainable.get(name, param.requires_grad)))
        if self.optimizer is not None:
            if state.get("optimizer") is None:
                raise UserError(f"{source} holds no optimizer state (it was saved without optimizer=...)",
                                source=RESUME)
            ckpt.check_optimizer(state, self.optimizer, source, RESUME)
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise UserError(f"{source}: the optimizer state does not fit this optimizer ({exc})",
                                source=RESUME) from None
        if self._schedule is not None and state.get("schedule") is not None:
            saved = state["schedule"]
            if (saved.get("scheduler") is None) != (self.scheduler is None):
                has = "a" if saved.get("scheduler") is not None else "no"
                raise UserError(f"{source} was saved with {has} scheduler and this loop has"
                                f" {'one' if self.scheduler is not None else 'none'}", source=RESUME)
            try:
                self._schedule.load_state_dict(saved)
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{source}: the scheduler state does not fit this scheduler ({exc})",
                                source=RESUME) from None
            self._schedule.before_step(0)  # the LRs: the schedule's own value x the manual factor
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self._in_epoch = int(state["batch_in_epoch"])
        self._epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        self._epoch_more = {k: [float(v[0]), int(v[1])] for k, v in (state.get("epoch_more") or {}).items()}
        if note := resume_best(self._best, state.get("best"), self._monitor, state.get("monitor"),
                               "checkpoint.monitor", source):
            self._warnings.append(note)
        else:
            self._best_monitor = state.get("best_monitor", self._monitor)
        if self._best.value is not None:  # the result names the best.pt of the best it goes on from
            self._best_path = ckpt.best_file_of(source, self._best.epoch)
        if self._early is not None and (note := resume_best(
                self._early.best, state.get("early_stopping"), self._cfg.early_stopping.monitor,
                state.get("es_monitor"), "early_stopping.monitor", source)):
            self._warnings.append(note)
        self._rng = state["rng"]
        self._reported_step = self.step
        self._saved_at = (self.step, self.epoch, self._in_epoch)  # nothing new to save yet
        self._resumed_from = source

    # ------------------------------------------------------------------ start and end

    def _start(self, loader) -> None:
        """RunStarted, once: at the first run.batches (its loader says how long an epoch is)."""
        self._started = True
        self._device = next(self.model.parameters()).device  # the loop may have moved the model since
        self._memory = MemoryProbe(self._device)
        try:
            self._steps_per_epoch = len(loader) if loader is not None else 0
        except TypeError:
            self._steps_per_epoch = 0
        self._batch_size = int(getattr(loader, "batch_size", 0) or 0)
        epochs = self._n_epochs or 0
        total = self._total_steps()
        data = "your loop"
        if loader is not None:
            dataset = getattr(loader, "dataset", None)
            size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
            data = (f"your {type(loader).__name__}" + (f" of {type(dataset).__name__}" if dataset is not None else "")
                    + (f": {size} samples" if size is not None else "")
                    + (f", {self._steps_per_epoch} batches/epoch" if self._steps_per_epoch else ""))
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        names = self._group_names()
        lrs = tuple(float(g["lr"]) for g in groups)
        device_name = device_label(self._device)
        self._emit(RunStarted(
            run_name=self._cfg.name, run_dir=str(self.run_dir), device=str(self._device), device_name=device_name,
            amp="-", epochs=epochs, steps_per_epoch=self._steps_per_epoch, total_steps=total,
            batch_size=self._batch_size, start_step=self.step, start_epoch=self.epoch + 1, layers=self._layers,
            trainable=trainable_state(self.model, self._layers), params_total=sum(p.numel() for p in self._params),
            params_trainable=sum(p.numel() for p in self._params if p.requires_grad),
            plan=self._plan(total, names), lrs=lrs,
            manual_factor=self._schedule.manual_factor if self._schedule is not None else 1.0,
            weights=f"your {type(self.model).__name__}", data=data, monitor=self._monitor,
            resumed_from=self._resumed_from, warnings=tuple(self._warnings)))
        early, self._early_events = self._early_events, []
        for event in early:
            self._emit(event)
        if loader is not None:
            self._watch_shapes()
        self._set_state("running")

    def _group_names(self) -> list[str]:
        """The optimizer's param groups by name (their index where they have none)."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return [str(g.get("name", i)) for i, g in enumerate(groups)]

    def _plan(self, total: int, names: list[str], per_epoch: int = 0) -> LrPlan:
        from tui_trainer.parts.objects import plan_objects

        if self.optimizer is None:
            return LrPlan((), (0,), (), total, True, "no optimizer given to loop")
        lrs = tuple((float(g["lr"]),) for g in self.optimizer.param_groups)
        if total <= 0:
            why = "run.epochs(n) is not used" if not self._n_epochs else "the loader has no length"
            return LrPlan(tuple(names), (0,), lrs, total, True, f"not plannable: {why}")
        if isinstance(self._plan_from, str):
            return LrPlan(tuple(names), (0,), lrs, total, True, self._plan_from)
        dummy, copied = self._plan_from
        return plan_objects(dummy, copied, self._interval, 0, per_epoch or self._steps_per_epoch, total, names)

    def _finish(self, t0: float) -> Finished | Failed:
        if not self._started:
            self._start(None)
        if (self._left_epochs and self._left_mid and self._epoch_trained and not self._epoch_metrics
                and not self._stopped_mid and not self._nonfinite):
            # returned from inside run.batches, the epoch not done and not judged by the loop: as a stop,
            # not an epoch result (a best.pt from part of an epoch; a resume that skipped the rest)
            self._stopped_mid = True
        if self._epoch_trained and not self._stopped_mid and not self._nonfinite and (
                self._left_epochs or not self._epochs_used):
            self._end_epoch()  # a break out of run.epochs, or no run.epochs: the last epoch ends here
        self._report()
        self._final_save()
        if self._final_error:
            return self._final_failed()
        if self._nonfinite:
            status = "nonfinite"
        elif self._early_stopped:
            status = "early_stopped"
        elif self._stop is not None and self._stop.reason != "early":
            status = "signal" if self._stop.signum else "stopped"
        else:
            status = "completed"
        last = self._last_path or (self._checkpoints.root / "last.pt" if (self._checkpoints.root / "last.pt").exists()
                                   else None)
        messages = {
            "completed": f"finished {self.step} steps",
            "early_stopped": early_stop_message(self._cfg.early_stopping.monitor,
                                                self._early.best.bad_epochs if self._early else 0),
            "stopped": "stopped after a clean save" if self._stop and self._stop.reason == "cancelled"
            else "stopped by the user after a clean save",
            "signal": f"stopped by signal {self._stop.signum if self._stop else ''} after a clean save",
            "nonfinite": f"{self._nonfinite}: the loop stopped without a save"
                         + (f"; resume from the last finite checkpoint {last}" if last else ""),
        }
        code = {"nonfinite": 1, "signal": 128 + (self._stop.signum if self._stop and self._stop.signum else 0)
                }.get(status, 0)
        self._set_state("failed" if status == "nonfinite" else "finished")
        event = Finished(status, self.step, self.epoch_of_step, time.monotonic() - t0, code, messages[status],
                         self._best.value, self._best.epoch, _str(self._best_path), _str(last), self._best_monitor)
        self._emit(event)
        return event

    def _final_failed(self) -> Failed:
        last = self._checkpoints.root / "last.pt"
        have = (f"; the newest checkpoint on disk is {last}; free space (or fix the directory) and resume from it"
                if last.exists() else "; no checkpoint was written")
        self._set_state("failed")
        event = Failed(self.step, self.epoch_of_step, f"final checkpoint NOT saved at step {self.step}"
                                                      f" ({self._final_error}){have}", "", None)
        self._emit(event)
        return event

    def _fail(self, exc: BaseException, tb: str) -> Failed:
        if self._capture is not None:
            self._capture.flush()
        if not self._started:
            self._start(None)
        try:
            self._report()  # the losses of the batches that were done
        except Exception:  # noqa: BLE001 - the failure is what matters
            pass
        emergency = None
        if self._safe_failure is not None and _caused_by(exc, self._safe_failure):
            try:
                emergency = self._save(("emergency",))
            except Exception:  # noqa: BLE001
                emergency = None
        self._set_state("failed")
        event = Failed(self.step, self.epoch_of_step, _describe(exc, self._batch_size), tb, _str(emergency))
        self._emit(event)
        return event

    # ------------------------------------------------------------------ layer statistics (the app)

    def stats_for_viewers(self, wanted) -> None:
        """Take the layer statistics only while `wanted()` says a viewer is attached (a headless
        or detached loop): the optimizer hooks that take them are added at a report when one comes,
        and removed at a report once none is left, so a loop nobody watches runs without them."""
        if not self._layer_stats and hasattr(self.optimizer, "register_step_pre_hook"):
            self._stats_wanted = wanted

    def _watch_layers(self, on: bool) -> None:
        if on:
            self._stats_hooked = self._stats_hooks()
        else:
            for h in self._stats_hooked:
                h.remove()
            self._stats_hooked, self._stats, self._stats_due = [], None, False

    def _stats_hooks(self) -> list:
        """Per-layer gradient norms and update ratios, about twice a second within a 0.5% budget,
        from the user's own optimizer.step() (hooks on this optimizer, removed when the loop ends)."""
        from tui_trainer.engine.layer_stats import UpdateProbe

        self._stats = UpdateProbe(self.model, self._layers, self.optimizer)
        taking = [False]

        def before(optimizer, args, kwargs):
            if self._stats_due and not self._ended:
                t = time.perf_counter()
                self._stats.before_step()
                self._stats_cost = time.perf_counter() - t
                taking[0] = True

        def after(optimizer, args, kwargs):
            if taking[0]:
                taking[0] = False
                t = time.perf_counter()
                grad, ratio = self._stats.after_step()
                cost = self._stats_cost + time.perf_counter() - t
                self._stats_due = False
                self._stats_at = time.monotonic() + max(0.0, cost / STATS_BUDGET - 0.5)
                self._emit(LayerStats(self.step + 1, grad, ratio))

        try:
            return [self.optimizer.register_step_pre_hook(before), self.optimizer.register_step_post_hook(after)]
        except AttributeError:  # an optimizer without step hooks
            self._stats = None
            return []

    # ------------------------------------------------------------------ output shapes

    def _watch_shapes(self) -> None:
        """The layer table's output column: RunStarted has none (no batch at start, and a dry forward
        of the user's model would move its BatchNorm statistics and its RNG), so forward hooks take
        each row's first output shape from the loop's own first forward. When the model's forward
        returns, or at the first report if it is never called whole (its parts called one by one),
        one LayerShapes goes out and the hooks are removed. A compiled model is left alone (a hook
        would cost it a second compilation)."""
        if hasattr(self.model, "_orig_mod") or getattr(self.model, "_compiled_call_impl", None) is not None:
            return
        rows = {r.name for r in self._layers}
        shapes = self._shapes

        def hook(name):
            def record(_module, _inputs, output):
                if name not in shapes:
                    tensor = first_tensor(output)
                    if tensor is not None:
                        shapes[name] = tuple(tensor.shape)
            return record

        try:
            self._shape_hooks = [m.register_forward_hook(hook(n)) for n, m in self.model.named_modules() if n in rows]
            self._shape_hooks.append(self.model.register_forward_hook(lambda *_: self._shapes_seen()))
        except RuntimeError:  # a module that takes no hooks (a scripted one): the column stays empty
            self._unhook_shapes()

    def _shapes_seen(self) -> None:
        self._unhook_shapes()
        if self._shapes:
            self._emit(LayerShapes(self.step, tuple(self._shapes.get(r.name) for r in self._layers)))

    def _unhook_shapes(self) -> None:
        for handle in self._shape_hooks:
            handle.remove()
        self._shape_hooks = []

    # ------------------------------------------------------------------ plumbing

    def _iterate(self, loader, skip: int):
        """An iterator over `loader` for epoch `self.epoch`, without its first `skip` batches."""
        if isinstance(loader, SeededLoader):
            loader.set_epoch(self.epoch, skip)
            it = iter(loader)
        else:
            for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None),
                                                                      "sampler", None)):
                if sampler is not None and callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(self.epoch)
                    break
            if not skip:
                it = iter(loader)
            else:
                if not _exact_loader(loader) and not self._warned_inexact:
                    self._warned_inexact = True
                    self._warn(f"resumed in the middle of epoch {self.epoch + 1}: the loader shuffles with torch's"
                               f" global RNG, so the {skip} batches skipped are not the ones done before (use"
                               " tui_trainer.seeded_loader for an exact resume)")
                rng = ckpt.rng_state()  # skipping draws nothing a straight run had not drawn by now
                it = iter(loader)
                for _ in range(skip):
                    try:
                        next(it)
                    except StopIteration:
                        break
                ckpt.set_rng_state(rng)
        self._iterator = it
        return it

    def _printed(self, text: str, stream: str) -> None:
        self._emit(Printed(self.step, text, stream))

    def _warn(self, message: str) -> None:
        if not self._started:
            self._warnings.append(message)
        self._emit(RunWarning(self.step, message))

    def _set_state(self, state: str) -> None:
        self._emit(StateChanged(state, self.step))

    def _emit(self, event: Event) -> None:
        if not self._started and not isinstance(event, RunStarted):
            self._early_events.append(event)  # shown right after RunStarted
            return
        self._emitting = True
        try:
            self._sink(event)
        finally:
            self._emitting = False


# --------------------------------------------------------------------------- helpers


def _compose(scheduler, schedule: LrSchedule | None, run: Run):
    """Make the user's `scheduler.step()` keep "LR = the schedule's own value x the manual factor"
    (module docstring): the instance's class becomes a subclass whose step() goes through the
    schedule. Returns the undo, or None when the class cannot be swapped."""
    if scheduler is None or schedule is None:
        return None
    cls = type(scheduler)

    def step(self, *args, **kwargs):
        if self is not scheduler or run._ended:  # a copy (the LR plan's), or after the loop
            return cls.step(self, *args, **kwargs)
        groups = schedule.optimizer.param_groups
        schedule.adopt()
        before = list(schedule.base)
        for group, base in zip(groups, schedule.base):
            group["lr"] = base  # the scheduler sees only its own value
        try:
            return cls.step(self, *args, **kwargs)
        finally:
            schedule.base = [g["lr"] for g in groups]
            schedule._apply(schedule._applied_warmup if schedule._applied_warmup > 0 else 1.0)
            if schedule.plateau and schedule.base != before:
                run._emit(LrChanged(run.step, tuple(schedule.current()), schedule.manual_factor, "plateau"))

    sub = type(cls.__name__, (cls,), {"step": step, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                      "__doc__": cls.__doc__})
    try:
        scheduler.__class__ = sub
    except TypeError:
        return None

    def undo() -> None:
        if type(scheduler) is sub:
            scheduler.__class__ = cls

    return undo


def _fresh_copy(optimizer, scheduler):
    """(optimizer, scheduler) copies as they are now, for the LR plan; or why there is no plan."""
    if optimizer is None:
        return "no optimizer given to loop"
    try:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [nn.Parameter(torch.zeros(1))]}
                  for g in optimizer.param_groups]
        dummy = torch.optim.SGD(groups, lr=float(optimizer.param_groups[0]["lr"]))
        copied = copy.deepcopy(scheduler, memo={id(optimizer): dummy}) if scheduler is not None else None
    except Exception as exc:  # noqa: BLE001 - the user's scheduler: no plan, the run goes on
        return f"not plannable: copying {type(scheduler).__name__} failed ({type(exc).__name__})"
    return dummy, copied


def _read(losses: list, more: list) -> tuple[list[float], list[float]]:
    """Every pending number on the host: the tensors in one `.tolist()` (one device sync per
    report; on CPU one float() each). A tensor with more than one element counts as its mean."""
    items = [*losses, *more]
    tensors = [v for v in items if isinstance(v, torch.Tensor)]
    if not tensors:
        return items[:len(losses)], items[len(losses):]
    with torch.no_grad():  # a logged loss keeps its (backwarded) graph: read it without adding to it
        return _read_tensors(items, tensors, len(losses))


def _read_tensors(items: list, tensors: list[torch.Tensor], n_losses: int) -> tuple[list[float], list[float]]:
    if all(t.is_cpu and t.numel() == 1 for t in tensors):
        # on CPU a read waits for nothing: each number by itself is 2-4x cheaper than a stack and its
        # tolist (~2-5 against ~10-45 us for 6-10 losses between two steps)
        values = [float(v) for v in items]
        return values[:n_losses], values[n_losses:]
    try:
        stacked = torch.stack(tensors)  # 0-dim losses: the common case, one op
        values = (stacked if stacked.dim() == 1 else stacked.reshape(len(tensors), -1).float().mean(1)).tolist()
    except RuntimeError:  # shapes or devices differ: a mean of each, then one read per device
        values = [float(v.float().mean()) for v in tensors]
    if len(tensors) < len(items):
        it = iter(values)
        values = [next(it) if isinstance(v, torch.Tensor) else v for v in items]
    return values[:n_losses], values[n_losses:]


def _finite(params: list[torch.Tensor]) -> bool:
    """Every weight finite: one host read (at save time only)."""
    with torch.no_grad():
        norms = torch._foreach_norm([p.detach() for p in params])
        try:
            return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
        except RuntimeError:  # parameters on several devices
            return all(bool(torch.isfinite(n)) for n in norms)


def _batch_size_of(batch) -> int:
    from tui_trainer.parts.step import batch_size_of

    try:
        return batch_size_of(batch)
    except Exception:  # noqa: BLE001 - whatever the loader yields
        return 0


def _caused_by(exc: BaseException, cause: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if exc is cause:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _number(key: str, value) -> float:
    """A value given to run.log that is not a tensor, as a float; a TypeError naming the argument
    (the run then fails at the user's own line) for anything else."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"run.log({key}=...) is a {type(value).__name__} ({value!r:.40}); give a number or a"
                        " tensor") from None


def _describe(exc: BaseException, batch_size: int) -> str:
    """One line about a failure of the user's loop."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) in your loop"
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if text.startswith("Caught ") and lines:  # re-raised from a DataLoader worker: the cause is last
        text = lines[-1].split(":", 1)[-1].strip()
    elif lines:
        text = lines[0]
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower():
        size = f" at batch size {batch_size}" if batch_size > 0 else ""
        return (f"out of memory{size}: try a smaller batch, torch.autocast, or freezing more layers"
                f" ({type(exc).__name__}: {text[:160]})")
    return f"{type(exc).__name__}: {text[:300]}"


def _str(path) -> str | None:
    return str(path) if path else None
