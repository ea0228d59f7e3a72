"""From CLI arguments to a ready Trainer: preset, resume checkpoint, parts, run directory, sinks.

Everything that can fail on bad input fails here, before the run directory is made, so a bad
preset leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tui_trainer import config
from tui_trainer.engine.commands import Control
from tui_trainer.engine.distributed import Dist
from tui_trainer.engine.events import EpochEnd, Event, Failed, Finished, RunWarning, StepReport
from tui_trainer.engine.trainer import Trainer
from tui_trainer.errors import UserError, record_for_torchrun
from tui_trainer.run.server import ControlServer
from tui_trainer.run.rundir import Recorder, RunDir, choose_run_dir, refuse_if_live, resume_checkpoint, writing
from tui_trainer.signals import protect_forked_children


@dataclass
class Session:
    preset: config.Preset
    run_dir: RunDir
    trainer: Trainer
    control: Control
    closers: list[Callable[[], None]] = field(default_factory=list)
    sinks: list[Callable[[Event], None]] = field(default_factory=list)  # live: add or remove while it runs
    server: ControlServer | None = None
    fan_out: FanOut | None = None  # the engine's one sink

    def close(self) -> None:
        for close in self.closers:
            close()

    def note(self, event: Event) -> bool:
        """Record an event that does not come from the engine (the app crashed) through every sink,
        in order with the engine's own; False once the run's final event has gone out."""
        return self.fan_out.note(event) if self.fan_out is not None else False

    def abort(self) -> None:
        """Leave now without a save (Ctrl+C twice), but leave nothing behind: the control socket
        goes (no stale socket for `ls`/`attach`), and the data workers are killed at once (they
        ignore SIGTERM, so they would linger until they noticed their parent was gone). Safe from a
        signal handler: no lock is waited for, nothing is joined. The reports the recorder holds are
        written if it is not writing at that moment."""
        for sink in self.sinks:
            if isinstance(sink, Recorder):
                sink.flush(wait=False)
        if self.server is not None:
            self.server.remove_files()
        kill = getattr(self.trainer, "kill_workers", None)
        if kill is not None:
            kill()


def prepare(
    preset_path: str | Path,
    overrides: list[str] | None = None,
    *,
    resume: str | None = None,
    run_dir: str | Path | None = None,
    sinks: list[Callable[[Event], None]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    layer_stats: bool = False,
    serve: bool = False,
) -> Session:
    """`serve`: open the run's control socket (run/server.py) so `tui-trainer attach` can steer it."""
    from tui_trainer.parts import build, check, device_type

    protect_forked_children()  # DataLoader workers must never run this process's terminal signal handlers
    preset = config.load(preset_path, overrides or [])
    try:
        check(preset)
    except UserError as err:
        err.source = err.source or preset.key_source(err.key or "")
        raise
    tensorboard = _tensorboard_writer_class(preset) if preset.log.tensorboard else None
    return _assemble(preset, lambda dist: build(preset, rank=dist.rank, world=dist.world, local_rank=dist.local_rank),
                     device_type(preset), tensorboard, resume=resume, run_dir=run_dir, sinks=sinks,
                     should_stop=should_stop, layer_stats=layer_stats, serve=serve)


def prepare_objects(preset: config.Preset, *, model, train, val, optimizer, loss_fn, scheduler=None,
                    interval: str = "epoch", step_fn=None, callbacks=(), resume: str | None = None,
                    run_dir: str | Path | None = None, sinks: list[Callable[[Event], None]] | None = None,
                    should_stop: Callable[[], bool] | None = None, layer_stats: bool = False,
                    serve: bool = False, taps: list[Callable[[Event], None]] | None = None) -> Session:
    """`prepare` for `tui_trainer.fit`: the parts are the caller's objects (parts/objects.py), the
    settings `preset` (already validated); the rest (run directory, resume, sinks, socket, ranks)
    is a preset run's. `taps`: sinks every rank gets (what fit returns is known on every rank)."""
    from tui_trainer.engine import checkpoint
    from tui_trainer.parts import resolve_device
    from tui_trainer.parts.objects import from_objects

    protect_forked_children()
    tensorboard = _tensorboard_writer_class(preset) if preset.log.tensorboard else None

    def make(dist: Dist):
        return from_objects(preset, model=model, train=train, val=val, optimizer=optimizer, loss_fn=loss_fn,
                            scheduler=scheduler, interval=interval, step_fn=step_fn, callbacks=callbacks,
                            rank=dist.rank, world=dist.world, local_rank=dist.local_rank)

    return _assemble(preset, make, resolve_device(preset.train.device).type, tensorboard, resume=resume,
                     run_dir=run_dir, sinks=sinks, should_stop=should_stop, layer_stats=layer_stats, serve=serve,
                     taps=taps, resume_arg=checkpoint.api_names("fit"))


def _assemble(preset: config.Preset, make_parts: Callable[[Dist], object], device_type: str, tensorboard, *,
              resume, run_dir, sinks, should_stop, layer_stats, serve, taps=None,
              resume_arg=None) -> Session:
    """Resume checkpoint, ranks, parts (`make_parts(dist)`), Trainer, then the run directory and its
    sinks (`open_run`). Everything that can fail on bad input fails before the directory is made."""
    from tui_trainer.engine import checkpoint

    arg = resume_arg or checkpoint.CLI_NAMES  # how the errors name the resume: the CLI's flag, or fit's keyword
    resume_path = resume_checkpoint(preset.name, resume, arg=arg)
    state = checkpoint.load(resume_path, arg=arg) if resume_path is not None else None
    dist = Dist.from_env(device_type)  # one process unless torchrun / devices > 1 started ranks
    if state is not None:  # a loop's, or another global batch (not exact): exit 2 before anything is built
        checkpoint.check_kind(state, resume_path, loop=False, arg=arg)
        checkpoint.resume_fit(state, preset, dist.world, resume_path, arg=arg)
    rd, fresh = choose_run_dir(preset.name, run_dir, resume_path, arg=arg)  # resumed: the run it came from
    parts = make_parts(dist)
    if state is not None and (note := checkpoint.resume_fit(state, preset, dist.world, resume_path, parts, arg)):
        parts.warnings.append(note)

    fan_out = FanOut(list(taps or []))
    control = Control()
    trainer = Trainer(parts, fan_out, checkpoint_dir=rd.checkpoints, run_dir=rd.path, control=control,
                      should_stop=should_stop, layer_stats_every_s=0.5 if layer_stats else None, dist=dist)
    if state is not None:  # a checkpoint that does not fit fails here, before anything is written
        try:
            trainer.load_state_dict(state, source=str(resume_path))
        except UserError as err:
            err.source = arg.resume
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign checkpoint is bad input
            raise UserError(f"{resume_path} cannot be resumed with this preset ({type(exc).__name__}:"
                            f" {str(exc)[:160]})", source=arg.resume) from None
    session = open_run(preset, trainer, rd, fresh, control=control, fan_out=fan_out, dist=dist, sinks=sinks,
                       serve=serve, tensorboard=tensorboard, n_groups=len(parts.optimizer.param_groups),
                       refuse_key=arg.run_dir if run_dir is not None else arg.resume)
    server = session.server
    if server is not None:  # an attached viewer's Layers pane gets what an in-process monitor's does
        trainer.stats_for_viewers(server.watched)
    return session


def open_run(preset: config.Preset, trainer, rd: RunDir, fresh: bool, *, control: Control, fan_out: FanOut,
             dist: Dist | None = None, sinks: list[Callable[[Event], None]] | None = None, serve: bool = False,
             tensorboard=None, n_groups: int = 1, refuse_key: str = "--run-dir") -> Session:
    """The run directory and everything that writes or serves it, around an engine that emits into
    `fan_out` (the Trainer, or the user's loop: run/loop.py): config.toml, the recorder
    (events.jsonl, metrics.csv), TensorBoard, the control socket, then `sinks`. Rank 0 alone (`dist`)
    writes; the other ranks get only the failure reporter."""
    dist = dist or Dist()
    all_sinks = fan_out.sinks
    if dist.active:
        all_sinks.append(RankFailure(dist.rank))
    if not dist.writer:  # rank 0 alone writes the run directory, records and serves; the others only train
        return Session(preset, rd, trainer, control, [dist.close], all_sinks, None, fan_out)
    if serve and not fresh:
        refuse_if_live(rd, refuse_key)

    with writing(rd, refuse_key):
        rd.path.mkdir(parents=True, exist_ok=not fresh)
        rd.write_config(preset)
        recorder = Recorder(rd, [f"val_{m.key}" for m in preset.metrics], n_groups)
    all_sinks += [recorder, *(sinks or [])]
    closers = [recorder.close]
    server = None
    if tensorboard is not None:
        tb = TensorBoardSink(tensorboard(log_dir=str(rd.path / "tensorboard")))
        all_sinks.append(tb)
        closers.append(tb.close)
    if serve:
        server = ControlServer(rd.path, control)
        server.start()
        all_sinks.append(server)
        closers.insert(0, server.close)  # viewers get the final events before the socket goes
    closers.append(dist.close)
    return Session(preset, rd, trainer, control, closers, all_sinks, server, fan_out)


class RankFailure:
    """Many ranks: a rank's failure reaches the person. The launcher's one line names the rank and
    says why (torch's elastic launcher reads it from the file its TORCHELASTIC_ERROR_FILE names:
    the rank's process ends with os._exit, so no exception carries it there), and a rank other than
    0, which prints nothing else, prints it on stderr, unless it failed on the connection a rank that
    ended first closed (the launcher names that one)."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Failed):
            return
        from tui_trainer.run.ranks import LOST_PEER

        lost_peer = any(w in event.error.lower() for w in LOST_PEER)  # an echo of another rank's end
        if self.rank and not lost_peer:
            print(f"tui-trainer: error: rank {self.rank}: {event.error}", file=sys.stderr, flush=True)
        own = os.environ.get("TUI_TRAINER_FAILURES")  # run/ranks.py: the launcher names the first to fail
        if own:
            try:
                Path(own, f"rank-{self.rank}.json").write_text(
                    json.dumps({"rank": self.rank, "error": event.error, "time": time.time()}), encoding="utf-8")
            except OSError:
                pass
        record_for_torchrun(event.error, event.traceback)


class FanOut:
    """The engine's one sink: every event to every sink in `sinks` (a live list), in order. A sink
    that raises is dropped (and the others are told), so a broken reporter can never end a training
    run or skip its checkpoint.

    `note()` is the one way in from another thread (the app's, when it crashed): the lock keeps
    each event whole and in order in every sink, and nothing follows the final event. Uncontended,
    it costs the training thread well under a microsecond per event."""

    def __init__(self, sinks: list[Callable[[Event], None]]):
        self.sinks = sinks
        self.ended = False  # Finished or Failed went out
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            match event:
                case Finished() | Failed():
                    self.ended = True
            self._send(event)

    def note(self, event: Event) -> bool:
        with self._lock:
            if self.ended:
                return False
            self._send(event)
            return True

    def _send(self, event: Event) -> None:
        sinks = self.sinks
        for s in list(sinks):
            try:
                s(event)
            except Exception as exc:  # noqa: BLE001
                sinks.remove(s)
                note = RunWarning(getattr(event, "step", 0) or 0, f"output {type(s).__name__} failed and is off"
                                  f" for the rest of the run: {type(exc).__name__}: {exc}")
                for other in list(sinks):
                    try:
                        other(note)
                    except Exception:  # noqa: BLE001
                        sinks.remove(other)


def _tensorboard_writer_class(preset: config.Preset):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("needs the tensorboard package: pip install tensorboard (or set it to false)",
                        key="log.tensorboard", source=preset.key_source("log.tensorboard")) from None
    return SummaryWriter


class TensorBoardSink:
    """Scalars to TensorBoard: train loss and LR per report, validation and [[metrics]] per epoch
    (`epoch/val_dice`: the metric's monitor name)."""

    def __init__(self, writer):
        self.writer = writer

    def __call__(self, event: Event) -> None:
        match event:
            case StepReport():
                for i, loss in enumerate(event.losses):
                    self.writer.add_scalar("train/loss", loss, event.first_step + i)
                for g, lr in enumerate(event.lrs):
                    self.writer.add_scalar(f"lr/group{g}", lr, event.step)
            case EpochEnd():
                for key in ("train_loss", "val_loss", "val_acc"):
                    value = getattr(event, key)
                    if value is not None:
                        self.writer.add_scalar(f"epoch/{key}", value, event.epoch)
                for monitor, value in event.metrics.items():
                    if value is not None and monitor not in ("train_loss", "val_loss", "val_acc"):
                        self.writer.add_scalar(f"epoch/{monitor}", value, event.epoch)

    def close(self) -> None:
        self.writer.close()
