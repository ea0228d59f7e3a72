"""Best-so-far and early stopping, directly (tests/integration/test_stopping.py covers them through runs)."""

from __future__ import annotations

import math

import pytest

from tui_trainer.config import resolve_mode
from tui_trainer.engine.stopping import Best, EarlyStopping, monitored, without_validation


@pytest.mark.parametrize(
    "monitor, mode, resolved",
    [
        ("val_loss", "auto", "min"),
        ("train_loss", "auto", "min"),
        ("val_acc", "auto", "max"),
        ("val_loss", "max", "max"),  # an explicit mode is kept as it is
        ("val_acc", "min", "min"),
    ],
)
def test_resolve_mode(monitor, mode, resolved):
    assert resolve_mode(monitor, mode) == resolved


def feed(best: Best, values) -> list[bool]:
    return [best.update(v, epoch) for epoch, v in enumerate(values, start=1)]


def test_min_mode_keeps_the_lowest_and_counts_bad_epochs_since_it():
    best = Best("min")
    assert feed(best, [1.0, 0.8, 0.9, 0.85, 0.7]) == [True, True, False, False, True]
    assert (best.value, best.epoch, best.bad_epochs) == (0.7, 5, 0)
    assert feed(best, [0.7, 0.75]) == [False, False], "equal to the best is no improvement"
    assert (best.value, best.epoch, best.bad_epochs) == (0.7, 5, 2)


def test_max_mode_keeps_the_highest():
    best = Best("max")
    assert feed(best, [0.5, 0.4, 0.6, 0.6]) == [True, False, True, False]
    assert (best.value, best.epoch, best.bad_epochs) == (0.6, 3, 1)


def test_the_first_finite_value_always_improves_whatever_its_sign():
    for mode, value in (("min", 1e9), ("max", -1e9)):
        best = Best(mode)
        assert best.better(value)
        assert best.update(value, 1)
        assert best.value == value


@pytest.mark.parametrize("mode, ok, not_ok", [("min", 0.89, 0.9), ("max", 1.11, 1.1)])
def test_min_delta_must_be_exceeded(mode, ok, not_ok):
    # best 1.0 with min_delta 0.1: min needs < 0.9, max needs > 1.1 (strictly)
    best = Best(mode, min_delta=0.1)
    best.update(1.0, 1)
    assert not best.better(not_ok)
    assert best.better(ok)
    assert not best.update(not_ok, 2) and best.value == 1.0 and best.bad_epochs == 1
    assert best.update(ok, 3) and best.value == ok and best.epoch == 3 and best.bad_epochs == 0


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_missing_or_nonfinite_values_never_improve_and_count_as_bad(bad):
    for mode in ("min", "max"):
        best = Best(mode)
        assert not best.better(bad)
        assert not best.update(bad, 1), "not even as the first value"
        assert (best.value, best.epoch, best.bad_epochs) == (None, None, 1)
        best.update(0.5, 2)
        assert not best.update(bad, 3)
        assert (best.value, best.epoch, best.bad_epochs) == (0.5, 2, 1)


def test_state_dict_round_trip_restores_value_epoch_and_counter():
    best = Best("max", min_delta=0.01)
    feed(best, [0.3, 0.5, 0.4, 0.45])
    state = best.state_dict()
    assert state == {"mode": "max", "min_delta": 0.01, "value": 0.5, "epoch": 2, "bad_epochs": 2}

    restored = Best("min")  # every field, the mode included, comes from the state
    restored.load_state_dict(state)
    assert restored == best
    assert not restored.update(0.505, 5)  # within min_delta of 0.5 in max mode
    assert restored.bad_epochs == 3
    assert restored.update(0.6, 6) and restored.bad_epochs == 0


def test_state_dict_is_a_copy():
    best = Best("min")
    best.update(1.0, 1)
    state = best.state_dict()
    best.update(0.5, 2)
    assert state["value"] == 1.0 and state["epoch"] == 1


def test_early_stopping_stops_after_patience_bad_epochs():
    es = EarlyStopping("min", patience=2, min_delta=0.0)
    assert es.update(1.0, 1) and not es.should_stop
    assert not es.update(1.0, 2) and not es.should_stop  # 1 bad epoch of 2
    assert not es.update(1.5, 3) and es.should_stop  # 2 of 2
    assert es.best.bad_epochs == 2 and es.best.epoch == 1


def test_early_stopping_counter_resets_on_improvement():
    es = EarlyStopping("max", patience=3, min_delta=0.0)
    feed(es.best, [0.1, 0.05, 0.05])
    assert es.best.bad_epochs == 2 and not es.should_stop
    assert es.update(0.2, 4)
    assert es.best.bad_epochs == 0 and not es.should_stop
    for epoch in (5, 6):
        es.update(0.2, epoch)
        assert not es.should_stop
    es.update(0.19, 7)
    assert es.should_stop and es.best.value == 0.2


def test_early_stopping_passes_mode_and_min_delta_to_its_best():
    es = EarlyStopping("min", patience=1, min_delta=0.5)
    assert (es.best.mode, es.best.min_delta, es.patience) == ("min", 0.5, 1)
    es.update(2.0, 1)
    assert not es.update(1.6, 2), "0.4 better is less than min_delta"
    assert es.should_stop


def test_an_epoch_without_a_value_is_not_counted_either_way():
    """A loop that validates every other epoch: its epochs without val_loss neither improve nor use
    up the patience (they did not get worse: nobody looked). NaN still counts as bad (above)."""
    es = EarlyStopping("min", patience=2, min_delta=0.0)
    es.update(1.0, 1)
    for epoch in range(2, 7):
        es.update(None, epoch)
    assert not es.should_stop and (es.best.value, es.best.epoch, es.best.bad_epochs) == (1.0, 1, 0)
    es.update(1.5, 7)
    es.update(math.nan, 8)
    assert es.should_stop


@pytest.mark.parametrize(
    "metrics, monitor, mode, judged",
    [
        ({"val_acc": 0.9}, "val_acc", "max", (0.9, "val_acc")),
        ({"val_acc": None}, "val_acc", "max", (None, "val_acc")),  # never a loss for a monitor that goes up
        ({}, "val_loss", "min", (0.5, "train_loss")),  # a loss for a loss, named as what it is
        ({"val_loss": None}, "val_loss", "min", (0.5, "train_loss")),
        ({"val_loss": 0.7}, "val_loss", "min", (0.7, "val_loss")),
    ],
)
def test_an_epoch_is_judged_by_its_monitor_or_a_loss_for_a_loss(metrics, monitor, mode, judged):
    assert monitored(metrics, monitor, mode, 0.5) == judged
    assert monitored({}, "val_loss", "min", None) == (None, "val_loss")


def test_a_val_monitor_without_validation_follows_train_loss_and_says_so():
    assert without_validation("val_loss", True, "checkpoint.monitor") == ("val_loss", None)
    assert without_validation("train_loss", False, "checkpoint.monitor") == ("train_loss", None)
    monitor, said = without_validation("val_acc", False, "checkpoint.monitor")
    assert monitor == "train_loss" and said.startswith('checkpoint.monitor = "val_acc" but the run has no validation')


def test_should_stop_stays_true_once_reached_while_nothing_improves():
    es = EarlyStopping("min", patience=1, min_delta=0.0)
    es.update(1.0, 1)
    for epoch in range(2, 5):
        es.update(2.0, epoch)
        assert es.should_stop
    assert es.best.bad_epochs == 3


def test_a_resumed_best_is_kept_only_for_the_same_monitor_judged_the_same_way():
    from tui_trainer.engine.stopping import resume_best

    saved = Best("max", value=0.98, epoch=7, bad_epochs=2).state_dict()
    same = Best("max", min_delta=0.01)
    assert resume_best(same, saved, "val_f1", "val_f1", "checkpoint.monitor", "last.pt") is None
    assert (same.value, same.epoch, same.bad_epochs, same.min_delta) == (0.98, 7, 2, 0.01)  # this run's min_delta
    older = Best("max")  # a checkpoint that did not record its monitor: taken as the same
    assert resume_best(older, saved, "val_f1", None, "checkpoint.monitor", "last.pt") is None and older.value == 0.98
    other = Best("min")  # a best val_f1 (max) read as a best val_loss stopped a run whose val_loss improved
    note = resume_best(other, saved, "val_loss", "val_f1", "early_stopping.monitor", "last.pt")
    assert note == ("early_stopping.monitor is val_loss (min) and last.pt followed val_f1 (max): its best and its"
                    " epochs without improvement start afresh")
    assert (other.value, other.epoch, other.bad_epochs, other.mode) == (None, None, 0, "min")
    flipped = Best("min")  # the same name, judged the other way (mode = "min" on val_acc)
    assert resume_best(flipped, saved, "val_acc", "val_acc", "checkpoint.monitor", "x.pt") and flipped.value is None
