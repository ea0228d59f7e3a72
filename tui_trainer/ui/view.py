"""What the app knows about the run: a pure-Python model fed by engine events (no Textual here).

Every history is bounded: `Series` halves its resolution when full (pairwise means), and so does
`MinMaxSeries` (pairwise min, max and sums, so a spike survives any length of run): a
million-step run keeps the same few thousand points for the whole-run views; recent windows are
fixed-size deques.
`dirty` names the panes whose data changed since the app last drew them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections import deque

from tui_trainer.engine.events import (
    CheckpointSaved,
    EpochEnd,
    Event,
    Failed,
    Finished,
    LayerShapes,
    LayerStats,
    LrChanged,
    LrPlanned,
    MemorySample,
    RunStarted,
    RunWarning,
    StateChanged,
    StepReport,
    TrainableChanged,
)
from tui_trainer.run.history import Curve
from tui_trainer.text.format import event_line
from tui_trainer.ui.memory_history import MachineHistory


def Series(max_points: int = 1024) -> Curve:
    """(x, y) points; past `max_points` neighbours merge pairwise (x of the later, mean of y): the
    same bounded curve `tui-trainer compare` keeps (run/history.py)."""
    return Curve(max_points)


class MinMaxSeries:
    """The whole run at a fixed cost, spikes kept: buckets of consecutive points, each with its last
    x, the lowest and highest y, and the sum and count of its y (its mean). Past `max_buckets`,
    neighbours merge pairwise (min of the mins, max of the maxes, sums and counts added) and a
    bucket holds twice as many points from then on: the memory is fixed and a one-step spike is
    still a bucket's max a million steps later, where a mean would have diluted it. The newest
    bucket fills in place, so the latest point is always there. Arrays of doubles: 40 bytes a bucket."""

    def __init__(self, max_buckets: int = 2048):
        if max_buckets < 2:
            raise ValueError("max_buckets must be at least 2")
        self.max_buckets = max_buckets
        self.per_bucket = 1  # points a full bucket holds (doubles at each merge)
        self.xs = array("d")  # the last x of each bucket
        self.lo = array("d")
        self.hi = array("d")
        self.sums = array("d")
        self.counts = array("d")
        self.added = 0  # finite points ever added

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return
        self.added += 1
        if self.counts and self.counts[-1] < self.per_bucket:
            self.xs[-1] = x
            if y < self.lo[-1]:
                self.lo[-1] = y
            if y > self.hi[-1]:
                self.hi[-1] = y
            self.sums[-1] += y
            self.counts[-1] += 1
            return
        for column, value in ((self.xs, x), (self.lo, y), (self.hi, y), (self.sums, y), (self.counts, 1.0)):
            column.append(value)
        if len(self.xs) > self.max_buckets:
            self._merge_pairs()

    def _merge_pairs(self) -> None:
        n = len(self.xs)
        end = n - n % 2  # an odd newest bucket has no partner: it stays as it is (and keeps filling)

        def pairs(column: array, how) -> array:
            merged = array("d", map(how, column[0:end:2], column[1:end:2]))
            merged.extend(column[end:])
            return merged

        self.xs = pairs(self.xs, lambda a, b: b)
        self.lo = pairs(self.lo, min)
        self.hi = pairs(self.hi, max)
        self.sums = pairs(self.sums, float.__add__)
        self.counts = pairs(self.counts, float.__add__)
        self.per_bucket *= 2

    def __len__(self) -> int:
        return len(self.xs)

    @property
    def last(self) -> float | None:
        """The mean of the newest bucket (the latest point while buckets hold one)."""
        return self.sums[-1] / self.counts[-1] if self.counts else None

    def columns(self, n: int) -> tuple[list[float], list[float], list[float], list[float]]:
        """At most `n` columns (a chart's dots across): (last x, min, max, mean) of each group of
        consecutive buckets. Buckets hold equally many points, so equal groups are equal spans of
        the run; grouped with C-level min/max over slices, a draw costs well under a millisecond."""
        size = len(self.xs)
        k = -(-size // max(1, n))  # buckets per column
        if k <= 1:
            return list(self.xs), list(self.lo), list(self.hi), [s / c for s, c in zip(self.sums, self.counts)]
        starts = range(0, size, k)
        xs = [self.xs[min(i + k, size) - 1] for i in starts]
        lo = [min(self.lo[i:i + k]) for i in starts]
        hi = [max(self.hi[i:i + k]) for i in starts]
        mean = [sum(self.sums[i:i + k]) / sum(self.counts[i:i + k]) for i in starts]
        return xs, lo, hi, mean


class RunView:
    LOSS_BUCKETS = 2048  # the whole run's per-step train loss (MinMaxSeries): about 80 KiB each, whatever its length
    METRIC_BUCKETS = 512  # each per-epoch series (val loss, val acc, each metric)
    MAX_METRICS = 64  # metric names kept: a run has a handful; a wild one cannot grow this

    def __init__(self) -> None:
        self.started: RunStarted | None = None
        self.state = "starting"
        self.step = 0
        self.epoch = 1
        self.samples_per_s: float | None = None
        self.eta_s: float | None = None
        self.lrs: tuple[float, ...] = ()
        self.manual_factor = 1.0
        self.manual_changes: list[tuple[int, float]] = []  # (step, factor after the change)
        # the whole run's train loss for the Loss pane's chart: every step's loss (its min, max and
        # mean per bucket) and its EMA (0.9), the smoothed line; both bounded
        self.loss = MinMaxSeries(self.LOSS_BUCKETS)
        self.loss_ema = MinMaxSeries(self.LOSS_BUCKETS)
        self.last_loss: float | None = None
        self.ema: float | None = None
        # per epoch, at the epoch's last step: "val_loss", "val_acc" and every EpochEnd.metrics name
        self.epoch_history: dict[str, MinMaxSeries] = {}
        self.lr_history: list[Curve] = []
        self.epochs: deque[EpochEnd] = deque(maxlen=1000)  # the pane shows the last few
        self.metric_names: list[str] = []  # the [[metrics]] seen in EpochEnd.metrics, first seen first
        self.has_val_acc = False  # some epoch had val_acc (a regression run never does)
        self.trainable: tuple[bool | None, ...] = ()
        self.params_trainable = 0
        self.params_total = 0
        self.grad_norm: tuple[float | None, ...] = ()
        self.update_ratio: tuple[float | None, ...] = ()
        self.memory: MemorySample | None = None
        self.ranks: tuple[MemorySample, ...] = ()  # many ranks: each rank's memory, rank order (StepReport.ranks)
        # used bytes (allocated on a GPU, else RSS) at each sample: this process's device, or with
        # many ranks the fullest rank's (the one nearest to running out)
        self.memory_history: deque[float] = deque(maxlen=300)
        self.machine = MachineHistory()  # the Memory pane's charts and the header's input wait
        self.badges: list[str] = []
        self.log: deque[tuple[float, str, str]] = deque(maxlen=2000)
        self.log_count = 0  # total lines ever logged: the log pane writes the ones it has not seen
        self.last_checkpoint: str | None = None
        self.final: Finished | Failed | None = None
        self.dirty: set[str] = set()

    # ------------------------------------------------------------------ events in

    def apply(self, event: Event) -> None:
        said = event_line(event, self.started)  # (None for RunStarted, whose handler says its own lines)
        if said is not None:
            self.say(*said, when=event.time)
        match event:
            case StepReport():
                self._on_step_report(event)
            case LayerStats():
                self._on_layer_stats(event)
            case LayerShapes():
                self._on_layer_shapes(event)
            case LrPlanned():
                self._on_lr_planned(event)
            case RunStarted():
                self._on_run_started(event)
            case StateChanged():
                self._on_state_changed(event)
            case EpochEnd():
                self._on_epoch_end(event)
            case LrChanged():
                self._on_lr_changed(event)
            case TrainableChanged():
                self._on_trainable_changed(event)
            case CheckpointSaved():
                self.last_checkpoint = event.path
            case RunWarning():
                self._on_run_warning(event)
            case Finished():
                self.final = event
                self.dirty |= {"header", "final"}
            case Failed():
                self._on_failed(event)

    def say(self, text: str, level: str = "info", when: float | None = None) -> None:
        self.log.append((when or time.time(), text, level))
        self.log_count += 1
        self.dirty.add("log")

    def _on_run_started(self, e: RunStarted) -> None:
        self.started = e
        self.step = e.start_step
        self.epoch = e.start_epoch
        self.lrs = e.lrs
        self.manual_factor = e.manual_factor
        self.trainable = e.trainable
        self.params_trainable, self.params_total = e.params_trainable, e.params_total
        self.lr_history = [Series(1024) for _ in e.plan.groups]
        self.badges = [w.split(";")[0] for w in e.warnings][:3]
        self.say(f"{e.run_name}: {e.device_name}, amp {e.amp}, weights {e.weights}, {e.data}")
        self.say(f"run dir {e.run_dir}" + (f" (resumed from {e.resumed_from})" if e.resumed_from else ""))
        self.dirty |= {"header", "layers", "lr", "loss"}

    def _on_state_changed(self, e: StateChanged) -> None:
        self.state = e.state
        self.dirty.add("header")

    def _on_step_report(self, e: StepReport) -> None:
        self.step, self.epoch = e.step, e.epoch
        self.samples_per_s, self.eta_s = e.samples_per_s, e.eta_s
        self.lrs = e.lrs
        for i, loss in enumerate(e.losses):
            if math.isfinite(loss):
                self.loss.add(e.first_step + i, loss)
                self.last_loss = loss
                self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
                self.loss_ema.add(e.first_step + i, self.ema)
        for series, lr in zip(self.lr_history, e.lrs):
            series.add(e.step, lr)
        if e.memory is not None:
            self.memory = e.memory
            self.ranks = e.ranks
            self.memory_history.append(float(max(map(used_bytes, e.ranks or (e.memory,)))))
            self.dirty.add("memory")
        if self.machine.add(e):
            self.dirty.add("memory")
        self.dirty |= {"header", "loss", "lr"}

    def _on_layer_shapes(self, e: LayerShapes) -> None:
        """The output column, filled after the start (a loop's first forward): a new RunStarted of the
        same rows, so every pane that draws from it draws again."""
        if self.started is None or len(e.shapes) != len(self.started.layers):
            return
        layers = tuple(dataclasses.replace(row, out_shape=shape) for row, shape in zip(self.started.layers, e.shapes))
        self.started = dataclasses.replace(self.started, layers=layers)
        self.dirty.add("layers")

    def _on_lr_planned(self, e: LrPlanned) -> None:
        """A plan made after the start (a loop over a loader with no len, once its first epoch gave
        a length): the LR pane draws it from now on."""
        if self.started is None or len(e.plan.groups) != len(self.started.plan.groups):
            return
        self.started = dataclasses.replace(self.started, plan=e.plan)
        self.dirty.add("lr")

    def _on_layer_stats(self, e: LayerStats) -> None:
        self.grad_norm, self.update_ratio = e.grad_norm, e.update_ratio
        self.dirty.add("layer_stats")

    def _on_epoch_end(self, e: EpochEnd) -> None:
        self.epochs.append(e)
        self.has_val_acc |= e.val_acc is not None
        for name in e.metrics:
            if name not in self.metric_names and len(self.metric_names) < self.MAX_METRICS:
                self.metric_names.append(name)
        for name, value in (("val_loss", e.val_loss), ("val_acc", e.val_acc), *e.metrics.items()):
            if value is None or (name not in self.epoch_history and name not in ("val_loss", "val_acc")
                                 and name not in self.metric_names):
                continue  # nothing measured, or a metric past MAX_METRICS
            history = self.epoch_history.get(name)
            if history is None:
                history = self.epoch_history[name] = MinMaxSeries(self.METRIC_BUCKETS)
            history.add(e.step, value)
        self.dirty |= {"loss", "header", "lr"}

    def _on_lr_changed(self, e: LrChanged) -> None:
        self.lrs = e.lrs
        if e.reason == "manual":
            self.manual_changes.append((e.step, e.manual_factor))
        self.manual_factor = e.manual_factor
        self.dirty |= {"lr", "header"}

    def _on_trainable_changed(self, e: TrainableChanged) -> None:
        self.trainable = e.state
        self.params_trainable, self.params_total = e.params_trainable, e.params_total
        self.dirty.add("layers")
        # a layer frozen now has no gradient and no update: "-" at once, not its last sample's numbers
        frozen = [i for i, on in enumerate(e.state) if on is False]
        if frozen and (self.grad_norm or self.update_ratio):
            self.grad_norm = tuple(None if i in frozen else v for i, v in enumerate(self.grad_norm))
            self.update_ratio = tuple(None if i in frozen else v for i, v in enumerate(self.update_ratio))
            self.dirty.add("layer_stats")

    def _on_run_warning(self, e: RunWarning) -> None:
        short = e.message.split(";")[0]
        if short not in self.badges:
            self.badges = (self.badges + [short])[-3:]
        self.dirty.add("header")

    def _on_failed(self, e: Failed) -> None:
        self.final = e
        self.state = "failed"
        self.dirty |= {"header", "final"}
        for line in e.traceback.rstrip().splitlines():  # after the FAILED line
            self.say(line, "error", when=e.time)

    # ------------------------------------------------------------------ derived

    @property
    def total_steps(self) -> int:
        return self.started.total_steps if self.started else 0

    @property
    def world(self) -> int:
        """Ranks of the run (1: one process)."""
        return self.started.world if self.started else 1

    @property
    def nodes(self) -> int:
        return self.started.nodes if self.started else 1

    def host_of(self, rank: int) -> str:
        """The host of `rank` ("" when unknown)."""
        hosts = self.started.hosts if self.started else ()
        return hosts[rank] if 0 <= rank < len(hosts) else ""

    @property
    def last_epoch(self) -> EpochEnd | None:
        return self.epochs[-1] if self.epochs else None

    def replanned(self, group: int = 0) -> tuple[list[int], list[float]]:
        """The planned LR from the current step on, scaled by the manual factor."""
        if self.started is None:
            return [], []
        plan = self.started.plan
        pairs = [(s, lr * self.manual_factor) for s, lr in zip(plan.steps, plan.lrs[group]) if s >= self.step]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty


def used_bytes(m: MemorySample) -> int:
    """What a memory sample uses: allocated bytes on a GPU, the process's RSS elsewhere."""
    return m.allocated if m.allocated is not None else m.rss
