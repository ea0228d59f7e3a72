"""Reports are paced (train.log_min_interval_s, default 0.1 s), and every report says how much of
its time the loop waited for its batches (StepReport.data_wait, EpochEnd.data_wait, metrics.csv,
the headless line); a run that waits too long is warned about as input-bound."""

from __future__ import annotations

import csv

import pytest

from tests.helpers.engine import run
from tests.helpers.user_code import write_preset
from tui_trainer.engine.events import EpochEnd, RunWarning, StepReport
from tui_trainer.engine.trainer import INPUT_BOUND_S, input_bound_advice


def _check_paced(reports, ends, final_step: int, floor: float) -> None:
    """Every step's loss in exactly one report, in order; reports at least `floor` apart but for the
    run's last (an epoch's end reads its losses but leaves them to the next report when too soon);
    each epoch's train_loss is the mean of its own steps' losses."""
    losses = {s: v for r in reports for s, v in zip(range(r.first_step, r.step + 1), r.losses)}
    assert [s for r in reports for s in range(r.first_step, r.step + 1)] == list(range(1, final_step + 1))
    for before, report in zip(reports[:-1], reports[1:-1]):
        assert report.time - before.time >= floor - 0.005, (before.step, report.step, report.time - before.time)
    first = 1
    for end in ends:
        mean = sum(losses[s] for s in range(first, end.step + 1)) / (end.step - first + 1)
        assert end.train_loss == pytest.approx(mean, rel=1e-6)
        first = end.step + 1


def test_reports_are_at_least_the_floor_apart_and_carry_every_loss_once(tmp_path):
    """log_every 1 on ~1 ms steps: without the floor every step would be a report, ~1 ms apart."""
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:pair", "batch_size": 2},
                          train={"epochs": 3, "log_every": 1, "log_min_interval_s": 0.05})
    out = run(preset, run_dir=tmp_path / "run")
    assert out.final.status == "completed"
    _check_paced(out.of(StepReport), out.of(EpochEnd), out.final.step, 0.05)


def test_an_epochs_last_report_comes_before_its_end_and_counts_no_validation(tmp_path):
    """Six quick steps an epoch, then ~0.2 s of validation: the epoch's last losses wait for the
    floor when training ends, and go out once validation has passed it, before the EpochEnd;
    their samples/s counts their training time, not the validation's (which would make it tens
    of times lower, and the ETA as many times longer)."""
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:slow_val"},
                          train={"epochs": 3, "log_every": 1, "log_min_interval_s": 0.1})
    out = run(preset, run_dir=tmp_path / "run")
    assert out.final.status == "completed"
    reports, ends = out.of(StepReport), out.of(EpochEnd)
    _check_paced(reports, ends, out.final.step, 0.1)
    order = [e for e in out.events if isinstance(e, (StepReport, EpochEnd))]
    for end in ends:
        covering = next(r for r in reports if r.first_step <= end.step <= r.step)
        assert order.index(covering) < order.index(end), (end.epoch, covering.step)
    later = [r.samples_per_s for r in reports if r.first_step > 1]  # (the first counts the start-up)
    assert len(later) >= 2 and min(later) > max(later) / 10, later


def test_the_loops_reports_are_paced_too(tmp_path):
    """tui_trainer.loop: the same floor (its default), the same invariants."""
    import torch

    import tui_trainer
    from tests.helpers.user_code import Blobs, mlp

    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(Blobs(96), batch_size=2)

    def train(run):
        for _ in run.epochs(3):
            for x, y in run.batches(loader):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                run.log(loss=loss)

    from tui_trainer.run.rundir import read_events

    tui_trainer.loop(train, model=model, optimizer=optimizer, ui=False, run_dir=tmp_path / "run", log_every=1)
    events = read_events(tmp_path / "run" / "events.jsonl")
    reports = [e for e in events if isinstance(e, StepReport)]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert len(ends) == 3
    _check_paced(reports, ends, 3 * 48, 0.1)


def test_a_slow_dataset_is_input_bound_and_a_preloaded_one_is_not(tmp_path):
    """20 ms per sample (a sleep in __getitem__), batches of 8: the loop waits ~160 ms for each ~1 ms
    step. The same data preloaded (transformed once, before the run) leaves nothing to wait for."""
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:slow", "batch_size": 8},
                          train={"epochs": 1})
    slow = run(preset, run_dir=tmp_path / "slow")
    fast = run(preset, "data.preload=true", run_dir=tmp_path / "fast")
    for out in (slow, fast):
        assert out.final.status == "completed"
        assert all(r.data_wait is not None and 0 <= r.data_wait <= 1 for r in out.of(StepReport))
    (slow_end,), (fast_end,) = slow.of(EpochEnd), fast.of(EpochEnd)
    waits = sorted(r.data_wait for r in slow.of(StepReport))
    assert slow_end.data_wait > 0.5 and waits[len(waits) // 2] > 0.5
    assert fast_end.data_wait < 0.2
    with open(tmp_path / "slow" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["data_wait"]) for r in rows if r["phase"] == "epoch"] == [pytest.approx(slow_end.data_wait, abs=1e-3)]
    assert [float(r["data_wait"]) for r in rows if r["phase"] == "train"] == pytest.approx(
        [r.data_wait for r in slow.of(StepReport)], abs=1e-3)


def test_the_loop_measures_the_wait_for_its_batches(tmp_path):
    """tui_trainer.loop: a loader that sleeps 40 ms before each batch (of a ~1 ms step) is input-bound
    in every report and in the epoch's end; the same batches from a list are not."""
    import time

    import torch

    import tui_trainer
    from tests.helpers.user_code import mlp
    from tui_trainer.run.rundir import read_events

    torch.manual_seed(0)
    batches = [(torch.randn(4, 4), torch.randint(0, 3, (4,))) for _ in range(24)]

    class Slow:
        def __iter__(self):
            for batch in batches:
                time.sleep(0.04)  # a step under load may take 10-20 ms: still mostly waiting
                yield batch

    def run_with(data, name):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def train(run):
            for _ in run.epochs(2):
                for x, y in run.batches(data):
                    optimizer.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                    run.log(loss=loss)

        assert tui_trainer.loop(train, model=model, optimizer=optimizer, ui=False, run_dir=tmp_path / name,
                                log_every=4) == 0
        events = read_events(tmp_path / name / "events.jsonl")
        return [e for e in events if isinstance(e, StepReport)], [e for e in events if isinstance(e, EpochEnd)]

    slow_reports, slow_ends = run_with(Slow(), "slow")
    fast_reports, fast_ends = run_with(batches, "fast")
    assert slow_reports and all(r.data_wait > 0.5 for r in slow_reports)
    assert len(slow_ends) == 2 and all(e.data_wait > 0.5 for e in slow_ends)
    assert all(r.data_wait < 0.3 for r in fast_reports) and all(e.data_wait < 0.3 for e in fast_ends)


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
