"""What the engine says. Frozen dataclasses; each round-trips through JSON (events.jsonl, sockets).

Conventions, the same in every event:

- `step`: optimizer steps done so far in the whole run (0 before the first).
- `epoch`: the 1-based epoch that `step` belongs to, so `step` and `epoch` name one moment. With S
  steps per epoch, steps 1..S are epoch 1, S+1..2S epoch 2, and so on (0 only at step 0). So an
  event between two epochs names the epoch just completed: EpochEnd, the epoch's checkpoint, and a
  stop, failure or completion before the next epoch's first step is done. Finished and Failed
  follow it like the rest: a run stopped after step 3 of epoch 2 says epoch 2; a run that completed
  3 epochs says 3; a failure in the first batch of epoch 3 says the last step done and its epoch 2
  (Failed.step is the last step done, not the one that failed: what the emergency checkpoint holds).
- `RunStarted.start_epoch` is not an `epoch` in this sense: it is the epoch of the run's next step.
- `best_epoch`: the 1-based number of the completed epoch that set the best value.

Fields added later have defaults, so an older events.jsonl still loads: RunStarted's `world`,
`nodes` and `hosts` (a run of many ranks), StepReport's `ranks` (every rank's memory), Finished's
`monitor` (what its best value is).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tui_trainer.parts.layers import LayerInfo
from tui_trainer.parts.optim import LrPlan


# json.dumps with separators builds an encoder per call (a third of the cost of a report's line)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every float of every field, about 30 us
        # per StepReport, paid on the training thread at every report.
        out: dict[str, Any] = {"kind": self.kind}
        for name in _field_names(type(self)):
            out[name] = _plain(getattr(self, name))
        return out

    @functools.cached_property
    def json_line(self) -> str:
        """`to_json()` as one compact JSON line (no newline), made once: the run-dir recorder and the
        control socket both write it."""
        return _COMPACT.encode(self.to_json())


@dataclass(frozen=True)
class MemorySample:
    """Bytes. On CUDA: allocator numbers of one device (None on CPU). On every device: the process's
    RSS and CPU use and the host's memory (None where psutil cannot tell)."""

    device: str
    rss: int
    allocated: int | None = None
    reserved: int | None = None
    peak: int | None = None
    total: int | None = None
    utilization: float | None = None  # percent, from NVML when available
    # the process's CPU use since the probe's previous reading, psutil's percent (100 = one core busy,
    # up to 100 * cpu_cores), and how many cores the process may run on (its affinity)
    cpu_percent: float | None = None
    cpu_cores: int | None = None
    host_available: int | None = None  # bytes the host can still give without swapping (psutil's available)
    host_total: int | None = None  # the host's physical memory


@dataclass(frozen=True)
class RunStarted(Event):
    run_name: str
    run_dir: str
    device: str
    device_name: str
    amp: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    batch_size: int
    start_step: int
    start_epoch: int  # 1-based epoch of the first step this run will do (not an `epoch`: see above)
    layers: tuple[LayerInfo, ...]
    trainable: tuple[bool | None, ...]
    params_total: int
    params_trainable: int
    plan: LrPlan
    lrs: tuple[float, ...]
    manual_factor: float
    weights: str
    data: str
    monitor: str
    resumed_from: str | None = None
    warnings: tuple[str, ...] = ()
    # Many ranks (DDP): how many processes train (`batch_size` is already the global batch), on how
    # many distinct hosts, and each rank's host name in rank order (gathered once at start; () in
    # one process). The screen labels each rank's memory with its host when nodes > 1.
    world: int = 1
    nodes: int = 1
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateChanged(Event):
    state: str  # starting, running, paused, stopping, finished, failed
    step: int


@dataclass(frozen=True)
class StepReport(Event):
    """Sent every `log_every` steps, at most one every `train.log_min_interval_s` (on many ranks, at
    a sync that passed a multiple of log_every): the loss of each step since the last report (one
    host sync). A report may span an epoch's end (an epoch's end reads the losses but reports them
    only once the interval has passed); `epoch` is then the epoch of its last step.

    `memory` (at most every 0.5 s, else None) is this process's device: rank 0's in a run of many
    ranks. `ranks` comes with it there: every rank's sample in rank order (`ranks[0]` is `memory`),
    read by each rank at the report and gathered in the same all_reduce as the losses (one slot of
    numbers per rank: engine/probes.py `pack`); () in one process and between memory samples."""

    step: int  # the last step reported (first_step + len(losses) - 1)
    epoch: int  # the epoch of `step` (module docstring)
    first_step: int  # losses[i] belongs to step first_step + i
    losses: tuple[float, ...]
    lrs: tuple[float, ...]
    samples_per_s: float
    eta_s: float | None
    memory: MemorySample | None = None
    ranks: tuple[MemorySample, ...] = ()
    # the share of this report window's wall time the loop spent waiting for its batches (0..1: time
    # blocked in the loader's next, a host clock, no device sync); None when not measured
    data_wait: float | None = None

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


@dataclass(frozen=True)
class LayerStats(Event):
    """Per layer row (aligned with RunStarted.layers): gradient norm and |dw|/|w| of one step."""

    step: int
    grad_norm: tuple[float | None, ...]
    update_ratio: tuple[float | None, ...]


@dataclass(frozen=True)
class LayerShapes(Event):
    """Per layer row (aligned with RunStarted.layers): its output shape, for a run whose RunStarted
    had none (tui_trainer.loop has no batch at start: the shapes come from its first forward)."""

    step: int
    shapes: tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True)
class LrPlanned(Event):
    """The LR plan, made after the start, replacing RunStarted.plan: a run that could not plan at
    start (tui_trainer.loop over a loader with no len) plans once its first epoch gave a length,
    every epoch taken as long as that one."""

    step: int
    steps_per_epoch: int
    plan: LrPlan


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int  # the epoch that ended (1-based); `step` is its last step
    step: int
    train_loss: float | None
    val_loss: float | None
    val_acc: float | None
    seconds: float
    monitor: str
    value: float | None  # the monitored value this epoch
    best: float | None
    best_epoch: int | None
    improved: bool
    bad_epochs: int  # early stopping counter
    patience: int | None  # None when early stopping is off
    plateau: tuple[int, int] | None = None  # ReduceLROnPlateau (bad epochs, patience)
    # the [[metrics]] of this epoch's validation, by monitor name ("val_dice": 0.91), in preset order;
    # val_acc stays in its own field. None: the metric had nothing to measure (no validation set).
    metrics: dict[str, float | None] = field(default_factory=dict)
    data_wait: float | None = None  # the share of the epoch's training wall time spent waiting for batches


@dataclass(frozen=True)
class LrChanged(Event):
    step: int
    lrs: tuple[float, ...]
    manual_factor: float
    reason: str  # manual, plateau, resume


@dataclass(frozen=True)
class TrainableChanged(Event):
    step: int
    prefixes: tuple[str, ...]
    trainable: bool
    state: tuple[bool | None, ...]  # per layer row; None = mixed
    params_trainable: int
    params_total: int
    source: str = "command"  # command, resume


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int  # the state saved: after this many steps
    epoch: int  # the epoch of `step`; for an epoch save, the epoch that ended
    path: str
    tags: tuple[str, ...]  # last, best, epoch, step, manual, emergency, final
    seconds: float
    bytes: int


@dataclass(frozen=True)
class RunWarning(Event):
    step: int
    message: str


@dataclass(frozen=True)
class Printed(Event):
    """A line the user's own loop printed (`tui_trainer.loop`): shown in the Log pane and the headless
    lines instead of on the screen. `stream`: stdout, stderr, or note (a line of tui-trainer's own
    about the loop)."""

    step: int
    text: str
    stream: str = "stdout"


@dataclass(frozen=True)
class Finished(Event):
    status: str  # completed, early_stopped, stopped, signal, nonfinite
    step: int  # the last step done (nonfinite: the step whose loss or weights were not finite)
    epoch: int  # the epoch of `step`: after a whole epoch, that epoch; mid-epoch, the epoch in progress
    seconds: float
    exit_code: int
    message: str
    best: float | None = None
    best_epoch: int | None = None
    best_path: str | None = None
    last_path: str | None = None
    monitor: str | None = None  # what `best` is (val_loss, train_loss ...); None in runs recorded before it


@dataclass(frozen=True)
class Failed(Event):
    step: int  # the last step done (the emergency checkpoint's), not the step that failed
    epoch: int  # the epoch of `step`: a failure before the next epoch's first step names the one completed
    error: str  # one line
    traceback: str
    emergency_path: str | None
    exit_code: int = 1


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (RunStarted, StateChanged, StepReport, LayerStats, LayerShapes, LrPlanned, EpochEnd, LrChanged,
                TrainableChanged, CheckpointSaved, RunWarning, Printed, Finished, Failed)
}


_SCALARS = frozenset({int, float, str, bool})


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    """JSON-ready: nested records (LayerInfo, LrPlan, MemorySample) become dicts; tuples of plain
    values stay as they are (json writes them as lists)."""
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is tuple:
        return [dataclasses.asdict(v) for v in value] if value and dataclasses.is_dataclass(value[0]) else value
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def from_json(data: dict[str, Any]) -> Event:
    """Inverse of `Event.to_json` (lists become tuples, nested records are rebuilt)."""
    data = dict(data)
    cls = EVENT_TYPES[data.pop("kind")]
    kwargs = {k: _tuples(v) for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
    if cls is RunStarted:
        kwargs["layers"] = tuple(LayerInfo(**_untuple_shape(d)) for d in data["layers"])
    if cls is RunStarted or cls is LrPlanned:
        plan = dict(data["plan"])
        kwargs["plan"] = LrPlan(tuple(plan["groups"]), tuple(plan["steps"]),
                                tuple(tuple(g) for g in plan["lrs"]), plan["total_steps"], plan["adaptive"],
                                plan.get("note", ""))
    if cls is StepReport and data.get("memory"):
        kwargs["memory"] = MemorySample(**data["memory"])
    if cls is StepReport and data.get("ranks"):
        kwargs["ranks"] = tuple(MemorySample(**d) for d in data["ranks"])
    return cls(**kwargs)


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _untuple_shape(d: dict) -> dict:
    d = dict(d)
    if d.get("out_shape") is not None:
        d["out_shape"] = tuple(d["out_shape"])
    return d
