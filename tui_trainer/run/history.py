"""What `tui-trainer compare` knows about each run: its curves, its best value and its state, read
from events.jsonl incrementally (each poll reads only the bytes appended since the last one), and
what differs between the runs' config.toml files. No screen here (the layers: run never imports
textual); ui/compare.py draws it.

Memory is bounded whatever the run's length: every curve keeps at most `Curve.max_points` points
(past that, neighbours merge pairwise and the curve's stride doubles), and a poll reads at most
`EventTail.max_read` bytes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_trainer.errors import UserError

MIN_RUNS, MAX_RUNS = 2, 6
TRAIN_LOSS = "train loss"  # the per-step curve; every other curve is an EpochEnd value by name
_SKIP = (b'{"kind":"LayerStats"', b'{"kind":"Printed"', b'{"kind":"CheckpointSaved"')  # large or unused lines


class Curve:
    """(x, y) points in increasing x; past `max_points` neighbours merge pairwise (x of the later,
    mean of y), so a million-step run keeps the same few thousand points. Non-finite ys are skipped."""

    def __init__(self, max_points: int = 2048):
        self.max_points = max_points
        self.stride = 1
        self.xs: list[float] = []
        self.ys: list[float] = []
        self._sum = 0.0
        self._n = 0

    def add(self, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(y):
            return
        self._sum += y
        self._n += 1
        if self._n < self.stride:
            return
        self.xs.append(x)
        self.ys.append(self._sum / self._n)
        self._sum, self._n = 0.0, 0
        if len(self.xs) > self.max_points:
            end = len(self.xs) - len(self.xs) % 2  # an odd newest point has no partner: it stays
            self.xs = self.xs[1:end:2] + self.xs[end:]
            self.ys = [(a + b) / 2 for a, b in zip(self.ys[:end:2], self.ys[1:end:2])] + self.ys[end:]
            self.stride *= 2

    def cut_after(self, x: float) -> None:
        """Forget points past x (a resumed run goes back to its checkpoint's step)."""
        keep = sum(1 for v in self.xs if v <= x)
        del self.xs[keep:], self.ys[keep:]
        self._sum, self._n = 0.0, 0

    def __len__(self) -> int:
        return len(self.xs)


class EventTail:
    """events.jsonl read from where the last read ended: whole lines only (a line still being
    written waits for its newline), at most `max_read` bytes per call. A file that shrank (replaced
    or truncated) is read again from its start, and `reset` says so."""

    def __init__(self, path: Path, max_read: int = 8 * 2**20):
        self.path = path
        self.max_read = max_read
        self.offset = 0
        self.reset = False

    def read(self) -> list[bytes]:
        """New complete lines since the last call. Raises OSError when the file cannot be read."""
        self.reset = False
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < self.offset:
                self.offset, self.reset = 0, True
            if size == self.offset:
                return []
            f.seek(self.offset)
            chunk = f.read(min(self.max_read, size - self.offset))
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) < self.max_read:
                return []  # half a line: wait for its end
            end = len(chunk) - 1  # one line longer than a whole read: skip it rather than stall
            self.offset += end + 1
            return []
        self.offset += end + 1
        return chunk[:end].split(b"\n")

    @property
    def behind(self) -> bool:
        """Whether more bytes are waiting than the last read took."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False


@dataclass
class EpochPoint:
    epoch: int
    step: int
    values: dict[str, float | None]


@dataclass
class RunHistory:
    """One run as compare shows it. `poll()` reads what was appended and says whether anything
    the screen shows changed."""

    path: Path
    label: str = ""
    run_name: str = ""
    monitor: str | None = None
    epochs: int | None = None  # planned
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    step: int = 0
    epoch: int = 0
    state: str = "starting"  # starting, running, paused, stopping, then a Finished status, failed, dead
    final: bool = False  # a Finished or Failed event was read
    best: float | None = None
    best_epoch: int | None = None
    config: dict[str, Any] | None = None
    config_error: str | None = None
    train: Curve = field(default_factory=Curve)
    curves: dict[str, Curve] = field(default_factory=dict)  # per-epoch values by name: val_loss, val_acc, ...
    lines: int = 0  # events read
    _tail: EventTail | None = None
    _grew_at: float = 0.0
    _checked_at: float = 0.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.label = self.label or self.path.name
        self._tail = EventTail(self.path / "events.jsonl")

    # ------------------------------------------------------------------ reading

    def poll(self, now: float | None = None) -> bool:
        """Read the new lines of events.jsonl; True when something shown changed. Raises OSError
        when the file cannot be read (the caller decides whether that is fatal)."""
        now = time.monotonic() if now is None else now
        lines = self._tail.read()
        changed = False
        if self._tail.reset:
            self._clear()
            changed = True
        for line in lines:
            if not line or line.startswith(_SKIP):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a killed writer
            if isinstance(record, dict):
                changed |= self._apply(record)
        if lines:
            self._grew_at = now
        if not self.final and now - max(self._grew_at, self._checked_at) > 10:
            changed |= self.check_alive(now)  # quiet for 10 s: is anybody still writing it?
        return changed

    def check_alive(self, now: float | None = None) -> bool:
        """A run with no final event is alive while its control socket answers (as `ls` says);
        otherwise it was killed ("dead"). True when the state changed."""
        self._checked_at = time.monotonic() if now is None else now
        if self.final:
            return False
        alive = serving(self.path)
        before = self.state
        if not alive:
            self.state = "dead"
        elif self.state == "dead":
            self.state = "running"
        return self.state != before

    def _clear(self) -> None:
        fresh = RunHistory(self.path, self.label, config=self.config, config_error=self.config_error)
        fresh._tail = self._tail
        self.__dict__.update(fresh.__dict__)

    def _apply(self, r: dict) -> bool:
        kind = r.get("kind")
        self.lines += 1
        try:
            if kind == "StepReport":
                first = int(r["first_step"])
                for i, loss in enumerate(r["losses"]):
                    self.train.add(first + i, _float(loss))
                self.step, self.epoch = int(r["step"]), int(r["epoch"])
                if self.state in ("starting", "dead"):
                    self.state = "running"
                return True
            if kind == "EpochEnd":
                values = {"val_loss": _float(r.get("val_loss")), "val_acc": _float(r.get("val_acc")),
                          "train_loss (epoch)": _float(r.get("train_loss"))}
                values.update({str(k): _float(v) for k, v in (r.get("metrics") or {}).items()})
                epoch, step = int(r["epoch"]), int(r["step"])
                for name, value in values.items():
                    if value is not None:
                        self.curves.setdefault(name, Curve()).add(epoch, value)
                self.step, self.epoch = step, epoch
                if r.get("improved") and r.get("monitor"):  # what the best is (train_loss for an epoch
                    self.monitor = r["monitor"]  # without its monitored number: stopping.monitored)
                self.best, self.best_epoch = _float(r.get("best")), r.get("best_epoch")
                return True
            if kind == "RunStarted":
                self.run_name = str(r.get("run_name") or "")
                self.monitor = r.get("monitor") or self.monitor
                self.epochs, self.total_steps = r.get("epochs"), r.get("total_steps")
                self.steps_per_epoch = r.get("steps_per_epoch")
                start_step, start_epoch = int(r.get("start_step") or 0), int(r.get("start_epoch") or 1)
                self.train.cut_after(start_step)  # a resume: steps after its checkpoint are done again
                for curve in self.curves.values():
                    curve.cut_after(start_epoch - 1)
                self.step = start_step
                self.final = False
                self.state = "running" if self.state in ("dead", "starting") else self.state
                return True
            if kind == "StateChanged":
                if not self.final:
                    self.state = str(r.get("state") or self.state)
                return True
            if kind == "Finished":
                self.final, self.state = True, str(r.get("status") or "finished")
                self.step = int(r.get("step", self.step))
                if r.get("best") is not None:
                    self.best, self.best_epoch = _float(r.get("best")), r.get("best_epoch")
                    self.monitor = r.get("monitor") or self.monitor
                return True
            if kind == "Failed":
                self.final, self.state = True, "failed"
                self.step = int(r.get("step", self.step))
                return True
        except (KeyError, TypeError, ValueError):
            return False  # a malformed line is skipped like a torn one
        return False

    # ------------------------------------------------------------------ what the screen asks

    def curve(self, name: str) -> Curve | None:
        return self.train if name == TRAIN_LOSS else self.curves.get(name)

    def last(self, name: str) -> float | None:
        c = self.curve(name)
        return c.ys[-1] if c is not None and len(c) else None

    @property
    def steps_text(self) -> str:
        return f"{self.step}/{self.total_steps}" if self.total_steps else str(self.step)


def serving(run_dir: Path) -> bool:
    """Whether the run's control socket (named in its control.json: run/server.py) answers. Unlike
    run/server.py `live_socket` it never removes a stale socket (compare only reads) and imports
    nothing of the engine (no torch: compare starts in a fraction of the time)."""
    try:
        path = json.loads((run_dir / "control.json").read_text(encoding="utf-8"))["socket"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
        return True
    except (OSError, TypeError, ValueError):
        return False
    finally:
        probe.close()


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# ---------------------------------------------------------------------- opening runs


def open_runs(paths: list[str | Path]) -> list[RunHistory]:
    """2-6 run directories, each read once whole; a bad one is a UserError (one line, exit 2)."""
    if not MIN_RUNS <= len(paths) <= MAX_RUNS:
        raise UserError(f"give {MIN_RUNS} to {MAX_RUNS} run directories (got {len(paths)}); `tui-trainer ls`"
                        " lists runs", source="compare")
    seen: dict[Path, str] = {}
    runs = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise UserError(f"{path} {what}; give run directories (`tui-trainer ls` lists them)", source="compare")
        key = path.resolve()
        if key in seen:
            raise UserError(f"{path} is given twice (also as {seen[key]}); give each run once", source="compare")
        seen[key] = str(path)
        events = path / "events.jsonl"
        if not events.is_file():
            raise UserError(f"{path} is not a run directory (no events.jsonl); `tui-trainer ls` lists runs",
                            source="compare")
        run = RunHistory(path)
        try:
            while True:  # the whole history, in bounded reads
                run.poll()
                if not run._tail.behind:
                    break
        except OSError as exc:
            raise UserError(f"cannot read {events} ({exc.strerror or exc}); check its permissions"
                            " (chmod u+r) or give another run", source="compare") from None
        if run.lines == 0 and events.stat().st_size > 0:
            raise UserError(f"{events} has no tui-trainer events (not one JSON event line); give a run directory"
                            " made by tui-trainer", source="compare")
        if not run.final:
            run.check_alive()
        run.config, run.config_error = read_config(path / "config.toml")
        runs.append(run)
    labels = short_labels([r.path for r in runs])
    for run, label in zip(runs, labels):
        run.label = label
    return runs


def newest_runs(count: int, base: str | Path = "runs") -> list[Path]:
    """The `count` most recently started runs under `base`, oldest first (`tui-trainer compare`
    without run directories)."""
    from tui_trainer.run.catalog import list_runs

    if not MIN_RUNS <= count <= MAX_RUNS:
        raise UserError(f"--last takes {MIN_RUNS} to {MAX_RUNS} (got {count})", source="compare")
    runs = list_runs(base)
    if len(runs) < count:
        where = f"{base}/" if Path(base).is_dir() else f"no {base}/ folder here"
        raise UserError(f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {where}, {count} needed; give run"
                        " directories (`tui-trainer compare RUN_DIR RUN_DIR`)", source="compare")
    return [r.path for r in runs[-count:]]


def short_labels(paths: list[Path]) -> list[str]:
    """Each run's folder name; folders of the same name get their parent too."""
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


# ---------------------------------------------------------------------- configs


def read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """config.toml as a dict, or None and why not (compare shows the curves anyway)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "no config.toml"
    except OSError as exc:
        return None, f"config.toml unreadable ({exc.strerror or exc})"
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return None, f"config.toml is not TOML ({exc})"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}; lists (of tables too) stay one value."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


MISSING = object()


def config_diff(configs: list[dict[str, Any] | None]) -> list[tuple[str, list[Any]]]:
    """The keys whose values are not the same in every config, each with one value per config
    (MISSING where a config lacks the key, or has no config at all), in the first config's key
    order and then the others'."""
    flats = [flatten(c) if c is not None else None for c in configs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat or {}))
    out = []
    for key in keys:
        values = [flat.get(key, MISSING) if flat is not None else MISSING for flat in flats]
        if any(not _same(v, values[0]) for v in values[1:]):
            out.append((key, values))
    return out


def _same(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def value_text(value: Any) -> str:
    """A config value as the table shows it: strings bare, the rest as TOML would write them,
    "-" for a key the run's config does not have."""
    if value is MISSING:
        return "-"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)
