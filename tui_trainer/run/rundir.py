"""Where a run lives: runs/<name>-<YYYYmmdd-HHMMSS>/ with config.toml, events.jsonl, metrics.csv,
checkpoints/. The recorder appends every event as it happens (flushed), so a killed run keeps
its history."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from tui_trainer.config import Preset, dump_toml
from tui_trainer.engine.events import EpochEnd, Event, StepReport


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, base: str | Path = "runs") -> RunDir:
        rd = cls.unused(name, base)
        rd.path.mkdir(parents=True)
        return rd

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


METRIC_FIELDS = ["time", "phase", "epoch", "step", "loss", "val_loss", "val_acc", "lr", "samples_per_s"]


class Recorder:
    """A sink: every event to events.jsonl; reports and epochs to metrics.csv."""

    def __init__(self, run_dir: RunDir):
        self.events = open(run_dir.events_path, "a", encoding="utf-8")
        metrics_path = run_dir.path / "metrics.csv"
        new = not metrics_path.exists() or metrics_path.stat().st_size == 0
        self._metrics_file = open(metrics_path, "a", encoding="utf-8", newline="")
        self.metrics = csv.DictWriter(self._metrics_file, METRIC_FIELDS)
        if new:
            self.metrics.writeheader()

    def __call__(self, event: Event) -> None:
        self.events.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self.events.flush()
        if isinstance(event, StepReport):
            self.metrics.writerow({"time": f"{event.time:.3f}", "phase": "train", "epoch": event.epoch,
                                   "step": event.step, "loss": f"{event.loss:.6g}", "lr": f"{event.lrs[0]:.6g}",
                                   "samples_per_s": f"{event.samples_per_s:.1f}"})
            self._metrics_file.flush()
        elif isinstance(event, EpochEnd):
            self.metrics.writerow({"time": f"{event.time:.3f}", "phase": "epoch", "epoch": event.epoch,
                                   "step": event.step, "loss": _g(event.train_loss), "val_loss": _g(event.val_loss),
                                   "val_acc": _g(event.val_acc)})
            self._metrics_file.flush()

    def close(self) -> None:
        self.events.close()
        self._metrics_file.close()


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
