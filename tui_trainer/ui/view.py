"""What the app knows about the run: a pure-Python model fed by engine events (no Textual here).

Every history is bounded: `Series` halves its resolution when full, so a million-step run keeps
the same few thousand points for the whole-run view; recent windows are fixed-size deques.
`dirty` names the panes whose data changed since the app last drew them.
"""

from __future__ import annotations

import math
import time
from collections import deque

from tui_trainer.engine.events import (
    CheckpointSaved,
    EpochEnd,
    Event,
    Failed,
    Finished,
    LayerStats,
    LrChanged,
    MemorySample,
    RunStarted,
    RunWarning,
    StateChanged,
    StepReport,
    TrainableChanged,
)
from tui_trainer.text.format import event_line
from tui_trainer.ui.memory_history import MachineHistory


class Series:
    """(x, y) points; past `max_points` neighbours merge pairwise (x of the later, mean of y)."""

    def __init__(self, max_points: int = 1024):
        self.max_points = max_points
        self.stride = 1
        self.xs: list[float] = []
        self.ys: list[float] = []
        self._sum = 0.0
        self._n = 0

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return
        self._sum += y
        self._n += 1
        if self._n < self.stride:
            return
        self.xs.append(x)
        self.ys.append(self._sum / self._n)
        self._sum, self._n = 0.0, 0
        if len(self.xs) > self.max_points:
            end = len(self.xs) - len(self.xs) % 2  # an odd newest point has no partner: it stays as it is
            self.xs = self.xs[1:end:2] + self.xs[end:]
            self.ys = [(a + b) / 2 for a, b in zip(self.ys[:end:2], self.ys[1:end:2])] + self.ys[end:]
            self.stride *= 2

    def __len__(self) -> int:
        return len(self.xs)


class RunView:
    RECENT = 600  # per-step losses kept raw for the sparklines
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
        self.loss = Series(2048)
        self.recent: deque[float] = deque(maxlen=self.RECENT)
        self.smoothed: deque[float] = deque(maxlen=self.RECENT)
        self._ema: float | None = None
        self.lr_history: list[Series] = []
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
            self.loss.add(e.first_step + i, loss)
            if math.isfinite(loss):
                self.recent.append(loss)
                self._ema = loss if self._ema is None else 0.9 * self._ema + 0.1 * loss
                self.smoothed.append(self._ema)
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

    def _on_layer_stats(self, e: LayerStats) -> None:
        self.grad_norm, self.update_ratio = e.grad_norm, e.update_ratio
        self.dirty.add("layer_stats")

    def _on_epoch_end(self, e: EpochEnd) -> None:
        self.epochs.append(e)
        self.has_val_acc |= e.val_acc is not None
        for name in e.metrics:
            if name not in self.metric_names and len(self.metric_names) < self.MAX_METRICS:
                self.metric_names.append(name)
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
