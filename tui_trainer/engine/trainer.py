"""The training loop. It knows no screen: it emits events to `sink` and applies commands from a
queue between steps. The loop reads top to bottom: `run` -> `_train` (epochs) -> `_step` (one batch;
`train.accumulate` batches make one optimizer step) -> `_between_steps` (commands); below it, what
they call. The step itself is `parts.step_fn(model, batch, loss_fn)` (parts/step.py: the default
classifier step or the user's), called here under autocast.

What runs every step stays in this file (the loop, the update, the commands, the report, the
callbacks' hooks: about 500 lines) so that a step can be followed without leaving it. What runs rarely lives next to it:
`epochs.py` the end of an epoch (validation, best, early stopping, the epoch checkpoint),
`checkpoint.py` what a checkpoint holds (`state_dict`) and how it is written, `stopping.py` early
stopping and the non-finite guard, `endings.py` how a run ends (Finished or Failed).

Host syncs: the step path has none on CUDA. Losses stay on the device and are read in one
`.tolist()` per report (`log_every` steps, at most one every `train.log_min_interval_s`);
everything else that reads a value (validation, layer stats, the finite-weights check before a
save) runs at report, epoch or save time.

Many ranks: one collective about every SYNC_EVERY_S (`_sync`) carries the losses since the last
one, every rank's memory, rank 0's commands (their number; their JSON follows only when there are
some) and the number of steps to the next sync, which rank 0 picks from its pace and lands on the
epoch's end. On CPU that collective (an all_gather) starts before the syncing step's backward and is waited for
after its update, so it overlaps the step. Every rank applies the same commands after the same
step, and no rank decides by its own clock.
"""

from __future__ import annotations

import contextlib
import math
import queue
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import torch

from tui_trainer.parts import Parts
from tui_trainer.parts.batches import PreloadedBatches
from tui_trainer.parts.callbacks import HOOKS, hook_of, hook_parameters
from tui_trainer.parts.layers import matches, trainable_state
from tui_trainer.parts.step import loss_of, to_device
from tui_trainer.config import resolve_mode
from tui_trainer.engine import checkpoint as ckpt
from tui_trainer.engine import endings, epochs, probes
from tui_trainer.engine.distributed import Dist
from tui_trainer.engine.commands import Command, Control, Pause, Resume, SaveCheckpoint, ScaleLr, SetTrainable, Stop
from tui_trainer.engine.events import (CheckpointSaved, Event, Failed, Finished, LayerStats, LrChanged, RunStarted,
                                       RunWarning, StateChanged, StepReport, TrainableChanged)
from tui_trainer.engine.layer_stats import UpdateProbe
from tui_trainer.engine.probes import MemoryProbe
from tui_trainer.engine.stopping import (Best, EarlyStopping, NonFinite, NonFiniteGuard, check_weights_finite,
                                         without_validation)

describe_failure = endings.describe_failure  # its import path before endings.py existed

Sink = Callable[[Event], None]
STATS_BUDGET = 0.005  # the share of wall time per-layer statistics may cost
SYNC_EVERY_S = 0.1  # many ranks: one collective (losses, memory, commands) about this often (`_sync`)
MAX_SYNC_EVERY = 1024  # steps between two syncs at most
# many ranks: each rank reads its memory for a sync at most this often (rank 0 shows it every 0.5 s);
# a read is ~20 us warm and ~180 us between two steps on 2 busy CPU ranks, at one sync per 0.1 s
MEMORY_EVERY_S = 0.25
INPUT_BOUND = 0.2  # the share of wall time waiting for batches above which a run is input-bound ...
INPUT_BOUND_S = 60.0  # ... when it stays there this long (a warning says what to try)
_END = object()
_NO_AUTOCAST = contextlib.nullcontext()  # train.amp = "off": one context for every step


def input_bound_advice(share: float, num_workers: int | None, preload: bool | None) -> str:
    """The warning for a run that waits for its data (the engine's, and tui_trainer.loop's)."""
    tries = []
    if num_workers is not None:
        tries.append(f"more loader workers (data.num_workers = {num_workers} now; about one per free CPU core)")
    if preload is False:
        tries.append("data.preload = true if the set fits in memory")
    tries += ["pin_memory=True on CUDA", "smaller images or a cheaper transform"]
    return (f"input-bound: the loop waited for its batches {share:.0%} of the time for over a minute (the device"
            f" idles meanwhile); try " + ", ".join(tries))


class Trainer:
    def __init__(
        self,
        parts: Parts,
        sink: Sink,
        *,
        checkpoint_dir: str | Path,
        run_dir: str | Path = ".",
        control: Control | None = None,
        should_stop: Callable[[], bool] | None = None,
        layer_stats_every_s: float | None = None,
        dist: Dist | None = None,
    ):
        self.parts, self.sink = parts, sink
        self.dist = dist or Dist()  # one process: every distributed call is a no-op
        self.preset = parts.preset
        self.model, self.optimizer, self.schedule = parts.model, parts.optimizer, parts.schedule
        if self.dist.active and self.preset.train.sync_bn:  # BatchNorm statistics over the global batch
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same parameters, in place
        self.net = self.dist.wrap(self.model, parts.device)  # what forward passes run through (DDP on many ranks)
        self.device = parts.device
        # data.preload keeps the set on the training device: its batches need no to_device (~3 us a step)
        self._move = not (isinstance(parts.data.train, PreloadedBatches) and parts.data.train.device == self.device)
        self.control = control or Control()
        self.commands: queue.SimpleQueue = self.control.queue
        self.should_stop = should_stop or (lambda: False)
        self.run_dir = Path(run_dir)
        self.checkpoints = ckpt.CheckpointDir(checkpoint_dir, self.preset.checkpoint.keep_last)
        self.callbacks = [cb for cb in parts.callbacks if callable(getattr(cb, "on_event", None))]
        # tutorial-style hooks (parts/callbacks.py): name -> [(callback, bound method, its parameters)]
        self._hook_fns = {h: [(cb, fn, hook_parameters(fn)) for cb in parts.callbacks
                              if (fn := hook_of(cb, h)) is not None] for h in HOOKS}
        self._hooks = bool(self._hook_fns["on_batch_end"])  # the only one called every step
        self.step_fn, self.loss_fn = parts.step_fn, parts.loss_fn

        train = self.preset.train
        self.log_every = train.log_every
        self.log_min_s = train.log_min_interval_s
        self.total_steps = parts.total_steps
        # samples per optimizer step, over every rank (the global batch)
        self.batch_size = self.preset.data.batch_size * train.accumulate * self.dist.world
        self.params = list(self.model.parameters())
        self.amp_dtype = parts.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype is torch.float16 else None
        self.needs_closure = isinstance(self.optimizer, torch.optim.LBFGS)
        self.clip, self.clip_type, self.clip_value = train.grad_clip_norm, train.grad_clip_norm_type, train.grad_clip_value
        self.accumulate = train.accumulate  # batches per optimizer step
        self.guard = NonFiniteGuard(train.nonfinite, closure=self.needs_closure, scaler=self.scaler is not None)
        self.bn_modules = [(n, m) for n, m in self.model.named_modules()
                           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

        # what best.pt and early stopping follow: without validation data, a val_ monitor is train_loss
        cp, es, goals = self.preset.checkpoint, self.preset.early_stopping, parts.goals
        has_val = parts.data.val is not None
        self.monitor, said = without_validation(cp.monitor, has_val, "checkpoint.monitor")
        self.es_monitor, es_said = without_validation(es.monitor, has_val, "early_stopping.monitor")
        # said when the preset names the monitor (the default val_loss of a run without validation
        # follows train_loss quietly: the epoch lines say "best train_loss"), or early stopping is on
        self.monitor_warnings = [m for m in (said if "monitor" in cp.model_fields_set else None,
                                             es_said if es.enabled else None) if m]
        self.best = Best(resolve_mode(self.monitor, cp.mode if self.monitor == cp.monitor else "auto", goals))
        self.best_monitor = self.monitor  # what best.value is: train_loss where an epoch had no monitor value
        self.early = (EarlyStopping(resolve_mode(self.es_monitor, es.mode if self.es_monitor == es.monitor else "auto",
                                                 goals), es.patience, es.min_delta)
                      if es.enabled else None)

        # position in the run
        self.step = 0  # optimizer steps done
        self.epoch = 0  # 0-based epoch in progress
        self.batch_in_epoch = 0  # steps done in this epoch
        self.epoch_loss = [0.0, 0]  # sum, count of this epoch's step losses
        self.resumed_from: str | None = None

        self._pending: list[torch.Tensor] = []  # device-side losses since the last report
        self._micro = 0  # batches of the optimizer step in progress (train.accumulate)
        self._micro_loss: torch.Tensor | None = None  # their loss so far (a device tensor)
        self._pending_first = 1  # the step number of _pending[0]
        self._values: list[float] = []  # losses read (reduced over the ranks), not reported yet
        self._values_first = 1  # the step number of _values[0]
        self._values_lrs: tuple[float, ...] | None = None  # the LRs when the newest of _values was read
        self._rank_slots: list[float] = []  # every rank's memory, as the last sync had it (probes.unpack)
        self._mine_read, self._mine_at = None, -math.inf  # this rank's memory, read at most every MEMORY_EVERY_S
        self._mine_slot: list[float] = []  # ... as one slot (probes.slot): what a CPU sync gathers
        self._reported_at = 0.0  # when the last StepReport was sent (train.log_min_interval_s)
        self._wait = 0.0  # seconds spent waiting for batches since the last StepReport
        self._active = 0.0  # training seconds before _t_report not reported yet (an epoch's end between)
        self._epoch_waited = 0.0  # this epoch's seconds waiting for batches ...
        self._epoch_active = 0.0  # ... and of training (validation and pauses left out), up to _epoch_t
        self._epoch_t = time.monotonic()
        self._bound_since: float | None = None  # input-bound since (INPUT_BOUND)
        self._bound_warned = False
        self._paused = False
        self._share_now = True  # many ranks: share rank 0's commands before the first step (--paused)
        self._sync_at = 1  # many ranks: the step after which every rank syncs next (rank 0 picks it)
        self._fused = self.device.type == "cpu"  # many ranks: the losses ride in the sync's collective (_sync)
        # ... started before the backward of the sync's step (not LBFGS: its closure holds the backward)
        self._early_sync = self.dist.active and self._fused and not self.needs_closure
        self._started: tuple | None = None  # a sync under way: (work, gathered, losses, first step, commands)
        self.early_syncs = 0  # syncs started before their step's backward (tests, benchmarks)
        self._synced_step, self._synced_t = 0, time.monotonic()
        self._stop: Stop | None = None
        self._saved_step = -1
        self._save_error = ""
        self._in_update = False
        self._last_path: Path | None = None
        self._best_path: Path | None = None
        self._t_report = time.monotonic()
        self._step_time: float | None = None
        self._val_seconds = 0.0
        self._memory = MemoryProbe(self.device)
        self._mem_at = 0.0
        self._stats = UpdateProbe(self.model, parts.layers) if layer_stats_every_s else None
        self._stats_every = layer_stats_every_s or 0.0
        self._stats_wanted: Callable[[], bool] | None = None  # None: always (a monitor in this process)
        self._stats_at = 0.0
        self._stats_due = False
        self._stats_cost = 0.0

    def stats_for_viewers(self, wanted: Callable[[], bool], every_s: float = 0.5) -> None:
        """Take the layer statistics (the Layers pane's gradient norm and update ratio) only while
        `wanted()` says someone looks: a viewer attached to a headless, detached or many-rank run.
        On rank 0 alone: its gradients and weights are every rank's after the all-reduce."""
        if self._stats is None:
            self._stats = UpdateProbe(self.model, self.parts.layers)
            self._stats_every = every_s
            self._stats_wanted = wanted

    @property
    def epoch_of_step(self) -> int:
        """The 1-based epoch of the last step done (0 before the first): the `epoch` every event
        carries (events.py). `self.epoch` is the 0-based epoch in progress, so at an epoch boundary,
        once `batch_in_epoch` is back to 0, the last step done belongs to epoch `self.epoch`."""
        return self.epoch + 1 if self.batch_in_epoch else self.epoch

    # ------------------------------------------------------------------ the loop

    def run(self) -> Finished | Failed:
        t0 = time.monotonic()
        for path in self.checkpoints.clean_stray():
            self._emit(RunWarning(self.step, f"removed an incomplete checkpoint left by a killed run: {path.name}"))
        self._emit(self._run_started())
        for message in (*self.parts.warnings, self.guard.warning, *self.monitor_warnings):
            if message:
                self._emit(RunWarning(self.step, message))
        self._set_state("running")
        self._t_report = self._epoch_t = time.monotonic()  # the windows start with the training
        try:
            status = self._train()
            # inside the try: the last report or the final save can still find a non-finite loss
            return self._finish(status, t0)
        except NonFinite as exc:
            return endings.end_nonfinite(self, exc, t0)
        except Exception as exc:  # noqa: BLE001 - any failure ends as a Failed event, never a dead thread
            return endings.fail(self, exc)
        finally:
            self.parts.data.close()  # worker processes end with the run (a failure must not leave them)

    def _train(self) -> str:
        data = self.parts.data
        while self.epoch < self.preset.train.epochs and self.step < self.total_steps:
            data.train_batches.set_epoch(self.epoch, self.batch_in_epoch)  # skips the steps done (resume)
            self._train_mode()
            if self.batch_in_epoch == 0 and self._hook("on_epoch_start", epoch=self.epoch):
                self.control.send(Stop(reason="callback"))  # applied before the first step, as a key would be
            batches, clock = iter(data.train), time.perf_counter
            while True:
                t = clock()
                batch = next(batches, _END)
                waited = clock() - t  # host time blocked on the data (no device sync)
                self._wait += waited
                self._epoch_waited += waited
                if batch is _END:
                    break
                if not self._micro and (status := self._between_steps()):
                    return status  # commands act between optimizer steps, never inside an accumulation
                if not self._step(batch):
                    continue  # train.accumulate: more batches before this optimizer step
                if self.dist.active:
                    if self.step >= self._sync_at:
                        self._sync()
                elif self.step % self.log_every == 0 and time.monotonic() - self._reported_at >= self.log_min_s:
                    self._report()
                every = self.preset.checkpoint.every_steps
                if every and self.step % every == 0:
                    self._save(("step", "last"))
                if self.step >= self.total_steps:
                    break
            if status := self._between_steps():
                return status
            if self.batch_in_epoch < self.parts.steps_per_epoch:
                # train.max_steps ended the run mid-epoch: the epoch is not over (no validation,
                # no epoch scheduler step), so a resume continues with its next batch.
                return "completed"
            if self._end_epoch():
                return "early_stopped"
            if self._stop is not None:
                return self._stop_status()
        return "completed"

    def _step(self, batch) -> bool:
        """Forward and backward one batch; after `train.accumulate` of them, the optimizer step.
        True when an optimizer step was done (the step counter moved)."""
        if self._move:
            batch = to_device(batch, self.device)
        if self.schedule.needs_per_step and not self._micro:
            self.schedule.before_step(self.step)
        if self.needs_closure:  # LBFGS (accumulate is 1: checked at start)
            loss = self.optimizer.step(lambda: self._closure(batch))
        else:
            with self._autocast():
                loss = loss_of(self.step_fn(self.net, batch, self.loss_fn))
            if self.accumulate > 1:
                loss = loss / self.accumulate  # the mean over the step's batches, as one big batch would give
            if self._early_sync and self.step + 1 >= self._sync_at and self._micro + 1 >= self.accumulate:
                self._start_sync(loss.detach() if self._micro_loss is None else self._micro_loss + loss.detach())
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            if self.accumulate > 1:
                self._micro += 1
                self._micro_loss = loss.detach() if self._micro_loss is None else self._micro_loss + loss.detach()
                if self._micro < self.accumulate:
                    return False
                loss, self._micro, self._micro_loss = self._micro_loss, 0, None
            if self.guard.skips and not self.guard.update_is_finite(loss, self.params):
                self.optimizer.zero_grad(set_to_none=True)  # no update from this batch
                self.guard.skipped(self.step + 1)
            else:
                self._update()
        self.step += 1
        self.batch_in_epoch += 1
        if not self._pending:
            self._pending_first = self.step
        # the tensor itself: the engine has just backwarded it, so its graph holds no buffers; no
        # alias made a step (`.data` cost ~3.7 us between two tiny steps). Read with .item() (no
        # warning for a tensor that requires grad) or stacked under no_grad.
        self._pending.append(loss)
        if self.schedule.needs_per_step:
            self.schedule.after_step(self.step)
        if self._hooks and self._hook("on_batch_end", loss=loss):
            self.control.send(Stop(reason="callback"))
        return True

    def _between_steps(self) -> str | None:
        """Apply queued commands; wait while paused. Returns a status when the run must end."""
        if self.dist.active:
            return self._between_steps_shared()
        if self.commands.empty() and not self.should_stop() and not self._paused:
            return None  # the fast path of every step
        while True:
            self._drain_commands()
            if self._stop is not None:
                return self._stop_status()
            if not self._paused:
                return None
            try:  # paused: sleep on the queue so a command wakes us at once
                self._apply(self.commands.get(timeout=0.1))
            except queue.Empty:
                pass

    def _between_steps_shared(self) -> str | None:
        """Many ranks: commands reach every rank in the syncs after steps (`_sync`); here only before
        the first step (a --paused start) and while paused, when every rank waits here and asks rank
        0 every 0.1 s (Dist.share, on the CPU control group)."""
        while True:
            if self._stop is not None:  # applied in the last sync, on every rank at the same step (it waited
                return self._stop_status()  # for the epoch's end, as nothing here looked at it)
            if not self._share_now and not self._paused:
                return None  # the fast path of every step
            self._share_now = False
            for cmd in self.dist.share(self._rank0_commands() if self.dist.writer else []):
                self._apply(cmd)
            if self._stop is not None:
                return self._stop_status()
            if not self._paused:
                self._synced_step, self._synced_t = self.step, time.monotonic()  # a pause is not the pace
                return None
            time.sleep(0.1)  # paused: every rank asks again in a moment

    def _rank0_commands(self) -> list[Command]:
        """Rank 0: its queued commands, and a stop it was asked for (a cancelled worker)."""
        mine = self._queued()
        if self.should_stop() and self._stop is None:
            mine.append(Stop(reason="cancelled"))
        return mine

    def _sync_every(self, ahead: int = 0) -> int:
        """Rank 0: in how many steps every rank syncs next. About SYNC_EVERY_S from the pace since the
        last sync (1 before a pace is known), spread evenly so that a sync lands on the epoch's last
        step (the epoch's end then has nothing left to reduce); with train.log_min_interval_s = 0,
        on every multiple of log_every too. `ahead` 1: asked before the syncing step's backward
        (`_start_sync`), answered as after that step."""
        now, step = time.monotonic(), self.step + ahead
        steps, elapsed = step - self._synced_step, now - self._synced_t
        self._synced_step, self._synced_t = step, now
        every = max(1, min(MAX_SYNC_EVERY, int(SYNC_EVERY_S * steps / elapsed))) if steps > 0 and elapsed > 0 else 1
        in_epoch = (self.batch_in_epoch + ahead) % self.parts.steps_per_epoch  # 0 at an epoch's end: the next's
        left = min(self.parts.steps_per_epoch - in_epoch, self.total_steps - step)
        if left > 0:
            every = math.ceil(left / max(1, round(left / every)))
        if self.log_min_s == 0:
            every = min(every, self.log_every - step % self.log_every)
        return every

    # ------------------------------------------------------------------ one batch

    def _update(self) -> None:
        """Clip, step the optimizer, and take the layer statistics when they are due."""
        stats = self._stats_due
        if self.scaler is not None and (self.clip or self.clip_value or stats):
            self.scaler.unscale_(self.optimizer)
        if self.clip_value:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, norm_type=self.clip_type, foreach=True)
        if stats:
            t_stats = time.perf_counter()
            self._stats.before_step()
            self._stats_cost = time.perf_counter() - t_stats
        self._in_update = True
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._in_update = False
        self.optimizer.zero_grad(set_to_none=True)
        if stats:
            self._layer_stats()

    def _closure(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = loss_of(self.step_fn(self.net, batch, self.loss_fn))
        loss.backward()
        return loss

    def _autocast(self):
        if self.amp_dtype is None:
            return _NO_AUTOCAST  # reusable: one object for every step
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_mode(self) -> None:
        self.model.train()
        if self.preset.train.freeze_bn_stats:
            # BatchNorm of fully frozen layers: keep its running statistics too
            for name, module in self.bn_modules:
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()

    # ------------------------------------------------------------------ commands

    def _apply(self, cmd: Command) -> None:
        if isinstance(cmd, SaveCheckpoint):
            self._save((cmd.tag, "last"))
        elif isinstance(cmd, ScaleLr):
            self.schedule.scale(cmd.factor)
            self._emit(LrChanged(self.step, tuple(self.schedule.current()), self.schedule.manual_factor, "manual"))
        elif isinstance(cmd, SetTrainable):
            self._set_trainable(cmd.prefixes, cmd.trainable, rest=cmd.rest)
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

    def _set_trainable(self, prefixes: tuple[str, ...], trainable: bool, source: str = "command",
                       rest: bool | None = None) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        unknown = [p for p in prefixes if not any(matches(n, p) for n in names)]
        if unknown:
            self._emit(RunWarning(self.step, f"no layer named {', '.join(unknown)}; nothing changed"))
            return
        for name, param in self.model.named_parameters():
            value = trainable if any(matches(name, p) for p in prefixes) else rest
            if value is None:
                continue
            param.requires_grad_(value)
            if not value:
                param.grad = None  # no stale gradient may reach the optimizer
        if self.needs_closure:
            # LBFGS moves every parameter along a direction built from its history of all of them,
            # gradient or not, so a frozen one would still move. From a fresh history the direction
            # is exactly zero where the gradient is: frozen stays bit-identical.
            self.optimizer.state.clear()
        if self.model.training:
            self._train_mode()
        if self.dist.active:  # DDP buckets the parameters that required grad when built: build it again
            self.net = self.dist.wrap(self.model, self.device)
        self._emit(self._trainable_event(prefixes, trainable, source))

    def _trainable_event(self, prefixes, trainable, source) -> TrainableChanged:
        return TrainableChanged(self.step, tuple(prefixes), trainable,
                                trainable_state(self.model, self.parts.layers),
                                sum(p.numel() for p in self.params if p.requires_grad),
                                sum(p.numel() for p in self.params), source)

    def _stop_status(self) -> str:
        return "signal" if self._stop is not None and self._stop.signum else "stopped"

    def _queued(self) -> list[Command]:
        """Every command queued now, in order (taken off the queue)."""
        out: list[Command] = []
        try:
            while True:
                out.append(self.commands.get_nowait())
        except queue.Empty:
            return out

    def _drain_commands(self) -> None:
        """Apply every queued command now; a cancelled worker counts as a stop."""
        for cmd in self._queued():
            self._apply(cmd)
        if self.should_stop() and self._stop is None:
            self._stop = Stop(reason="cancelled")

    # ------------------------------------------------------------------ reporting

    def _sync(self) -> None:
        """Many ranks, at the step rank 0 named in the last sync: rank 0's commands and the steps to
        the next sync reach every rank; a StepReport follows when a multiple of log_every was passed;
        then every rank applies the same commands.

        On CPU (gloo) one all_gather carries it all with the losses and every rank's memory (`_read`).
        On CUDA the losses are on the device and reading them is a host sync, so the commands travel
        alone on the CPU control group (`Dist.share`: no CUDA sync) and the losses' all_reduce and
        read come only with a report, as in one process."""
        if self._fused:
            commands = self._finish_sync() if self._started is not None else self._read(share=True)
        else:
            writer = self.dist.writer
            commands = self.dist.share(self._rank0_commands() if writer else [], self._sync_every() if writer else 0)
            self._sync_at = self.step + self.dist.every
        first = self._values_first if self._values else self._pending_first  # the first step not reported
        if self.step // self.log_every > (first - 1) // self.log_every:
            self._report()
        for cmd in commands:
            self._apply(cmd)

    def _report(self, force: bool = True) -> None:
        """Report every loss not reported yet (read first: on many ranks a collective, which every
        rank reaches at the same point: an epoch's end, a save, a pause). `force` False (an epoch's
        end): read them, but report only if train.log_min_interval_s has passed since the last
        report; else they go with the next one (short epochs do not double the reports)."""
        if self._pending:
            self._read(share=False)
        if self._values and (force or time.monotonic() - self._reported_at >= self.log_min_s):
            self._emit_report()

    def _read(self, share: bool) -> list[Command]:
        """The pending losses, onto the host (the one host sync) into `_values`. Many ranks: in one
        collective with the rest of a sync (on CPU an all_gather of `_cpu_payload`, when `share` the
        sync itself; on CUDA an all_reduce of `_payload`);
        returns rank 0's commands (their JSON broadcast only when there are some). A non-finite loss
        stops here (train.nonfinite = "stop") after its report."""
        n, first = len(self._pending), self._pending_first
        if self.dist.active and self._fused:  # CPU ranks: the payload built on the host (`_cpu_payload`)
            payload, commands = self._cpu_payload([v.item() for v in self._pending], share)
            self._pending.clear()
            return self._synced(self.dist.gather_(payload).tolist(), n, first, share, commands)
        if not self.dist.active and self.device.type == "cpu":  # one CPU process: a float() each (loop._read)
            values = [v.item() for v in self._pending]
            self._pending.clear()
            self._take_losses(values, first)
            return []
        with torch.no_grad():
            stacked = torch.stack(self._pending).float() if n else torch.zeros(0, device=self.device)
        self._pending.clear()
        if not self.dist.active:
            self._take_losses(stacked.tolist(), first)  # the one host sync
            return []
        payload, commands = self._payload(stacked, share)
        self.dist.sum_([payload])
        return self._summed(payload.tolist(), n, first, share, commands)  # the one host sync

    def _payload(self, stacked: torch.Tensor, share: bool, ahead: int = 0) -> tuple[torch.Tensor, list]:
        """Many ranks: what a sync sums over the ranks, flat (float64): the losses (each rank's mean
        of each step), every rank's memory (each into its own slot: probes.pack) and, when `share`,
        rank 0's command count and its steps to the next sync (zeros on the others); with rank 0's
        commands (taken off its queue). On the losses' device: the CUDA way (`_cpu_payload` on CPU)."""
        slots = probes.packed(self._memory_now(), self.dist.rank, self.dist.world, stacked.device)
        commands, head = self._head(share, ahead)
        head = torch.tensor(head, dtype=torch.float64, device=stacked.device)
        return torch.cat([stacked.double(), slots, head]), commands

    def _cpu_payload(self, losses: list[float], share: bool, ahead: int = 0) -> tuple[torch.Tensor, list]:
        """What a sync gathers from a CPU rank (every rank's, in rank order: `Dist.gather_started`),
        flat (float64): its losses (its mean of each step), its memory (one slot: probes.slot) and,
        when `share`, rank 0's command count and its steps to the next sync (zeros on the others);
        with rank 0's commands (taken off its queue). Made from the losses read on the host (a CPU
        tensor's read waits for nothing): one tensor from one list, instead of six tensor ops
        (stack, casts, the memory slots, the head, cat) at ~15-50 us each between two steps."""
        self._memory_now()
        commands, head = self._head(share, ahead)
        return torch.tensor(losses + self._mine_slot + head, dtype=torch.float64), commands

    def _memory_now(self):
        """This rank's memory for a sync: read at most every MEMORY_EVERY_S (host-side calls on every
        rank, no CUDA sync, ~0.2-0.3 ms), with its slot (probes.slot) made once per read."""
        now = time.monotonic()
        if now - self._mine_at >= MEMORY_EVERY_S:
            self._mine_read, self._mine_at = self._memory.read(), now
            self._mine_slot = probes.slot(self._mine_read)
        return self._mine_read

    def _head(self, share: bool, ahead: int) -> tuple[list, list[float]]:
        """Rank 0's commands (taken off its queue when `share`) and the sync's head: their count and
        the steps to the next sync (zeros on the other ranks)."""
        commands = self._rank0_commands() if share and self.dist.writer else []
        return commands, [float(len(commands)), float(self._sync_every(ahead) if share and self.dist.writer else 0)]

    def _synced(self, read: list[float], n: int, first: int, share: bool, commands: list[Command]) -> list[Command]:
        """A CPU sync, read: every rank's `_cpu_payload` one after another (`Dist.gather_`). The
        losses are summed here in rank order (each step's sum is the same on every rank), then as
        `_summed`."""
        world, width = self.dist.world, len(probes.SLOT)
        if self.dist.alone:  # this rank's own payload alone (a failed rank's last save)
            rows = {self.dist.rank: read}
        else:
            row = len(read) // world
            rows = {r: read[r * row:(r + 1) * row] for r in range(world)}
        sums = list(map(sum, zip(*(v[:n] for v in rows.values())))) if n else []
        slots = [0.0] * (width * world)  # probes.pack's layout: each rank's slot at its rank
        for r, v in rows.items():
            slots[r * width:(r + 1) * width] = v[n:n + width]
        head = rows.get(0, read)[n + width:]  # rank 0's (zeros on the others)
        return self._summed(sums + slots + head, n, first, share, commands)

    def _summed(self, read: list[float], n: int, first: int, share: bool, commands: list[Command]) -> list[Command]:
        """A sync's sums, read: the global losses into `_values`, every rank's memory, and (`share`)
        the steps to the next sync and rank 0's commands, on every rank."""
        width = len(probes.SLOT)
        slots, head = read[n:n + width * self.dist.world], read[n + width * self.dist.world:]
        ranks = sum(slots[::width])  # how many ranks the sum holds (presence marks): world
        # each step's mean over the ranks, as float32 arithmetic gives it (float32 in, float32 out: a
        # quotient rounded from float64 to float32 is the float32 quotient)
        values = list(array("f", [v / ranks for v in array("f", read[:n])])) if n else []
        self._rank_slots = slots  # unpacked when a report shows them
        if share:
            count, every = int(head[0]), max(1, int(head[1]))
            self._sync_at = self.step + every
            commands = self.dist.commands(commands, count)
        self._take_losses(values, first)
        return commands

    def _start_sync(self, loss: torch.Tensor) -> None:
        """Many CPU ranks, before the backward of the step that syncs: its payload (the losses with
        this step's) starts on its all_gather, whose round trips then overlap the backward and the
        update (`_finish_sync` waits for it after the step). On 2 CPU ranks a sync waited for at
        once cost ~2-3 ms of a ~4 ms step, mostly threads handing off on busy cores."""
        first = self._pending_first if self._pending else self.step + 1
        losses = [v.item() for v in self._pending]
        losses.append(loss.item())
        payload, commands = self._cpu_payload(losses, share=True, ahead=1)
        self._started = (*self.dist.gather_started(payload), len(losses), first, commands)
        self.early_syncs += 1

    def _finish_sync(self) -> list[Command]:
        """The sync `_start_sync` started, read like `_read`'s."""
        work, gathered, n, first, commands = self._started
        self._started = None
        if work is not None:
            work.wait()
        del self._pending[:n]
        return self._synced(gathered.tolist(), n, first, True, commands)

    def _take_losses(self, values: list[float], first: int) -> None:
        """Read losses (global on many ranks) into `_values` and the epoch's sum."""
        values, warnings, nonfinite = self.guard.check_losses(values, first)
        for warning in warnings:
            self._emit(warning)
        if not self._values:
            self._values_first = first
        self._values += values
        if values:  # the LR they trained at: a report emitted later (after an epoch's scheduler step) shows it
            self._values_lrs = tuple(self.schedule.current())
        finite = [v for v in values if math.isfinite(v)]
        self.epoch_loss[0] += sum(finite)
        self.epoch_loss[1] += len(finite)
        if nonfinite is not None:
            self._emit_report()
            raise nonfinite

    def _emit_report(self) -> None:
        values, first = self._values, self._values_first
        self._values = []
        now = time.monotonic()
        dt = max(self._active + now - self._t_report, 1e-9)  # training time: validation and pauses left out
        self._t_report = self._reported_at = now
        self._active = 0.0
        wait, self._wait = min(self._wait, dt), 0.0
        per_step = dt / len(values)
        self._step_time = per_step if self._step_time is None else 0.7 * self._step_time + 0.3 * per_step
        remaining = self.total_steps - self.step
        epochs_left = max(0, math.ceil(self.total_steps / self.parts.steps_per_epoch) - self.epoch - 1)
        eta = remaining * self._step_time + epochs_left * self._val_seconds
        memory, ranks = None, ()
        if now - self._mem_at >= 0.5:  # what rank 0 emits: at most every 0.5 s (the others emit nothing)
            self._mem_at = now
            memory, ranks = ((self._mine_read, probes.unpack(self._rank_slots, self.dist.world)) if self.dist.active
                             else (self._memory.read(), ()))
        lrs, self._values_lrs = self._values_lrs or tuple(self.schedule.current()), None
        self._emit(StepReport(first + len(values) - 1, self.epoch_of_step, first, tuple(values), lrs,
                              len(values) * self.batch_size / dt, eta, memory, ranks, wait / dt))
        self._input_bound(wait / dt, now)
        if (self._stats is not None and now - self._stats_at >= self._stats_every
                and (self._stats_wanted is None or self._stats_wanted())):
            self._stats_due = True

    def _input_bound(self, share: float, now: float) -> None:
        """Warn once when the loop has waited for its batches more than INPUT_BOUND of the time for
        INPUT_BOUND_S, with what to try."""
        if share <= INPUT_BOUND:
            self._bound_since = None
            return
        if self._bound_since is None:
            self._bound_since = now
        elif now - self._bound_since >= INPUT_BOUND_S and not self._bound_warned:
            self._bound_warned = True
            data = self.preset.data
            self._emit(RunWarning(self.step, input_bound_advice(share, data.num_workers, data.preload)))

    def _layer_stats(self) -> None:
        t0 = time.perf_counter()
        grad, ratio = self._stats.after_step()
        cost = self._stats_cost + time.perf_counter() - t0
        self._stats_due = False
        # Self-budgeting: a stats step (weight snapshot + norms) may take at most ~0.5% of the time.
        self._stats_at = time.monotonic() + max(0.0, cost / STATS_BUDGET - self._stats_every)
        self._emit(LayerStats(self.step, grad, ratio))

    # ------------------------------------------------------------------ epochs

    def _end_epoch(self) -> bool:
        """Validate, track the best, step the epoch scheduler, checkpoint. True = stop early."""
        return epochs.end_epoch(self)  # a method: benchmarks/step_costs.py times it

    # ------------------------------------------------------------------ checkpoints

    def _save(self, tags: tuple[str, ...]) -> Path | None:
        # a save never follows a non-finite loss it has not read; the run's last ones report them too
        self._report(force="final" in tags or "emergency" in tags)
        check_weights_finite(self.params, self.step)
        t0 = time.monotonic()
        name = ckpt.file_name(tags, self.step, self.epoch)
        if not self.dist.writer:  # rank 0 writes; the others hold the same state, and name its files
            self._saved(tags, name)
            return self.checkpoints.root / name
        try:
            path, size = self.checkpoints.save(name, tags, self.state_dict())
        except OSError as exc:  # the write's CheckpointWriteError, or mkdir / link / rotate failing
            # A periodic save that fails (full disk, directory gone) warns and training goes on: the
            # previous checkpoint is intact and space may come back. The final save may not fail
            # quietly: `endings.finish` turns it into exit 1.
            why = ckpt.describe_write_error(exc, self.checkpoints.root)
            self._save_error = f"{name}: {why}"
            if "final" not in tags:  # `endings.final_save_failed` says that one (and training does not go on)
                goes_on = "" if "emergency" in tags else "; the previous checkpoint is intact; training goes on"
                self._emit(RunWarning(self.step, f"checkpoint NOT saved ({name}): {why}{goes_on}"))
            return None
        self._saved(tags, name)
        self._emit(CheckpointSaved(self.step, self.epoch_of_step, str(path), tags, time.monotonic() - t0, size))
        return path

    def _saved(self, tags: tuple[str, ...], name: str) -> None:
        """A save done: on rank 0 written; on the others, what rank 0 wrote (Finished's paths, so
        that `fit`'s Result names the same files on every rank)."""
        if "last" in tags or name == "last.pt":  # the step last.pt holds: the final save skips only that one
            self._saved_step = self.step  # (a best.pt alone, every_epochs = 0, left a run with no last.pt)
            self._last_path = self.checkpoints.root / "last.pt"
        if "best" in tags:
            self._best_path = self.checkpoints.root / "best.pt"

    def kill_workers(self) -> None:
        """SIGKILL the data loader's worker processes now (an abort: Session.abort)."""
        self.parts.data.kill_workers()

    def state_dict(self) -> dict:
        return ckpt.trainer_state(self)

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Continue from a checkpoint: weights, optimizer, schedule, scaler, RNG, position, trainable map."""
        ckpt.load_trainer_state(self, state, source)
        self._saved_step = self.step  # nothing new to save until a step is done
        self.resumed_from = source

    # ------------------------------------------------------------------ endings (endings.py)

    def _finish(self, status: str, t0: float) -> Finished | Failed:
        # a method (not a direct call of endings.finish in `run`): benchmarks/sync_check.py wraps it
        return endings.finish(self, status, t0)

    # ------------------------------------------------------------------ plumbing

    def _run_started(self) -> RunStarted:
        p = self.parts
        hosts = probes.hosts(self.dist)  # many ranks: one gather at start, on every rank
        return RunStarted(
            run_name=self.preset.name, run_dir=str(self.run_dir), device=str(self.device), device_name=p.device_name,
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            epochs=self.preset.train.epochs, steps_per_epoch=p.steps_per_epoch, total_steps=self.total_steps,
            batch_size=self.batch_size, start_step=self.step, start_epoch=self.epoch + 1, layers=p.layers,
            trainable=trainable_state(self.model, p.layers), params_total=sum(q.numel() for q in self.params),
            params_trainable=sum(q.numel() for q in self.params if q.requires_grad), plan=p.plan,
            lrs=tuple(self.schedule.current()), manual_factor=self.schedule.manual_factor, weights=p.weights_note,
            data=p.data.note, monitor=self.monitor, resumed_from=self.resumed_from,
            warnings=tuple(p.warnings), world=self.dist.world, nodes=len(set(hosts)) or 1, hosts=hosts,
        )

    def _hook(self, name: str, **given) -> bool:
        """Call the tutorial-style hook `name` of every callback that has it, with the arguments its
        parameters name; True when one returned True (stop). A hook that raises is disabled with a
        warning. An LR a hook wrote into a param group is adopted as a manual change."""
        entries = self._hook_fns[name]
        if not entries:
            return False
        args = {"model": self.model, "optimizer": self.optimizer, "step": self.step, "epoch": self.epoch, **given}
        args["logs"] = args.get("metrics")
        stop = False
        for entry in list(entries):
            cb, fn, params = entry
            try:
                stop |= fn(**{k: args[k] for k in params if k in args}) is True
            except Exception as exc:  # noqa: BLE001 - a broken callback must not end the run
                entries.remove(entry)
                self._emit(RunWarning(self.step, f"callback {type(cb).__name__}.{name} raised {type(exc).__name__}:"
                                                 f" {exc}; it is disabled for the rest of the run"))
        self._adopt_lr()
        return stop

    def _adopt_lr(self) -> None:
        """A callback wrote param_group["lr"]: keep it as a manual change (shown, saved, resumed)."""
        if self.schedule.adopt():
            self._emit(LrChanged(self.step, tuple(self.schedule.current()), self.schedule.manual_factor, "callback"))

    def _set_state(self, state: str) -> None:
        self._emit(StateChanged(state, self.step))

    def _emit(self, event: Event) -> None:
        self.sink(event)
        if not self.callbacks:
            return
        for cb in list(self.callbacks):
            try:
                cb.on_event(event, self.control)
            except Exception as exc:  # noqa: BLE001 - a broken callback must not end the run
                self.callbacks.remove(cb)
                self.sink(RunWarning(self.step, f"callback {type(cb).__name__} raised {type(exc).__name__}: {exc};"
                                                " it is disabled for the rest of the run"))
        if not self._in_update:
            self._adopt_lr()
