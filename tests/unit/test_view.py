"""RunView (tui_trainer/ui/view.py) fed real engine events: state, dirty panes, bounded histories."""

from __future__ import annotations

import math

import pytest

from tests.helpers.factories import T0, epoch_end, run_started
from tui_trainer.engine import events as ev
from tui_trainer.parts.optim import LrPlan
from tui_trainer.ui.view import MinMaxSeries, RunView, Series


def report(step: int, losses, lrs=(0.1,), first_step: int | None = None, memory=None, epoch: int = 1):
    first = step - len(losses) + 1 if first_step is None else first_step
    return ev.StepReport(step=step, epoch=epoch, first_step=first, losses=tuple(losses), lrs=tuple(lrs),
                         samples_per_s=320.0, eta_s=12.5, memory=memory, time=T0 + step)


@pytest.fixture
def view() -> RunView:
    v = RunView()
    v.apply(run_started())
    v.take_dirty()
    return v


# --------------------------------------------------------------------------- Series


def test_series_keeps_every_point_below_its_cap():
    s = Series(8)
    for x in range(8):
        s.add(x, x * 10.0)
    assert (s.xs, s.ys, s.stride, len(s)) == (list(range(8)), [x * 10.0 for x in range(8)], 1, 8)


def test_series_skips_non_finite_values():
    s = Series(8)
    for x, y in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):
        s.add(x, y)
    assert (s.xs, s.ys) == ([0, 4], [1.0, 2.0])


def test_series_halves_past_its_cap_and_then_averages_pairs():
    s = Series(4)
    for x in range(4):
        s.add(x, float(x))
    s.add(4, 4.0)  # 5 > 4 points: neighbours merge (x of the later, mean of y), stride doubles
    assert s.stride == 2 and len(s) <= 4
    assert s.xs[:2] == [1, 3] and s.ys[:2] == [0.5, 2.5]
    for x in range(5, 9):
        s.add(x, float(x))
    assert s.xs[-1] == 8 and s.ys[-1] == 7.5, "a new point is the mean of the last `stride` values"


def test_series_stays_bounded_over_a_long_run():
    s = Series(64)
    for x in range(100_000):
        s.add(x, 1.0)
        assert len(s) <= 64
    assert s.stride >= 100_000 // 64 // 2 and set(s.ys) == {1.0}
    assert s.xs == sorted(s.xs) and s.xs[0] < 2 * s.stride
    assert 99_999 - s.xs[-1] < 2 * s.stride, "the whole run, up to the last step a full point covers"


def test_series_keeps_the_newest_point_when_it_halves():
    s = Series(4)
    for x in range(5):
        s.add(x, float(x))
    assert s.xs[-1] == 4, "the series must still reach the last step added (it used to drop it: [1, 3])"
    assert s.ys == [0.5, 2.5, 4.0]


# --------------------------------------------------------------------------- MinMaxSeries


def test_minmax_series_keeps_every_point_below_its_cap():
    s = MinMaxSeries(8)
    for x, y in enumerate([3.0, math.nan, 1.0, math.inf, 2.0]):
        s.add(x, y)
    assert (list(s.xs), list(s.lo), list(s.hi), s.per_bucket, s.added) == ([0, 2, 4], [3, 1, 2], [3, 1, 2], 1, 3)
    assert s.columns(8) == ([0, 2, 4], [3, 1, 2], [3, 1, 2], [3, 1, 2]) and s.last == 2.0


def test_minmax_series_merges_pairs_keeping_min_max_and_the_mean():
    s = MinMaxSeries(4)
    for x, y in enumerate([1.0, 5.0, 2.0, 4.0, 3.0]):  # the fifth bucket: pairs merge, each holds 2 points now
        s.add(x, y)
    assert s.per_bucket == 2 and len(s) == 3
    assert (list(s.xs), list(s.lo), list(s.hi)) == ([1, 3, 4], [1, 2, 3], [5, 4, 3])
    assert [m / c for m, c in zip(s.sums, s.counts)] == [3.0, 3.0, 3.0]
    s.add(5, 0.5)  # fills the newest bucket in place: the latest point is always there
    assert (list(s.xs), s.lo[-1], s.hi[-1], s.counts[-1], len(s)) == ([1, 3, 5], 0.5, 3.0, 2, 3)


def test_minmax_series_a_one_step_spike_survives_a_million_steps():
    s = MinMaxSeries(256)
    for x in range(1_000_000):
        s.add(x, 1000.0 if x == 123_457 else 1.0 + (x % 7) * 0.01)
    assert max(s.hi) == 1000.0, "the spike is still some bucket's max"
    spike = max(range(len(s)), key=lambda i: s.hi[i])
    assert s.xs[spike - 1] < 123_457 <= s.xs[spike]
    assert min(s.lo) == 1.0 and sum(s.sums) / sum(s.counts) < 1.04, "the mean is barely moved"
    xs, lo, hi, mean = s.columns(88)  # a chart's dot columns: the spike is in one of them
    assert len(xs) <= 88 and max(hi) == 1000.0 and min(lo) == 1.0 and xs[-1] == 999_999


def test_minmax_series_memory_is_capped_after_a_million_adds():
    import tracemalloc

    cap = 5 * 8 * 2049  # five columns of doubles: 2,048 buckets and the newest

    def held(s: MinMaxSeries) -> int:
        return sum(col.buffer_info()[1] * col.itemsize for col in (s.xs, s.lo, s.hi, s.sums, s.counts))

    s = MinMaxSeries(2048)
    for x in range(900_000):
        s.add(x, float(x % 13))
        if (x + 1) % 100_000 == 0:
            assert len(s) <= 2049 and held(s) <= cap, f"after {x + 1} adds"
    tracemalloc.start()  # the last 100k adds: whatever they allocate and keep, not only the columns
    try:
        start = tracemalloc.get_traced_memory()[0]
        for x in range(900_000, 1_000_000):
            s.add(x, float(x % 13))
        kept = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert kept < cap * 1.25, f"{kept} bytes kept by 100k adds: more than the columns (at most {cap} + slack)"
    assert held(s) <= cap and len(s) <= 2049 and s.added == 1_000_000 and s.xs[-1] == 999_999


def test_minmax_series_columns_group_consecutive_buckets():
    s = MinMaxSeries(64)
    for x in range(10):
        s.add(x, float(x))
    xs, lo, hi, mean = s.columns(4)  # 10 buckets into 3 columns of 3, 3 and the rest
    assert (xs, lo, hi, mean) == ([2, 5, 8, 9], [0, 3, 6, 9], [2, 5, 8, 9], [1, 4, 7, 9])


def test_minmax_series_needs_room_for_a_pair():
    with pytest.raises(ValueError):
        MinMaxSeries(1)


# --------------------------------------------------------------------------- events in


def test_before_any_event():
    v = RunView()
    assert (v.state, v.step, v.epoch, v.total_steps, v.last_epoch, v.final) == ("starting", 0, 1, 0, None, None)
    assert v.replanned() == ([], [])
    assert v.take_dirty() == set()


def test_run_started_sets_the_scene():
    v = RunView()
    started = run_started(start_step=3, start_epoch=1, lrs=(0.1,), manual_factor=0.5, resumed_from="/old/last.pt",
                          warnings=("weights: offline; training from RANDOM INIT", "b", "c", "d"))
    v.apply(started)
    assert v.started is started and v.total_steps == 8
    assert (v.step, v.epoch, v.lrs, v.manual_factor) == (3, 1, (0.1,), 0.5)
    assert (v.trainable, v.params_trainable, v.params_total) == ((True, True), 23, 23)
    assert len(v.lr_history) == 1 and len(v.lr_history[0]) == 0
    assert v.badges == ["weights: offline", "b", "c"], "first three warnings, up to the first ';'"
    assert [line for _, line, _ in v.log] == [
        "unit: cpu, amp off, weights random init, digits: 160 train / 40 val, 10 classes",
        "run dir /runs/unit-1 (resumed from /old/last.pt)"]
    assert v.take_dirty() == {"header", "layers", "lr", "loss", "log"}
    assert v.take_dirty() == set(), "take_dirty clears"


def test_state_changes_go_to_the_header(view):
    view.apply(ev.StateChanged("running", 0, time=T0))
    assert view.state == "running" and view.take_dirty() == {"header"}
    view.apply(ev.StateChanged("paused", 4, time=T0))
    assert view.state == "paused" and view.take_dirty() == {"header", "log"}
    assert view.log[-1][1:] == ("paused at step 4", "info")


def test_step_report_feeds_every_per_step_loss(view):
    view.apply(report(4, [2.0, 1.0, math.nan, 3.0], lrs=(0.05,)))
    assert (view.step, view.epoch, view.samples_per_s, view.eta_s, view.lrs) == (4, 1, 320.0, 12.5, (0.05,))
    assert (list(view.loss.xs), list(view.loss.hi)) == ([1, 2, 4], [2.0, 1.0, 3.0]), "x is each loss's own step"
    assert list(view.loss_ema.hi) == pytest.approx([2.0, 1.9, 2.01]), "EMA 0.9/0.1 over finite losses"
    assert (view.last_loss, view.ema) == (3.0, pytest.approx(2.01))
    assert (view.lr_history[0].xs, view.lr_history[0].ys) == ([4], [0.05])
    assert view.take_dirty() == {"header", "loss", "lr"}, "no memory sample, no memory pane; no log line"
    assert len(view.log) == 2


def test_step_report_memory_uses_allocated_on_cuda_and_rss_on_cpu(view):
    view.apply(report(1, [1.0], memory=ev.MemorySample("cpu", rss=100 * 2**20)))
    assert "memory" in view.take_dirty()
    view.apply(report(2, [1.0]))
    assert "memory" not in view.take_dirty() and view.memory.rss == 100 * 2**20, "kept until the next sample"
    cuda = ev.MemorySample("cuda:0", rss=5, allocated=7, reserved=9, peak=8, total=100)
    view.apply(report(3, [1.0], memory=cuda))
    assert view.memory is cuda and list(view.memory_history) == [100.0 * 2**20, 7.0]


def test_histories_are_bounded(view):
    for step in range(1, 1001):
        view.apply(report(step, [1.0 / step], memory=ev.MemorySample("cpu", rss=step)))
    assert len(view.memory_history) == 300 and view.memory_history[-1] == 1000.0
    assert len(view.loss) == len(view.loss_ema) == 1000 and len(view.lr_history[0]) == 1000  # caps not reached
    for step in range(1001, 5001):
        view.apply(report(step, [1.0 / step]))
    assert len(view.loss) <= RunView.LOSS_BUCKETS and view.loss.xs[-1] == 5000 and view.loss.hi[0] == 1.0


def test_log_is_bounded_but_counts_every_line():
    v = RunView()
    for i in range(2500):
        v.say(f"line {i}", "warn", when=T0)
    assert len(v.log) == 2000 and v.log_count == 2500
    assert v.log[0] == (T0, "line 500", "warn") and v.log[-1][1] == "line 2499"


def test_log_lines_carry_the_event_time_and_level(view):
    view.apply(ev.RunWarning(3, "slow disk; saving takes 2s", time=T0 + 42))
    assert view.log[-1] == (T0 + 42, "WARNING slow disk; saving takes 2s", "warn")
    assert view.log_count == 3


def test_layer_stats(view):
    view.apply(ev.LayerStats(4, (0.5, None), (1e-3, None), time=T0))
    assert (view.grad_norm, view.update_ratio) == ((0.5, None), (1e-3, None))
    assert view.take_dirty() == {"layer_stats"}


def test_epoch_end_is_kept_and_logged(view):
    view.apply(epoch_end(1, improved=True))
    view.apply(epoch_end(2, improved=False))
    assert [e.epoch for e in view.epochs] == [1, 2] and view.last_epoch.epoch == 2
    assert view.take_dirty() == {"loss", "header", "lr", "log"}
    assert [level for _, _, level in list(view.log)[-2:]] == ["good", "info"]


def test_epochs_are_bounded():
    v = RunView()
    for epoch in range(1, 1203):
        v.apply(epoch_end(epoch))
    assert len(v.epochs) == 1000 and v.epochs[0].epoch == 203 and v.last_epoch.epoch == 1202


def test_epoch_values_are_kept_for_the_chart_bounded(view):
    view.apply(epoch_end(1, val_loss=0.9, val_acc=None, metrics={"val_dice": 0.5, "val_iou": None}))
    view.apply(epoch_end(2, step=8, val_loss=0.7, val_acc=0.6, metrics={"val_dice": 0.6, "val_iou": 0.4}))
    history = view.epoch_history
    assert list(history) == ["val_loss", "val_dice", "val_acc", "val_iou"], "nothing measured: no point"
    assert (list(history["val_loss"].xs), list(history["val_loss"].hi)) == ([4, 8], [0.9, 0.7]), "at the epoch's step"
    assert list(history["val_iou"].xs) == [8] and list(history["val_acc"].hi) == [0.6]
    v = RunView()
    for epoch in range(1, 3001):
        v.apply(epoch_end(epoch, step=4 * epoch, metrics={f"val_m{epoch % 100}": 1.0}))
    assert len(v.metric_names) == RunView.MAX_METRICS and len(v.epoch_history) == RunView.MAX_METRICS + 2
    assert all(len(h) <= RunView.METRIC_BUCKETS for h in v.epoch_history.values())
    assert v.epoch_history["val_loss"].xs[-1] == 12_000 and v.epoch_history["val_loss"].added == 3000


def test_manual_lr_changes_are_remembered_and_rescale_the_plan(view):
    view.apply(report(3, [1.0]))
    view.apply(ev.LrChanged(step=3, lrs=(0.05,), manual_factor=0.5, reason="manual", time=T0))
    view.apply(ev.LrChanged(step=5, lrs=(0.0125,), manual_factor=0.5, reason="plateau", time=T0))
    view.apply(ev.LrChanged(step=6, lrs=(0.0375,), manual_factor=1.5, reason="manual", time=T0))
    assert view.manual_changes == [(3, 0.5), (6, 1.5)], "only manual changes are marked"
    assert (view.manual_factor, view.lrs) == (1.5, (0.0375,))
    assert {"lr", "header", "log"} <= view.take_dirty()
    steps, lrs = view.replanned()  # the plan from the current step (3) on, times the factor
    assert steps == [3, 4, 5, 6, 7]
    assert lrs == pytest.approx([0.15, 0.075, 0.075, 0.075, 0.075])


def test_trainable_changed(view):
    view.apply(ev.TrainableChanged(2, ("0",), False, (False, True), 8, 23, time=T0))
    assert (view.trainable, view.params_trainable, view.params_total) == ((False, True), 8, 23)
    assert view.take_dirty() == {"layers", "log"}
    assert view.log[-1][1:] == ("froze 0: trainable 8 / 23 params", "info")


def test_a_frozen_layer_shows_no_statistics_as_soon_as_the_freeze_is_confirmed(view):
    view.apply(ev.LayerStats(4, (0.5, 0.25), (1e-3, 2e-3), time=T0))
    view.take_dirty()
    view.apply(ev.TrainableChanged(5, ("0",), False, (False, True), 8, 23, time=T0))
    assert (view.grad_norm, view.update_ratio) == ((None, 0.25), (None, 2e-3))  # drawn as "-"
    assert "layer_stats" in view.take_dirty()
    view.apply(ev.TrainableChanged(6, ("0",), True, (True, True), 23, 23, time=T0))
    assert view.grad_norm == (None, 0.25)  # an unfrozen layer waits for its next sample


def test_checkpoint_saved_remembers_the_last_path(view):
    view.apply(ev.CheckpointSaved(4, 1, "/runs/unit-1/checkpoints/last.pt", ("last",), 0.01, 2048, time=T0))
    assert view.last_checkpoint == "/runs/unit-1/checkpoints/last.pt"
    assert view.log[-1][1] == "checkpoint checkpoints/last.pt [last] 2.0 KiB in 0.01s"


def test_warnings_become_at_most_three_distinct_badges(view):
    for message in ["disk slow; x", "disk slow; y", "a", "b", "c"]:
        view.apply(ev.RunWarning(1, message, time=T0))
    assert view.badges == ["a", "b", "c"], "the newest three, each once"
    assert "header" in view.take_dirty()


def test_finished_keeps_the_state_and_sets_final(view):
    view.apply(ev.StateChanged("running", 0, time=T0))
    done = ev.Finished("completed", 8, 2, 10.0, 0, "finished", time=T0)
    view.apply(done)
    assert view.final is done and view.state == "running", "the state comes from StateChanged"
    assert {"header", "final", "log"} == view.take_dirty()


def test_failed_sets_the_state_and_logs_the_traceback(view):
    failed = ev.Failed(5, 1, "RuntimeError: boom", "Traceback (most recent call last):\n  x\nRuntimeError: boom\n",
                       None, time=T0)
    view.apply(failed)
    assert view.final is failed and view.state == "failed"
    assert [(text, level) for _, text, level in list(view.log)[-4:]] == [
        ("FAILED at step 5: RuntimeError: boom", "error"), ("Traceback (most recent call last):", "error"),
        ("  x", "error"), ("RuntimeError: boom", "error")]
    assert {"header", "final", "log"} == view.take_dirty()


def test_replanned_follows_a_group_and_the_step(view):
    started = run_started(plan=LrPlan(
        groups=("default", "head"), steps=(0, 2, 4, 6), lrs=((1.0, 2.0, 3.0, 4.0), (10.0, 20.0, 30.0, 40.0)),
        total_steps=8, adaptive=False))
    v = RunView()
    v.apply(started)
    v.apply(report(4, [1.0], lrs=(3.0, 30.0)))
    assert v.replanned(1) == ([4, 6], [30.0, 40.0])
    assert len(v.lr_history) == 2 and [s.ys for s in v.lr_history] == [[3.0], [30.0]]
