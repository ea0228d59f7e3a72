"""Where a run lives: runs/<name>-<YYYYmmdd-HHMMSS>/ with config.toml, events.jsonl, metrics.csv,
checkpoints/. The recorder appends every event unbuffered, so a killed run keeps its history: the
frequent ones (reports, epoch ends) within WRITE_WITHIN_S, in batches off the training thread; every
other one at once."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tui_trainer.config import Preset, dump_toml
from tui_trainer.engine.checkpoint import CLI_NAMES, ArgNames
from tui_trainer.engine.events import EpochEnd, Event, StepReport
from tui_trainer.errors import UserError
from tui_trainer.run.batched import Batched


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def unused(cls, name: str, base: str | Path = "runs") -> RunDir:
        """A free runs/<name>-<YYYYmmdd-HHMMSS>/ path, not made yet."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(base) / f"{name}-{stamp}"
        n = 2
        while path.exists():
            path = Path(base) / f"{name}-{stamp}-{n}"
            n += 1
        return cls(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    def write_config(self, preset: Preset) -> None:
        (self.path / "config.toml").write_text(dump_toml(preset), encoding="utf-8")


def find_latest(name: str, base: str | Path = "runs") -> Path | None:
    """The newest checkpoints/last.pt of this preset's runs (by modification time)."""
    candidates = [p for p in Path(base).glob(f"{name}-*/checkpoints/last.pt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def run_dir_of(checkpoint: Path) -> Path | None:
    """runs/x/checkpoints/last.pt -> runs/x, when that looks like one of our run directories."""
    parent = checkpoint.resolve().parent
    if parent.name == "checkpoints" and (parent.parent / "config.toml").is_file():
        return parent.parent
    return None


def resume_checkpoint(name: str, resume: str | None, base: str | Path = "runs",
                      arg: ArgNames = CLI_NAMES) -> Path | None:
    """`--resume PATH|auto` (or a Python API's `resume=`: `arg`) -> the checkpoint to continue from
    (not loaded yet), or None."""
    if not resume:
        return None
    path = find_latest(name, base) if resume == "auto" else Path(resume)
    if path is None:
        raise UserError(f"no {base}/{name}-*/checkpoints/last.pt in this directory; start without {arg.without},"
                        " or give the checkpoint's path", source=arg.asked_auto)
    return path


def choose_run_dir(name: str, run_dir: str | Path | None, resume_path: Path | None,
                   base: str | Path = "runs", arg: ArgNames = CLI_NAMES) -> tuple[RunDir, bool]:
    """Where a run writes, and whether that is a new directory: --run-dir; else the run the resumed
    checkpoint came from (one history); else a new runs/<name>-<time>/ (not made yet). The one rule
    for the foreground run and for `--detach`, which picks the directory before it forks. A --run-dir
    that holds a run already is refused unless the run resumes (`refuse_if_taken`)."""
    if run_dir is not None:
        rd = RunDir(run_dir)
        if resume_path is None:
            refuse_if_taken(rd, arg)
        return rd, False
    origin = run_dir_of(resume_path) if resume_path is not None else None
    if origin is not None:
        return RunDir(origin), False
    return RunDir.unused(name, base), True


def refuse_if_taken(rd: RunDir, arg: ArgNames = CLI_NAMES) -> None:
    """A new run (no resume) into a directory that holds another run's checkpoints would replace its
    best.pt and last.pt (and keep_last would delete its own first), and mix two histories in one
    events.jsonl and metrics.csv. Asked by the process that will write it (rank 0 of many, or one):
    the others find rank 0's files there."""
    if os.environ.get("RANK", "0") != "0":
        return
    refuse_if_live(rd, arg.run_dir)  # a run in it now: that is what to say (and how to attach)
    held = sorted(rd.checkpoints.glob("*.pt"))
    if not held:  # nothing to lose (a run killed before its first save: starting again is the way on)
        return
    last = rd.checkpoints / "last.pt"
    cont = (f"{arg.without} {last}" if arg is CLI_NAMES else f'{arg.without}="{last}"') if last.is_file() else \
        arg.without
    raise UserError(f"{rd.path} already holds a run with {len(held)} checkpoint{'' if len(held) == 1 else 's'};"
                    f" {cont} continues it, or choose another {arg.run_dir.split(': ')[-1]} for a new one",
                    source=arg.run_dir)


def refuse_if_live(rd: RunDir, source: str) -> None:
    """A run directory whose control socket answers belongs to a running tui-trainer."""
    from tui_trainer.run.server import live_socket

    if live_socket(rd.path) is not None:
        raise UserError(f"{rd.path} is in use by a running tui-trainer; `tui-trainer attach {rd.path}` steers it",
                        source=source)


@contextlib.contextmanager
def writing(rd: RunDir, source: str = "--run-dir") -> Iterator[None]:
    """Making or writing the run directory: an OSError (read-only, not a directory, full disk) is
    bad input, one line and exit 2, naming `source` (--run-dir, or fit's run_dir)."""
    try:
        yield
    except FileExistsError:
        if rd.path.exists() and not rd.path.is_dir():
            raise UserError(f"{rd.path} is a file, not a directory; choose another {source.split(': ')[-1]}",
                            source=source) from None
        raise UserError(f"another run just made {rd.path}; start again, or give --run-dir") from None
    except OSError as exc:
        raise UserError(f"cannot write the run directory {rd.path}: {exc.strerror or exc}; choose another"
                        f" {source.split(': ')[-1]} or free some space", source=source) from None


# data_wait: the share of the row's wall time spent waiting for batches (0..1; input-bound above ~0.2)
# StepReports and EpochEnds reach the disk within this (a writer thread, in batches); a run killed by
# SIGKILL loses at most this much of them. Everything else is written at once.
WRITE_WITHIN_S = 0.5

METRIC_FIELDS = ["time", "phase", "epoch", "step", "loss", "val_loss", "val_acc", "lr", "samples_per_s", "data_wait"]


def metric_fields(metrics: Sequence[str] = (), groups: int = 1) -> list[str]:
    """metrics.csv's columns for a run with these [[metrics]] (by monitor name, "val_dice") and
    this many optimizer param groups: METRIC_FIELDS with the metrics after val_acc and lr_1.. after
    lr. A run without either has exactly METRIC_FIELDS."""
    extra = [m for m in dict.fromkeys(metrics) if m not in METRIC_FIELDS]
    at_acc = METRIC_FIELDS.index("val_acc") + 1
    at_lr = METRIC_FIELDS.index("lr") + 1
    lrs = [f"lr_{i}" for i in range(1, groups)]
    return METRIC_FIELDS[:at_acc] + extra + METRIC_FIELDS[at_acc:at_lr] + lrs + METRIC_FIELDS[at_lr:]


class Recorder:
    """A sink: every event to events.jsonl; reports and epochs to metrics.csv.

    metrics.csv has one row per StepReport (phase "train") and per EpochEnd (phase "epoch"). Its
    columns are fixed when the file is made (`metric_fields`): one per [[metrics]] entry, named by
    its monitor ("val_dice", filled by EpochEnd rows), and one learning rate per optimizer param
    group, filled by StepReport rows: `lr` is group 0, `lr_1`, `lr_2`, ... the others, by index (a
    group's name may contain commas). A resumed run appends to the existing file under its own
    header: rows are written with that header's columns, whatever this run would have made, so an
    older file keeps well-formed rows (values it has no column for are left out).

    Reports and epoch ends are written by a thread of the recorder's own, in batches, within
    WRITE_WITHIN_S of their coming (`flush` and `close` write them at once); every other event is
    written when it comes, after any still waiting, so the files keep the events' order.

    Never raises into the engine: on a full disk an event that cannot be written is dropped (a
    checkpoint matters more than its log line) and the next one that can starts on a new line.
    A line torn by a killed process is closed the same way when a resumed run appends."""

    def __init__(self, run_dir: RunDir, metrics: Sequence[str] = (), groups: int = 1):
        self.events = _Appender(run_dir.events_path)
        metrics_path = run_dir.path / "metrics.csv"
        new = not metrics_path.exists() or metrics_path.stat().st_size == 0
        self.fields = metric_fields(metrics, groups) if new else (_header_of(metrics_path) or METRIC_FIELDS)
        self.metrics = _Appender(metrics_path)
        if new:
            self.metrics.write(_csv_header(self.fields))
        self.dropped = 0
        # Reports and epoch ends are written by a thread, in batches (run/batched.py): on a fast loop
        # a report is ~10x dearer on the training thread (cold caches between two reports: ~200 us
        # for its JSON, CSV row and two writes) than in a batch; they are also the only events that
        # come many a second.
        self._batched = Batched(self._write, "tui-trainer-recorder", lambda: WRITE_WITHIN_S)

    def __call__(self, event: Event) -> None:
        self._batched(event)

    def flush(self, wait: bool = True) -> None:
        """Write every event waiting for the writer thread now. `wait` False (a signal handler, which
        may have interrupted a write of this thread): only if no write is under way."""
        self._batched.flush(wait)

    def close(self) -> None:
        self._batched.close()
        self.events.close()
        self.metrics.close()

    def _write(self, events: list[Event]) -> None:
        """The events' lines to events.jsonl and their rows to metrics.csv, one write each (a full
        disk drops them all: the files keep whole lines)."""
        if not events:
            return
        lines, rows = [], []
        for event in events:
            lines.append(event.json_line + "\n")
            row = self._row(event)
            if row is not None:
                rows.append(row)
        ok = self.events.write("".join(lines))
        if rows:
            ok &= self.metrics.write(_csv_rows(self.fields, rows))
        if not ok:
            self.dropped += len(events)

    @staticmethod
    def _row(event: Event) -> dict | None:
        match event:
            case StepReport():
                row = {"time": f"{event.time:.3f}", "phase": "train", "epoch": event.epoch, "step": event.step,
                       "loss": f"{event.loss:.6g}", "samples_per_s": f"{event.samples_per_s:.1f}"}
                for i, lr in enumerate(event.lrs):
                    row["lr" if i == 0 else f"lr_{i}"] = f"{lr:.6g}"
                if event.data_wait is not None:
                    row["data_wait"] = f"{event.data_wait:.3f}"
                return row
            case EpochEnd():
                row = {name: _g(value) for name, value in event.metrics.items()}
                row.update({"time": f"{event.time:.3f}", "phase": "epoch", "epoch": event.epoch,
                            "step": event.step, "loss": _g(event.train_loss), "val_loss": _g(event.val_loss),
                            "val_acc": _g(event.val_acc)})
                if event.data_wait is not None:
                    row["data_wait"] = f"{event.data_wait:.3f}"
                return row
        return None



def _header_of(path: Path) -> list[str] | None:
    """The column names of an existing metrics.csv (its first line), or None if unreadable."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader([f.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return header or None


class _Appender:
    """Whole lines appended with unbuffered writes; failures are reported, not raised."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "ab", buffering=0)
        self.torn = self.file.tell() > 0 and _last_byte(path) != b"\n"  # a killed writer's half line
        self.warned = False

    def write(self, text: str) -> bool:
        data = (b"\n" if self.torn else b"") + text.encode("utf-8")
        fd = self.file.fileno()
        try:
            start = os.fstat(fd).st_size
            view = memoryview(data)
            while view:
                view = view[self.file.write(view):]
        except OSError as exc:
            try:  # a full disk may take half a line: cut it off again, so lines are whole or absent
                os.ftruncate(fd, start)
            except (OSError, UnboundLocalError):
                self.torn = True  # could not: the next line starts on a new one
            if not self.warned:
                self.warned = True
                _warn(f"tui-trainer: cannot write {self.path} ({exc.strerror or exc}); dropping lines until it can")
            return False
        self.torn = False
        return True

    def close(self) -> None:
        self.file.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def _warn(text: str) -> None:
    import sys

    try:
        print(text, file=sys.stderr)
    except (OSError, ValueError):
        pass


def _csv_header(fields: list[str]) -> str:
    out = io.StringIO()
    csv.DictWriter(out, fields).writeheader()
    return out.getvalue()


def _csv_rows(fields: list[str], rows: list[dict]) -> str:
    """Rows of metrics.csv, one writer for them all."""
    out = io.StringIO()
    csv.DictWriter(out, fields, extrasaction="ignore").writerows(rows)
    return out.getvalue()


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def read_events(path: str | Path) -> list[Event]:
    """events.jsonl -> events (a torn last line from a killed writer is skipped)."""
    from tui_trainer.engine.events import from_json

    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out
