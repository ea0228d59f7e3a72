"""Shared by the benchmark scripts: arguments, timing windows, versions."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few steps, seconds not minutes")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, for stable numbers; 0 = torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    return p


def set_threads(args) -> int:
    import torch

    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class EventTail:
    """Follow a growing events.jsonl without re-reading it: the latest step, the (step, time) of every
    StepReport, the time of the first event of each kind and of every manual LR change."""

    def __init__(self, path: Path):
        self.path, self._f, self._rest = Path(path), None, ""
        self.step = 0
        self.reports: list[tuple[int, float]] = []
        self.first: dict[str, float] = {}
        self.manual_lr: list[float] = []
        self.weights: str | None = None

    def poll(self) -> EventTail:
        if self._f is None:
            if not self.path.exists():
                return self
            self._f = open(self.path, encoding="utf-8")
        chunk = self._f.read()
        if chunk:
            lines = (self._rest + chunk).split("\n")
            self._rest = lines.pop()  # a line still being written
            for line in lines:
                self._take(json.loads(line))
        return self

    def _take(self, event: dict) -> None:
        kind = event["kind"]
        self.first.setdefault(kind, event["time"])
        if kind == "StepReport":
            self.step = event["step"]
            self.reports.append((event["step"], event["time"]))
        elif kind == "RunStarted":
            self.weights = event.get("weights")
        elif kind == "LrChanged" and event.get("reason") == "manual":
            self.manual_lr.append(event["time"])

    def rate_between(self, t0: float, t1: float) -> float | None:
        """Steps/s from the StepReports stamped inside [t0, t1]."""
        inside = [(s, t) for s, t in self.reports if t0 <= t <= t1]
        if len(inside) < 2:
            return None
        return (inside[-1][0] - inside[0][0]) / (inside[-1][1] - inside[0][1])

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def step_reports(run_dir: Path):
    from tui_trainer.engine.events import StepReport
    from tui_trainer.run.rundir import read_events

    return [e for e in read_events(Path(run_dir) / "events.jsonl") if isinstance(e, StepReport)]


def window_rate(run_dir: Path, first: int, last: int) -> float:
    """Steps/s between the StepReport at step `first` and the one at step `last` (both stamped by the
    engine right after the step's losses reached the host)."""
    at = {r.step: r.time for r in step_reports(run_dir)}
    if first not in at or last not in at:
        raise RuntimeError(f"{run_dir}: no StepReport at step {first} and {last} (have {sorted(at)[:3]}..)")
    return (last - first) / (at[last] - at[first])


def median(values):
    return statistics.median(values) if values else None


def versions() -> dict:
    import textual
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "textual": textual.__version__,
            "machine": f"{platform.machine()} {_cpu_model()}".strip(),
            "cpus": _cpu_count(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return _cpu_count()


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
