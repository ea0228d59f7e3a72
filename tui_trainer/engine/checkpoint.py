"""Checkpoints: atomic writes, last/best as hard links, keep-N rotation, weights_only loading.

A checkpoint file only ever appears under its final name complete: it is written to a hidden
temp file in the same directory (".name.pt.<pid>.tmp"), flushed, fsynced, renamed with
os.replace, and the directory is fsynced. `last.pt` and `best.pt` are extra names (hard links)
for a file already written, so a save costs one write however many names it gets.

A write that fails is an OSError; `atomic_save` raises it as a CheckpointWriteError that says why
in one line ("disk full: 3.2 MiB free in runs/x/checkpoints"). torch.save reports a short write as
a RuntimeError ("[enforce fail at inline_container.cc:672] . unexpected pos ..."), with the
ENOSPC OSError only in its __context__: `describe_write_error` looks there, and at the free space.

The trainer's state (`trainer_state` / `load_trainer_state`: what a checkpoint holds and how a
resume puts it back) and the file names of its saves (`file_name`) live here too, as DESIGN.md
places them: what is in a checkpoint and how it is written are read together, and the file stays
under 400 lines with them, so no sibling module is needed. `Trainer.state_dict()` and
`Trainer.load_state_dict()` remain as one-line methods (run/launch.py and tests call them).
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tui_trainer.engine.stopping import resume_best
from tui_trainer.errors import UserError, describe_load_error

if TYPE_CHECKING:
    from tui_trainer.engine.trainer import Trainer

FORMAT = "tui-trainer/1"
_TMP = re.compile(r"^\..+\.tmp$")
_MiB = 1 << 20
# torch's zip writer (caffe2::serialize::PyTorchStreamWriter) turns a failed write into these
_WRITER_FAILURE = ("inline_container", "PytorchStreamWriter")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written. `reason` is one line for a person; `disk_full` when the
    disk (or the quota) ran out. The temp file is already gone; the original error is __cause__."""

    def __init__(self, reason: str, errno_: int | None = None, disk_full: bool = False):
        if errno_ is not None:
            super().__init__(errno_, reason)
        else:
            super().__init__(reason)
        self.reason = reason
        self.disk_full = disk_full

    def __str__(self) -> str:
        return self.reason


class CheckpointDir:
    def __init__(self, root: str | Path, keep_last: int):
        self.root = Path(root)  # made by the first write: a run that never starts leaves nothing
        self.keep_last = keep_last

    def clean_stray(self) -> list[Path]:
        """Remove temp files a killed process left behind."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if _TMP.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def write(self, name: str, payload: dict[str, Any]) -> tuple[Path, int]:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        atomic_save(payload, path)
        return path, path.stat().st_size

    def alias(self, path: Path, name: str) -> Path:
        """Give an existing checkpoint another name, atomically (hard link, else copy)."""
        dest = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(path, tmp)
            except OSError:
                import shutil

                shutil.copyfile(path, tmp)  # no hard links here: a copy, which a full disk can cut short
                _fsync_file(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        return dest

    def save(self, name: str, tags: tuple[str, ...], payload: dict[str, Any]) -> tuple[Path, int]:
        """Write `name`, give it the other names its tags ask for (last.pt, best.pt), and after an
        epoch save keep only the newest `keep_last` epoch files. Any step failing is an OSError."""
        path, size = self.write(name, payload)
        if "last" in tags and name != "last.pt":
            self.alias(path, "last.pt")
        if "best" in tags and name != "best.pt":
            self.alias(path, "best.pt")
        if "epoch" in tags:
            self.rotate()
        return path, size

    def rotate(self, pattern: str = "epoch-*.pt") -> list[Path]:
        """Keep the newest `keep_last` files matching `pattern` (0 keeps none)."""
        files = sorted(self.root.glob(pattern))
        doomed = files[: max(0, len(files) - self.keep_last)]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` to `path` whole or not at all. A failed write (OSError, or torch's
    RuntimeError for a short write) raises CheckpointWriteError after removing the temp file;
    anything else (an object that cannot be pickled: a bug) is raised as it is."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # first: the free space measured below is without it
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _is_write_failure(exc)):
            reason = describe_write_error(exc, path.parent, _payload_bytes(payload))
            raise CheckpointWriteError(reason, _errno(exc), reason.startswith(("disk full", "disk quota"))) from exc
        raise
    _fsync_dir(path.parent)


def describe_write_error(exc: BaseException, directory: str | Path, need_bytes: int | None = None) -> str:
    """One line for a failed checkpoint write into `directory`: "disk full: 3.2 MiB free in DIR" when
    the error (or its __cause__/__context__: torch wraps it in a RuntimeError) is ENOSPC, or when
    no errno says and the directory has less free space than `need_bytes`; else the real error."""
    if isinstance(exc, CheckpointWriteError):
        return exc.reason
    code = _errno(exc)
    free = free_bytes(directory)
    room = f"{_mib(free)} free in {directory}" if free is not None else ""
    if code == errno.ENOSPC or (code is None and need_bytes is not None and free is not None and free < need_bytes):
        if not room:
            return f"disk full in {directory}"
        return f"disk full: {room}" + (f", the checkpoint needs about {_mib(need_bytes)}" if need_bytes else "")
    if code == errno.EDQUOT:
        return f"disk quota exceeded: {room}" if room else f"disk quota exceeded in {directory}"
    if code == errno.EFBIG:
        return f"File too large for {directory} (over the process file size limit, ulimit -f, or the file system's)"
    if isinstance(exc, OSError) and code is not None:
        return exc.strerror or str(exc)
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" + (f" ({room})" if room else "")


def free_bytes(directory: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use in `directory` (None when it cannot be measured)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / _MiB:.1f} MiB" if n < 10 * _MiB else f"{n / _MiB:.0f} MiB"


def _errno(exc: BaseException) -> int | None:
    """The errno of the first OSError in exc, its __cause__ or __context__ (recursively)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        todo += [e.__cause__, e.__context__]
    return None


def _is_write_failure(exc: RuntimeError) -> bool:
    """torch.save's RuntimeError is a failed write when an OSError caused it or its zip writer says so."""
    return _errno(exc) is not None or any(marker in str(exc) for marker in _WRITER_FAILURE)


def _payload_bytes(payload: Any) -> int:
    """About what torch.save writes: the bytes of every tensor storage in `payload`, each counted once."""
    seen: set[tuple[str, int]] = set()
    total = 0
    todo = [payload]
    while todo:
        obj = todo.pop()
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (str(obj.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(obj, dict):
            todo += obj.values()
        elif isinstance(obj, (list, tuple)):
            todo += obj
    return total


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ArgNames:
    """How the person wrote a run's resume and run directory, for the errors that name them: the
    CLI's flags, or the keywords of a Python API (`api_names("fit")`: `fit: resume: ...`,
    `resume="auto"`)."""

    resume: str = "--resume"  # what an error about the checkpoint to resume names first
    auto: str = "--resume auto"  # how to ask for the newest checkpoint of the run's name
    without: str = "--resume"  # what to leave out to start afresh
    asked_auto: str = "--resume auto"  # what an error names first when "auto" found nothing
    run_dir: str = "--run-dir"  # what an error about the run directory names first


CLI_NAMES = ArgNames()


def api_names(api: str) -> ArgNames:
    return ArgNames(f"{api}: resume", 'resume="auto"', "resume", f'{api}: resume="auto"', f"{api}: run_dir")


def load(path: str | Path, map_location="cpu", mmap: bool = False, arg: ArgNames = CLI_NAMES) -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only: no code runs). Bad files are UserErrors that
    name `arg`. `mmap`: map the tensors instead of reading them (a look at the metadata of a large file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give a .pt file from runs/*/checkpoints/ or {arg.auto}",
                        source=arg.resume)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        why = describe_load_error(exc)
        raise UserError(f"cannot load {path}: {why}", source=arg.resume) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a tui-trainer checkpoint (no '{FORMAT}' marker)", source=arg.resume)
    return state


# --------------------------------------------------------------------------- the trainer's state


def file_name(tags: tuple[str, ...], step: int, epoch: int) -> str:
    """The file a save with these tags writes (`epoch`: epochs completed, for an epoch save)."""
    if "manual" in tags:
        return f"manual-step-{step:08d}.pt"
    if "epoch" in tags:
        return f"epoch-{epoch:04d}.pt"
    if "emergency" in tags:
        return f"emergency-step-{step:08d}.pt"
    if tags == ("best",):
        return "best.pt"
    return "last.pt"


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Everything a resume needs to continue exactly where `t` is (what `Trainer.state_dict` returns)."""
    return {
        "format": FORMAT,
        "run_name": t.preset.name,
        "saved_at": time.time(),
        "step": t.step,
        "epoch": t.epoch,
        "batch_in_epoch": t.batch_in_epoch,
        "epoch_loss": list(t.epoch_loss),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "optimizer_class": type(t.optimizer).__name__,  # torch loads an SGD's state into an Adam without a word
        "schedule": t.schedule.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "rng": rng_state(),
        "trainable": {n: p.requires_grad for n, p in t.model.named_parameters()},
        "best": t.best.state_dict(),
        "early_stopping": t.early.best.state_dict() if t.early else None,
        "monitor": t.monitor,  # what `best` judged, and `early_stopping` (a resume with others starts them afresh)
        "es_monitor": t.es_monitor,
        "config": t.preset.to_dict(),
        "world": t.dist.world,  # ranks, and samples per optimizer step over all of them: what a resume must keep
        "global_batch": t.batch_size,
        "steps_per_epoch": t.parts.steps_per_epoch,
    }


def check_kind(state: dict[str, Any], path, loop: bool, arg: ArgNames = CLI_NAMES) -> None:
    """A checkpoint resumes the kind of run that made it: the engine's (a preset or `fit`; `loop`
    False) or `tui_trainer.loop`'s (`"kind": "loop"`). Their positions and states mean different
    things, so another kind is a UserError that says how to start from its weights instead."""
    if (state.get("kind") == "loop") == loop:
        return
    if loop:
        raise UserError(f"{path} is a checkpoint of a preset or fit run; resume it the way it was made (to start"
                        " your loop from its weights: model.load_state_dict(torch.load(path,"
                        " weights_only=True)['model']))", source=arg.resume)
    raise UserError(f"{path} is a checkpoint of a tui_trainer.loop run; resume it with loop(..., resume=) (to start"
                    f' from its weights: model.weights = "{path}" in a preset, or model.load_state_dict(torch.load('
                    "path, weights_only=True)['model']) before fit)", source=arg.resume)


def resume_fit(state: dict[str, Any], preset, world: int, path, parts=None,
               arg: ArgNames = CLI_NAMES) -> str | None:
    """Whether a checkpoint can continue exactly in a run of `world` ranks with `preset`. The position
    it holds (step, epoch, batch in epoch) counts optimizer steps of its global batch (per-rank batch
    x accumulate x ranks), so that must be the same: a UserError (exit 2, before anything starts)
    that says what would go wrong and how to keep it. Another number of ranks with the same global
    batch is fine (every step takes the same samples in the same order; sums differ by float
    rounding only): the note to show, else None. With the run's `parts` built, their steps per
    epoch must match too (a partial last batch is kept by one process and dropped by several)."""
    saved_world = int(state.get("world", 1))  # older checkpoints: one process
    cfg = state.get("config") or {}
    saved_global = int(state.get("global_batch") or 0) or (
        int((cfg.get("data") or {}).get("batch_size") or 0) * int((cfg.get("train") or {}).get("accumulate") or 1))
    per_rank = preset.data.batch_size * preset.train.accumulate
    now_global = per_rank * world

    def ranks(n: int) -> str:
        return f"{n} rank{'s' if n != 1 else ''}"

    if saved_global and saved_global != now_global:
        fixes = []
        if saved_global % (world * preset.train.accumulate) == 0:
            fixes.append(f"set data.batch_size = {saved_global // (world * preset.train.accumulate)}"
                         f" (keeps {saved_global} per step on {ranks(world)})")
        if saved_world != world and saved_global % saved_world == 0 \
                and saved_global // saved_world == per_rank:
            fixes.append(f"run on {ranks(saved_world)} (train.devices = {saved_world})")
        fixes.append(f'start a new run from its weights (model.weights = "{path}")')
        raise UserError(f"{path} was saved by {ranks(saved_world)} with {saved_global} samples per step, and this run"
                        f" takes {now_global} ({ranks(world)} x {per_rank}): its step and epoch count would not"
                        f" continue where it stopped, so it is not resumed; {', or '.join(fixes)}",
                        source=arg.resume)
    saved_steps, steps = state.get("steps_per_epoch"), getattr(parts, "steps_per_epoch", None)
    if saved_world != world and saved_steps is not None and steps is not None and int(saved_steps) != steps:
        raise UserError(f"{path} was saved with {saved_steps} steps per epoch and this run makes {steps} (with several"
                        " ranks a last partial batch is dropped, so every rank steps alike): its epoch position would"
                        f" not fit, so it is not resumed; resume on {ranks(saved_world)}, set data.drop_last = true in"
                        f' both, or start a new run from its weights (model.weights = "{path}")', source=arg.resume)
    if saved_world != world:
        return (f"resumed on {ranks(world)} from a checkpoint of {ranks(saved_world)}: the same {now_global}"
                " samples per step in the same order (the sums differ from an uninterrupted run by float rounding,"
                " and random layers such as dropout draw other masks on other ranks)")
    return None


def check_optimizer(state: dict[str, Any], optimizer, source, arg: str) -> None:
    """A checkpoint's optimizer state goes into an optimizer of the class that saved it: torch loads
    an SGD's state into an Adam without a word, and its first step failed on the missing 'betas'
    (a traceback, and the user's optimizer left with SGD's settings). Checkpoints that did not record
    the class are loaded as before."""
    saved = state.get("optimizer_class")
    if saved and saved != type(optimizer).__name__:
        raise UserError(f"{source} was saved with optimizer {saved} and this run's is {type(optimizer).__name__};"
                        " resume with the optimizer it was trained with (or start a new run from its weights)",
                        source=arg)


def best_file_of(source, epoch: int | None) -> Path | None:
    """The best.pt beside the resumed checkpoint `source` when it holds the best of epoch `epoch` (a
    resume that sets no new best still ends naming it); None when there is none, or a later best
    replaced it (a resume from an older epoch's file)."""
    path = Path(str(source)).parent / "best.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - absent or unreadable: no best file to name
        return None
    return path if isinstance(state, dict) and state.get("epoch") == epoch else None


def load_trainer_state(t: Trainer, state: dict, source: str = "checkpoint") -> None:
    """Put a checkpoint's state back into `t`: weights, optimizer, schedule, scaler, RNG, position,
    trainable map. A checkpoint of another model or optimizer is a UserError that names `source`."""
    try:
        t.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"{source} is from another model ({lines[1][:160] if len(lines) > 1 else lines[0]});"
                        " resume with the model it was trained with", source="--resume") from None
    trainable = state.get("trainable", {})
    for name, param in t.model.named_parameters():
        param.requires_grad_(bool(trainable.get(name, param.requires_grad)))
    check_optimizer(state, t.optimizer, source, "--resume")
    try:
        t.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise UserError(f"{source}: its optimizer state does not fit this optimizer or its param groups ({exc});"
                        " resume with the optimizer and param groups it was trained with", source="--resume") from None
    t.schedule.load_state_dict(state["schedule"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    t.step = int(state["step"])
    t.epoch = int(state["epoch"])
    t.batch_in_epoch = int(state["batch_in_epoch"])
    t.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
    saved = state.get("config") or {}
    for best, key, monitor, saved_best, saved_monitor, raw in (
            (t.best, "checkpoint.monitor", t.monitor, state.get("best"), state.get("monitor"), "checkpoint"),
            (t.early.best if t.early else None, "early_stopping.monitor", t.es_monitor, state.get("early_stopping"),
             state.get("es_monitor"), "early_stopping")):
        if best is None:
            continue
        if saved_monitor is None:  # an older checkpoint: the monitor its preset named, against this one's
            named = (saved.get(raw) or {}).get("monitor")
            saved_monitor = None if named in (None, getattr(t.preset, raw).monitor) else named
        if note := resume_best(best, saved_best, monitor, saved_monitor, key, str(source)):
            t.parts.warnings.append(note)
    if t.best.value is not None:  # the run's result names the best.pt of the best it goes on from
        t._best_path = best_file_of(source, t.best.epoch)
    t.schedule.before_step(t.step)
    set_rng_state(state["rng"])


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
