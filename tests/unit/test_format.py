"""The wording of numbers and event lines (tui_trainer/text/format.py): the log pane and the
headless reporter both print these, so each line is pinned word for word."""

from __future__ import annotations

import math

import pytest

from tests.helpers.factories import T0, epoch_end, run_started
from tui_trainer.engine import events as ev
from tui_trainer.text.format import duration, event_line, human_bytes, human_count, lr_text, lrs_text


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0:00"), (0.4, "0:00"), (1.6, "0:02"), (59.6, "1:00"), (61, "1:01"), (3599.4, "59:59"),
     (3600, "1:00:00"), (3661, "1:01:01"), (2 * 86400 + 5, "48:00:05"),  # hours are not wrapped into days
     (None, "?"), (math.nan, "?"), (-1, "?")],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "n, text",
    [(None, "?"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"),
     (int(5.5 * 2**30), "5.5 GiB"), (2**40, "1.0 TiB"), (2**50, "1024.0 TiB")],  # TiB is the largest unit
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    "n, text",
    [(0, "0"), (999, "999"), (1000, "1.0k"), (1050, "1.1k"), (11_689_512, "11.7M"), (2_500_000_000, "2.5G"),
     (-1500, "-1.5k")],
)
def test_human_count(n, text):
    assert human_count(n) == text


def test_lr_text_and_distinct_group_lrs_in_order():
    assert lr_text(0.01) == "1.00e-02"
    assert lr_text(3e-4) == "3.00e-04"
    assert lrs_text([0.01]) == "1.00e-02"
    assert lrs_text((0.1, 0.01, 0.1, 0.0100001)) == "1.00e-01,1.00e-02", "equal as printed = one"
    assert lrs_text([]) == ""


# --------------------------------------------------------------------------- event lines

STARTED = run_started()  # run_dir /runs/unit-1, monitor val_loss


def test_epoch_end_line_lists_the_metrics_best_and_patience():
    e = epoch_end(3, train_loss=1.23456, val_loss=0.5, val_acc=0.875, seconds=1.25, best=0.5, best_epoch=3,
                  improved=True, bad_epochs=0, patience=4)
    assert event_line(e, STARTED) == (
        "epoch 3 done: train_loss 1.2346 val_loss 0.5000 val_acc 0.8750 | best val_loss 0.5000 @ epoch 3"
        " | no improvement 0/4 | 1.2s val", "good")


def test_epoch_end_without_improvement_is_info_and_leaves_out_what_is_missing():
    """Without validation (no val_loss) there is no validation time to show either."""
    e = epoch_end(2, train_loss=0.7, val_loss=None, val_acc=None, monitor="train_loss", best=0.6, best_epoch=1,
                  improved=False, bad_epochs=1, patience=None, seconds=0.0)
    assert event_line(e) == ("epoch 2 done: train_loss 0.7000 | best train_loss 0.6000 @ epoch 1", "info")
    bare = epoch_end(1, train_loss=None, val_loss=None, val_acc=None, best=None, best_epoch=None, improved=False,
                     bad_epochs=2, patience=5, seconds=2.0)
    assert event_line(bare) == ("epoch 1 done: | no improvement 2/5", "info")


def test_checkpoint_line_shows_the_path_relative_to_the_run_dir():
    e = ev.CheckpointSaved(step=8, epoch=2, path="/runs/unit-1/checkpoints/epoch-0002.pt", tags=("epoch", "last"),
                           seconds=0.123, bytes=3 * 2**20, time=T0)
    assert event_line(e, STARTED) == ("checkpoint checkpoints/epoch-0002.pt [epoch, last] 3.0 MiB in 0.12s", "info")
    # without a RunStarted, or outside the run dir, the path is shown as it is
    assert event_line(e)[0].startswith("checkpoint /runs/unit-1/checkpoints/epoch-0002.pt [")
    outside = ev.CheckpointSaved(8, 2, "/elsewhere/x.pt", ("manual",), 1.0, 100, time=T0)
    assert event_line(outside, STARTED) == ("checkpoint /elsewhere/x.pt [manual] 100 B in 1.00s", "info")


def test_lr_changed_line_is_a_warning_with_the_reason_and_factor():
    e = ev.LrChanged(step=5, lrs=(0.05, 0.1, 0.05), manual_factor=0.5, reason="manual", time=T0)
    assert event_line(e, STARTED) == ("LR changed (manual): 5.00e-02,1.00e-01 (manual factor x0.5)", "warn")
    plateau = ev.LrChanged(step=9, lrs=(0.0125,), manual_factor=1.0, reason="plateau", time=T0)
    assert event_line(plateau) == ("LR changed (plateau): 1.25e-02 (manual factor x1)", "warn")


def test_trainable_changed_lines():
    froze = ev.TrainableChanged(step=3, prefixes=("0", ""), trainable=False, state=(False, False),
                                params_trainable=0, params_total=11_689_512, time=T0)
    assert event_line(froze, STARTED) == ("froze 0, (all): trainable 0 / 11.7M params", "info")
    unfroze = ev.TrainableChanged(3, ("layer4",), True, (True,), 8_400_000, 11_689_512, source="resume", time=T0)
    assert event_line(unfroze) == ("unfroze layer4: trainable 8.4M / 11.7M params", "info")
    many = tuple(f"features.{i}.block" for i in range(12))
    long = ev.TrainableChanged(3, many, False, (False,), 1500, 2000, time=T0)
    assert event_line(long) == ("froze 12 layers: trainable 1.5k / 2.0k params", "info"), "a long list is counted"


def test_warning_and_state_lines():
    assert event_line(ev.RunWarning(step=2, message="disk full; saving skipped", time=T0)) == (
        "WARNING disk full; saving skipped", "warn")
    assert event_line(ev.StateChanged("paused", 12, time=T0)) == ("paused at step 12", "info")
    assert event_line(ev.StateChanged("stopping", 13, time=T0)) == ("stopping at step 13", "info")
    for quiet in ("starting", "running", "finished", "failed"):
        assert event_line(ev.StateChanged(quiet, 1, time=T0)) is None


def test_finished_line_names_the_best_checkpoint_with_the_run_monitor():
    done = ev.Finished(status="completed", step=8, epoch=2, seconds=75.4, exit_code=0, message="finished",
                       best=0.41234, best_epoch=2, best_path="/runs/unit-1/checkpoints/best.pt",
                       last_path="/runs/unit-1/checkpoints/last.pt", time=T0)
    assert event_line(done, STARTED) == (
        "completed: finished (8 steps, 1:15); best val_loss 0.4123 @ epoch 2 -> /runs/unit-1/checkpoints/best.pt",
        "good")  # the full path, not relative to the run dir


def test_finished_without_a_best_file_and_with_an_error_code():
    no_best_file = ev.Finished("stopped", 4, 1, 3.0, 0, "stopped by command", best=0.5, best_epoch=1, time=T0)
    assert event_line(no_best_file, STARTED) == ("stopped: stopped by command (4 steps, 0:03)", "good")
    bad = ev.Finished("nonfinite", 6, 1, 1.0, 1, "non-finite loss (nan) at step 6", time=T0)
    assert event_line(bad, STARTED) == ("nonfinite: non-finite loss (nan) at step 6 (6 steps, 0:01)", "error")


def test_failed_line():
    e = ev.Failed(step=5, epoch=1, error="RuntimeError: boom", traceback="Traceback...\nRuntimeError: boom",
                  emergency_path="/runs/unit-1/checkpoints/emergency.pt", time=T0)
    assert event_line(e, STARTED) == (
        "FAILED at step 5: RuntimeError: boom; emergency checkpoint /runs/unit-1/checkpoints/emergency.pt", "error")
    no_save = ev.Failed(5, 1, "RuntimeError: boom", "", None, time=T0)
    assert event_line(no_save) == ("FAILED at step 5: RuntimeError: boom", "error")


def test_frequent_events_have_no_line():
    report = ev.StepReport(step=2, epoch=1, first_step=1, losses=(1.0, 0.9), lrs=(0.1,), samples_per_s=100.0,
                           eta_s=3.0, time=T0)
    stats = ev.LayerStats(step=2, grad_norm=(0.1, None), update_ratio=(1e-3, None), time=T0)
    for event in (report, stats, STARTED):
        assert event_line(event, STARTED) is None


def test_duration_of_an_infinite_eta_is_unknown():
    assert duration(math.inf) == "?" and duration(-math.inf) == "?"


def test_the_runs_length_counts_its_epochs_in_words():
    from tui_trainer.run.headless import length_text

    assert length_text(run_started()) == "8 steps (2 epochs x 4)"
    assert length_text(run_started(epochs=1, total_steps=4)) == "4 steps (1 epoch x 4)"
    assert length_text(run_started(epochs=1, total_steps=None)) == (
        "1 epoch of a length not known ahead (the loader has no len)")
