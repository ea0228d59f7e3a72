"""`tui_trainer.fit`: the engine with the user's own objects, from Python.

The same Trainer, run directory, checkpoints, exact resume, callbacks, keys, control socket and
`attach` as a preset run; only the parts come from the caller (parts/objects.py) and the settings
from keyword arguments (and an optional preset file). The run is shown by the same app (a terminal)
or the same headless lines (`ui=False`, or no terminal).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_trainer import config
from tui_trainer.errors import UserError, did_you_mean

SOURCE = "fit"
# fit() keywords that are not settings
OBJECT_ARGUMENTS = ("model", "train_data", "val_data", "optimizer", "loss", "scheduler", "metrics", "step",
                    "callbacks", "preset", "ui", "resume", "run_dir", "name")
# sections whose keys name what fit takes as objects instead
NOT_SETTINGS = {"model": "model", "optimizer": "optimizer", "loss": "loss", "step": "step",
                "callbacks": "callbacks", "metrics": "metrics"}
NOT_FOR_OBJECTS = {"scheduler.name": "scheduler", "data.dataset": "train_data", "data.kwargs": "train_data",
                   "data.collate": "train_data"}


@dataclass(frozen=True)
class Result:
    """How a `fit` ended. `status`: completed, early_stopped, stopped (a key, a callback), signal,
    nonfinite or failed; `exit_code` what the CLI would exit with; `metrics` the last epoch's
    (train_loss, val_loss, val_acc and every val_<label>); `best` the best value of `monitor`."""

    status: str
    exit_code: int
    step: int
    epoch: int
    run_dir: str
    best_path: str | None = None
    last_path: str | None = None
    monitor: str = "val_loss"
    best: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None


def settings_preset(preset: str | Path | None, name: str | None, settings: dict[str, Any],
                    metrics: Iterable | None, objects: dict[str, str] | None = None) -> config.Preset:
    """The run's settings: the preset file's (if any), then the keyword arguments. A keyword is a
    preset key: short when one section has it (`epochs`, `log_every`, `every_epochs`), a section
    name with a dict (`checkpoint={"every_epochs": 2}`), or dotted through `**{"train.amp": "bf16"}`."""
    raw: dict[str, Any] = {}
    source = SOURCE
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            raise UserError("no such preset file", source=str(path))
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"not a TOML preset: {exc}", source=str(path)) from None
        source = str(path)
    unused = _objects_keys(raw)  # what fit's objects replace: dropped, so config.toml does not claim them
    raw.setdefault("name", name or (Path(preset).stem if preset is not None else "fit"))
    if name is not None:
        raw["name"] = name
    sections = {n: f for n, f in config.Preset.model_fields.items()
                if isinstance(f.default, config.BaseModel)}
    owners: dict[str, list[str]] = {}
    for section, info in sections.items():
        for key in type(info.default).model_fields:
            owners.setdefault(key, []).append(section)
    for key, value in settings.items():
        if key in sections and isinstance(value, dict):
            for sub, v in value.items():
                _set(raw, f"{key}.{sub}", v)
            continue
        if "." in key:
            _set(raw, key, value)
            continue
        where = [s for s in owners.get(key, []) if s not in NOT_SETTINGS]
        if len(where) == 1:
            _set(raw, f"{where[0]}.{key}", value)
        elif len(where) > 1:
            raise UserError(f"{key} is a key of {', '.join(where)}; say which: {where[0]}={{\"{key}\": ...}}",
                            source=SOURCE, key=key)
        elif owners.get(key):
            section = owners[key][0]
            raise UserError(f"{section}.{key} is for presets; fit takes your {NOT_SETTINGS[section]} object itself"
                            f" (pass {NOT_SETTINGS[section]}=...)", source=SOURCE, key=key)
        else:
            known = [k for k, secs in owners.items() if any(s not in NOT_SETTINGS for s in secs)]
            raise UserError(f"unknown setting{did_you_mean(key, [*known, *OBJECT_ARGUMENTS])}; settings are preset"
                            " keys (epochs, log_every, batch_size, every_epochs, patience ...)", source=SOURCE, key=key)
    if metrics is not None:
        raw["metrics"] = [_metric_entry(m, i) for i, m in enumerate(metrics)]
    for key, what in (objects or {}).items():  # config.toml says what ran: "python:<class>" of each object
        section, _, sub = key.partition(".")
        raw.setdefault(section, {})[sub] = what
    made = config.from_dict(raw, source=source)
    if unused:
        made._notes = (f"{source}: {', '.join(unused)} not used: fit trains the objects you pass (their classes"
                       " are what config.toml records)",)
    return made


OBJECT_SECTIONS = ("model", "optimizer", "loss")  # a preset's, wholly replaced by fit's model, optimizer and loss


def _objects_keys(raw: dict[str, Any]) -> list[str]:
    """Take out of a preset's table the keys that fit's objects replace ([model], [optimizer], [loss],
    scheduler.name and its kwargs, the dataset's keys) and name them: they were ignored without a word
    while config.toml still recorded them (a [model] kwargs that never applied)."""
    said = [f"[{s}]" for s in OBJECT_SECTIONS if raw.pop(s, None)]
    for key in ("scheduler.name", "scheduler.kwargs", *NOT_FOR_OBJECTS):
        section, _, sub = key.partition(".")
        if isinstance(raw.get(section), dict) and sub in raw[section]:
            del raw[section][sub]
            if key not in said:
                said.append(key)
    return said


def object_names(**objects) -> dict[str, str]:
    """"python:package.module.Class" of each object, as config.toml records them (the run's objects
    came from Python, not from these names: a preset cannot rebuild them)."""
    keys = {"model": "model.arch", "train_data": "data.dataset", "optimizer": "optimizer.name", "loss": "loss.name",
            "scheduler": "scheduler.name", "step": "step.fn"}
    out = {}
    for name, obj in objects.items():
        if obj is None:
            continue
        cls = obj if inspect.isfunction(obj) else type(obj)
        out[keys[name]] = f"python:{cls.__module__}.{cls.__qualname__}"
    return out


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    if key in NOT_FOR_OBJECTS:
        raise UserError(f"is for presets; fit takes your {NOT_FOR_OBJECTS[key]} object itself", source=SOURCE, key=key)
    section, _, rest = key.partition(".")
    if section in NOT_SETTINGS:
        raise UserError(f"is for presets; fit takes your {NOT_SETTINGS[section]} object itself", source=SOURCE, key=key)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{part} is not a section", source=SOURCE, key=key)
    node[parts[-1]] = value


def _metric_entry(metric, i: int) -> dict[str, Any]:
    """A metric as a [[metrics]] entry: a name ("accuracy", "torchmetrics:F1Score"), a dict of one, or
    a module-level function (named "module:function", so the run's config.toml says what it was)."""
    if isinstance(metric, str):
        return {"name": metric}
    if isinstance(metric, dict):
        return dict(metric)
    if callable(metric):
        path = _importable_name(metric)
        if path is None:
            raise UserError(f"[{i}]: {getattr(metric, '__name__', type(metric).__name__)} is not a module-level function"
                            " (a lambda or a nested function cannot be named); define it at the top of a module",
                            source=SOURCE, key="metrics")
        return {"name": path, "label": metric.__name__, "mode": getattr(metric, "mode", "auto")}
    raise UserError(f"[{i}] is a {type(metric).__name__}; give a name (\"accuracy\"), a dict or a function",
                    source=SOURCE, key="metrics")


def _importable_name(fn: Callable) -> str | None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname:
        return None
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"{module}:{qualname}" if obj is fn else None


@contextlib.contextmanager
def _own_signals():
    """A library call leaves the process's signal handlers as it found them."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")
    saved = {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names if hasattr(signal, n)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):  # not the main thread, or a handler set from C
                pass


def interactive(ui: bool | None) -> bool:
    """The app when asked for (default: when stdin and stderr are a terminal), else headless lines."""
    tty = sys.stdin is not None and sys.stdin.isatty() and sys.stderr is not None and sys.stderr.isatty()
    return tty if ui is None else bool(ui) and tty


# The monitor's runner (ui/launch.run_app). `run` never imports the screen (the layer rule);
# tui_trainer.api, the public API above `ui`, sets it when it is imported. Unset: headless lines.
app_runner: Callable | None = None


def run_session(opener: Callable, ui: bool | None, on_hangup: str = "stop") -> int:
    """Run what `opener` opens (prepare's wiring: sinks, should_stop, layer_stats, serve) in the app
    or headless, as the CLI runs a preset; the exit code the CLI would give."""
    from threading import current_thread, main_thread

    if current_thread() is not main_thread():
        raise UserError("runs on the main thread (it handles Ctrl+C and the terminal); call it from there",
                        source=SOURCE)
    with _own_signals():
        if interactive(ui) and app_runner is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return app_runner(None, opener=opener, on_hangup=on_hangup)  # (a rank of many: headless; attach)
        if ui:
            print("tui-trainer: no terminal on stdin/stderr; running headless", file=sys.stderr)
        from tui_trainer.run.headless import run_headless

        return run_headless(None, opener=opener, serve=True)


def fit(model, train_data, val_data=None, *, optimizer, loss, scheduler=None, metrics=None, step=None,
        callbacks=(), preset=None, ui: bool | None = None, resume: str | None = None, run_dir=None,
        name: str | None = None, **settings) -> Result:
    """Train `model` on your data with your optimizer and loss, in the tui-trainer monitor.

    - `train_data`, `val_data`: Datasets (tui-trainer batches them: `batch_size`, seeded order,
      exact resume) or DataLoaders (used as they are; a shuffling loader cannot be resumed exactly
      mid-epoch: the run says so). `val_data=None`: no validation.
    - `optimizer`, `loss`: objects. `scheduler`: optional, stepped per epoch (per step for
      OneCycleLR/CyclicLR, or with `interval="step"`); ReduceLROnPlateau gets `val_loss` (or
      `**{"scheduler.monitor": "val_acc"}`). The LR keys scale every param group on top of it.
    - `metrics`: names ("accuracy", "f1", "mae", "torchmetrics:F1Score"), dicts ({"name": "f1",
      "label": "f1"}) or module-level functions fn(outputs, targets) -> a number.
    - `step`: fn(model, batch, loss_fn) -> loss or {"loss", "outputs", "targets"} (default: the
      classifier step on (input, target) batches). `callbacks`: objects with on_event(event, control)
      or tutorial hooks (on_epoch_end ...).
    - `preset`: a preset file for settings; `**settings`: preset keys (`epochs=5, log_every=10,
      batch_size=32, every_epochs=1, patience=3, device="cuda", amp="bf16"`; a section as a dict:
      `early_stopping={"enabled": True}`).
    - `ui`: None = the app when there is a terminal, else headless lines; `resume`: "auto" (the
      newest checkpoint of this name) or a path; `run_dir`: where the run is written (default
      runs/<name>-<time>/). `name`: default the preset file's name, else the calling script's file
      name (so `resume="auto"` finds this script's runs, not another's), else "fit".

    Returns a `Result`. Bad input raises SystemExit(2) after one line on stderr naming the argument,
    before anything is written."""
    from tui_trainer.run.launch import prepare_objects

    if name is None and preset is None:  # the script that calls fit: its runs, for resume="auto"
        from tui_trainer.run.loop import file_name

        name = file_name(sys._getframe(1).f_globals.get("__file__")) or None
    try:
        record = object_names(model=model, train_data=train_data, optimizer=optimizer, loss=loss,
                              scheduler=scheduler, step=step)
        groups = getattr(optimizer, "param_groups", None)
        if groups and isinstance(groups[0].get("lr"), (int, float)) and groups[0]["lr"] > 0:
            record["optimizer.lr"] = float(groups[0]["lr"])
        record.update(_loader_batch(train_data, settings))
        cfg = settings_preset(preset, name, settings, metrics, record)
        if cfg.train.devices != 1 and "WORLD_SIZE" not in os.environ:
            raise UserError(f"is {cfg.train.devices}: fit trains in this process, with your objects; for several"
                            " GPUs start the script with torchrun (torchrun --nproc-per-node=4 train.py): every rank"
                            " then runs fit, rank 0 writes the run, and `tui-trainer attach` shows it",
                            source=SOURCE, key="devices")
        from tui_trainer.parts.objects import scheduler_interval

        said = ("interval" in settings or "interval" in (settings.get("scheduler") or {})
                or "interval" in (_preset_table(preset).get("scheduler") or {}))
        interval = scheduler_interval(scheduler, cfg.scheduler.interval if said else None)
        if step is not None and not callable(step):
            raise UserError(f"is a {type(step).__name__}; give fn(model, batch, loss_fn)", source=SOURCE, key="step")
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            # a dict of its settings was taken for the scheduler and failed at the first epoch's end
            raise UserError(f"is a {type(scheduler).__name__}, not a scheduler; give the scheduler object here and"
                            ' its settings as **{"scheduler.monitor": "val_acc"}', source=SOURCE, key="scheduler")
        ending: dict[str, Any] = {}
        outer = (sys.stdout, sys.stderr)

        def opener(*, sinks, should_stop=None, layer_stats=False, serve=False):
            session = prepare_objects(cfg, model=model, train=train_data, val=val_data, optimizer=optimizer,
                                      loss_fn=loss, scheduler=scheduler, interval=interval, step_fn=step,
                                      callbacks=list(callbacks), resume=resume, run_dir=run_dir,
                                      sinks=sinks, should_stop=should_stop, layer_stats=layer_stats, serve=serve,
                                      taps=[_Ending(ending)])
            ending["run_dir"] = str(session.run_dir.path)
            if session.trainer.dist.writer:
                capture_prints(session.trainer, outer)
            return session

        code = run_session(opener, ui)
    except UserError as err:
        print(f"tui-trainer: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return _result(ending, code)


def capture_prints(trainer, outer) -> None:
    """What the user's code prints on the engine's thread (their step, dataset, callbacks) becomes
    Printed events (the Log pane, events.jsonl, the headless lines), never a write over the monitor's
    screen: run/capture.py, as `loop` does. Our own writes while an event is delivered are not taken."""
    from tui_trainer.engine.events import Printed
    from tui_trainer.run.capture import Capture

    delivering = [False]
    sink, run = trainer.sink, trainer.run

    def deliver(event) -> None:
        delivering[0] = True
        try:
            sink(event)
        finally:
            delivering[0] = False

    def run_capturing():
        capture = Capture(lambda text, stream: deliver(Printed(trainer.step, text, stream)), lambda: delivering[0],
                          outer=outer)
        capture.start()
        try:
            return run()
        finally:
            capture.stop()

    trainer.sink, trainer.run = deliver, run_capturing


def _loader_batch(train_data, settings: dict[str, Any]) -> dict[str, int]:
    """A DataLoader keeps its own batch size: the run counts samples (samples/s, config.toml) with
    it, not with the batch_size setting, which only Datasets use; a different batch_size is refused."""
    from torch.utils.data import DataLoader

    if not isinstance(train_data, DataLoader):
        return {}
    size = train_data.batch_size or getattr(train_data.batch_sampler, "batch_size", None)
    if not isinstance(size, int) or size < 1:
        return {}
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    for key, given in (("batch_size", settings.get("batch_size")), ("data.batch_size", settings.get("data.batch_size")),
                       ("data", data.get("batch_size"))):
        if given is not None and given != size:
            raise UserError(f"is {given}, but train_data is a DataLoader that makes batches of {size}; leave"
                            " batch_size out (a DataLoader keeps its own)", source=SOURCE,
                            key="batch_size" if key == "data" else key)
    return {"data.batch_size": size}


def _preset_table(preset) -> dict[str, Any]:
    if preset is None:
        return {}
    try:
        return tomllib.loads(Path(preset).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class _Ending:
    """A sink that keeps what `Result` reports: the last epoch's metrics and the final event."""

    def __init__(self, into: dict[str, Any]):
        self.into = into

    def __call__(self, event) -> None:
        from tui_trainer.engine.events import EpochEnd, Failed, Finished, RunStarted

        match event:
            case RunStarted():
                self.into["monitor"] = event.monitor
            case EpochEnd():
                self.into["metrics"] = {"train_loss": event.train_loss, "val_loss": event.val_loss,
                                        "val_acc": event.val_acc, **event.metrics}
            case Finished() | Failed():
                self.into["final"] = event


def _result(ending: dict[str, Any], code: int) -> Result:
    from tui_trainer.engine.events import Finished

    final = ending.get("final")
    common = dict(exit_code=code, run_dir=ending.get("run_dir", ""), monitor=ending.get("monitor", "val_loss"),
                  metrics=ending.get("metrics", {}))
    if isinstance(final, Finished):
        if final.monitor:
            common["monitor"] = final.monitor  # what `best` is (train_loss for a run without validation)
        return Result(final.status, step=final.step, epoch=final.epoch, best_path=final.best_path,
                      last_path=final.last_path, best=final.best, **common)
    if final is not None:
        return Result("failed", step=final.step, epoch=final.epoch, last_path=final.emergency_path,
                      error=final.error, **common)
    return Result("failed", step=0, epoch=0, error="the run did not report its end", **common)

