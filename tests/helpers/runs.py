"""Helpers to write presets and read what a run left behind (events.jsonl, checkpoints)."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import tomli_w

BASE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "model": {"arch": "examples.models:small_cnn", "kwargs": {"num_classes": 10, "width": 4}},
    "data": {"dataset": "digits", "image_size": 16, "batch_size": 16, "val_fraction": 0.25, "limit": 160,
             "num_workers": 0},
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    # log_min_interval_s 0: a report after exactly every log_every steps (tests act at given steps;
    # the paced default has tests of its own: test_report_pacing.py)
    "train": {"epochs": 2, "log_every": 1, "log_min_interval_s": 0},
    "checkpoint": {"every_epochs": 1, "keep_last": 2},
}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_preset(path: Path, replace: tuple[str, ...] = (), **sections: Any) -> Path:
    """BASE with `sections` merged in (model={"arch": ...}, train={"epochs": 3}, callbacks=[...]);
    sections named in `replace` replace BASE's instead."""
    base = {k: v for k, v in BASE.items() if k not in replace}
    path.write_text(tomli_w.dumps(merge(base, sections)), encoding="utf-8")
    return path


def read_events(run: Path) -> list[dict]:
    """Every complete JSON line of events.jsonl (a torn last line from a killed run is skipped)."""
    out = []
    path = run / "events.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def of_kind(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind]


def losses_by_step(events: list[dict]) -> dict[int, float]:
    """step -> loss from every StepReport (a resumed run's reports overwrite nothing: asserted)."""
    out: dict[int, float] = {}
    for e in of_kind(events, "StepReport"):
        for i, loss in enumerate(e["losses"]):
            step = e["first_step"] + i
            assert step not in out, f"step {step} reported twice"
            out[step] = loss
    return out


def the_run(base: Path) -> Path:
    runs = sorted((base / "runs").glob("*"))
    assert len(runs) == 1, runs
    return runs[0]


def load_checkpoint(path: Path) -> dict:
    """The product's own safe loader (weights_only=True)."""
    from tui_trainer.engine import checkpoint

    return checkpoint.load(path)


def tensors_finite(state: Any) -> bool:
    import torch

    if isinstance(state, torch.Tensor):
        return bool(torch.isfinite(state).all()) if state.is_floating_point() else True
    if isinstance(state, dict):
        return all(tensors_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(tensors_finite(v) for v in state)
    if isinstance(state, float):
        return math.isfinite(state)
    return True


def assert_exactly_equal(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality; tensors with torch.equal (bit-exact, no tolerance)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_exactly_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_exactly_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def wait_until(condition, what: str, limit_s: float = 120):
    """Poll `condition` until it returns something true, and return that (a hang guard, not a
    timing assertion: `limit_s` only bounds a test that would otherwise hang)."""
    deadline = time.monotonic() + limit_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)
    return value
