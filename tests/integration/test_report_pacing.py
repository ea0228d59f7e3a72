"""Reports are paced (train.log_min_interval_s, default 0.05 s), and every report says how much of
its time the loop waited for its batches (StepReport.data_wait, EpochEnd.data_wait, metrics.csv,
the headless line); a run that waits too long is warned about as input-bound."""

from __future__ import annotations

import csv

import pytest

from tests.helpers.engine import run
from tests.helpers.user_code import write_preset
from tui_trainer.engine.events import EpochEnd, RunWarning, StepReport
from tui_trainer.engine.trainer import INPUT_BOUND_S, input_bound_advice


def test_reports_are_at_least_the_floor_apart_and_carry_every_loss_once(tmp_path):
    """log_every 1 on ~1 ms steps: without the floor every step would be a report, ~1 ms apart.
    A report the floor paces comes >= 0.05 s after the previous one; the epoch's end and the run's
    end still report at once; every step's loss is in exactly one report, in order."""
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:pair", "batch_size": 2},
                          train={"epochs": 2, "log_every": 1, "log_min_interval_s": 0.05})
    out = run(preset, run_dir=tmp_path / "run")
    assert out.final.status == "completed"
    reports = out.of(StepReport)
    steps = [s for r in reports for s in range(r.first_step, r.step + 1)]
    assert steps == list(range(1, out.final.step + 1))
    ends = {e.step for e in out.of(EpochEnd)}
    for before, report in zip(reports, reports[1:]):
        if report.step not in ends and report.step != out.final.step:
            assert report.time - before.time >= 0.045, (before.step, report.step, report.time - before.time)


def test_a_slow_dataset_is_input_bound_and_a_preloaded_one_is_not(tmp_path):
    """20 ms per sample, batches of 4: the loop waits ~80 ms for each ~1 ms step. The same data
    preloaded (transformed once, before the run) leaves nothing to wait for."""
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:slow", "batch_size": 4},
                          train={"epochs": 1})
    slow = run(preset, run_dir=tmp_path / "slow")
    fast = run(preset, "data.preload=true", run_dir=tmp_path / "fast")
    for out in (slow, fast):
        assert out.final.status == "completed"
        assert all(r.data_wait is not None and 0 <= r.data_wait <= 1 for r in out.of(StepReport))
    (slow_end,), (fast_end,) = slow.of(EpochEnd), fast.of(EpochEnd)
    assert slow_end.data_wait > 0.5 and min(r.data_wait for r in slow.of(StepReport)) > 0.5
    assert fast_end.data_wait < 0.2
    with open(tmp_path / "slow" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["data_wait"]) for r in rows if r["phase"] == "epoch"] == [pytest.approx(slow_end.data_wait, abs=1e-3)]
    assert all(float(r["data_wait"]) > 0.5 for r in rows if r["phase"] == "train")


def test_the_input_bound_warning_comes_once_after_a_minute_above_20_percent(tmp_path):
    """The trainer's rule, on its own clock: above 20% for INPUT_BOUND_S -> one warning naming what to
    try; a window below 20% starts the minute again."""
    preset = write_preset(tmp_path / "p.toml", data={"num_workers": 0})
    from tui_trainer.run.launch import prepare

    events = []
    session = prepare(preset, [], run_dir=tmp_path / "run", sinks=[events.append])
    t = session.trainer
    try:
        warned = lambda: [e for e in events if isinstance(e, RunWarning) and "input-bound" in e.message]  # noqa: E731
        t._input_bound(0.5, 0.0)
        t._input_bound(0.5, INPUT_BOUND_S - 1)
        t._input_bound(0.1, INPUT_BOUND_S)  # a good window: the minute starts again
        t._input_bound(0.5, INPUT_BOUND_S + 1)
        t._input_bound(0.5, 2 * INPUT_BOUND_S)
        assert not warned()
        t._input_bound(0.34, 2 * INPUT_BOUND_S + 2)
        t._input_bound(0.9, 3 * INPUT_BOUND_S + 2)
        (warning,) = warned()
        assert warning.message == input_bound_advice(0.34, 0, False)
        assert "34%" in warning.message and "data.num_workers = 0" in warning.message and "data.preload" in warning.message
    finally:
        session.close()
