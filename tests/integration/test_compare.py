"""`tui-trainer compare` on real runs: two tiny runs trained here (in-process, as the CLI does), a
run read while it trains, the command's bad input, the screen under Pilot (metric key, axis key,
live appends), snapshots of the fixed runs in tests/fixtures/compare, and the real command in
tmux. Update snapshots with --snapshot-update."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import run_cli, tiny_preset_text
from tests.helpers.engine import run as run_engine
from tests.helpers.pilot import until
from tui_trainer.engine.events import EpochEnd, StepReport
from tui_trainer.run.history import TRAIN_LOSS, RunHistory, config_diff, open_runs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compare"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two real tiny runs (3 epochs) that differ in lr and batch size."""
    import torch

    base = tmp_path_factory.mktemp("compare")
    preset = base / "tiny.toml"
    preset.write_text(tiny_preset_text(), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = base / "runs" / "lr-0.05"
        b = base / "runs" / "lr-0.2"
        run_engine(preset, "train.epochs=3", run_dir=a)
        run_engine(preset, "train.epochs=3", "optimizer.lr=0.2", "data.batch_size=32", run_dir=b)
    finally:
        torch.set_num_threads(threads)
    return base, a, b


def text_of(widget) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return console.export_text()


# ---------------------------------------------------------------------- reading real runs


def test_real_runs_read_as_recorded(two_runs):
    _, a, b = two_runs
    runs = open_runs([a, b])
    for run, path in zip(runs, (a, b)):
        events = [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]
        finished = events[-1]
        assert finished["kind"] == "Finished"
        losses = [loss for e in events if e["kind"] == "StepReport" for loss in e["losses"]]
        assert run.label == path.name and run.state == "completed" and run.final
        assert run.step == finished["step"] == run.total_steps
        assert (run.best, run.best_epoch) == (finished["best"], finished["best_epoch"])
        assert run.train.ys == losses and run.train.xs == list(range(1, len(losses) + 1))
        assert run.curves["val_loss"].ys == [e["val_loss"] for e in events if e["kind"] == "EpochEnd"]
    assert runs[1].steps_per_epoch < runs[0].steps_per_epoch  # a bigger batch: fewer steps
    diff = dict(config_diff([r.config for r in runs]))
    assert set(diff) == {"optimizer.lr", "data.batch_size"}
    assert diff["optimizer.lr"] == [0.05, 0.2] and diff["data.batch_size"] == [16, 32]


class Watch:
    """Reads the run's own events.jsonl while it trains, from the training thread (every report
    and epoch end), as compare's poll does."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.history: RunHistory | None = None
        self.seen: list[tuple[int, int, str]] = []

    def on_event(self, event, control) -> None:
        if isinstance(event, (StepReport, EpochEnd)) and (self.run_dir / "events.jsonl").exists():
            self.history = self.history or RunHistory(self.run_dir)
            self.history.poll()
            self.seen.append((self.history._tail.offset, self.history.step, self.history.state))


def test_a_live_run_is_read_as_it_grows(tiny_preset, tmp_path, one_torch_thread, monkeypatch):
    from tui_trainer.run import rundir

    # this run lasts about a second: its recorder writes its reports in batches every 10 ms, not 250
    monkeypatch.setattr(rundir, "WRITE_WITHIN_S", 0.01)
    run_dir = tmp_path / "live"
    watch = Watch(run_dir)
    run_engine(tiny_preset(), "train.epochs=2", "train.log_every=1", run_dir=run_dir, callbacks=[watch])
    offsets = [o for o, _, _ in watch.seen]
    assert offsets == sorted(offsets) and len(set(offsets)) > 3  # read a piece at a time, never again from 0
    assert len({s for _, s, _ in watch.seen}) > 3 and all(state == "running" for *_, state in watch.seen)
    live = watch.history
    assert live.poll() and live.final and live.state == "completed"
    whole = open_runs([run_dir, FIXTURES / "small-lr"])[0]
    assert (live.train.xs, live.train.ys) == (whole.train.xs, whole.train.ys)
    assert {k: c.ys for k, c in live.curves.items()} == {k: c.ys for k, c in whole.curves.items()}
    assert (live.best, live.best_epoch, live.step) == (whole.best, whole.best_epoch, whole.step)


def test_a_detached_run_is_live_until_it_ends(tiny_preset, tmp_path):
    """A run training in another process: read as running (its socket answers) while it grows, and
    as ended by the signal once SIGTERM stopped it."""
    import os
    import signal

    from tests.conftest import ONE_THREAD_ENV
    from tests.helpers.runs import wait_until
    from tui_trainer.run.history import serving

    started = run_cli(str(tiny_preset()), "--detach", "--run-dir", "live", "--set", "train.epochs=5000",
                      "--set", "train.log_every=1", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert started.returncode == 0, started.stderr
    live = tmp_path / "live"
    pid = json.loads((live / "control.json").read_text())["pid"]
    try:
        wait_until(lambda: b"StepReport" in (live / "events.jsonl").read_bytes(), "the first report")
        run = open_runs([live, FIXTURES / "small-lr"])[0]
        assert run.state == "running" and not run.final and serving(live)
        step = run.step
        wait_until(lambda: run.poll() and run.step > step + 20, "more steps read")
        assert run.check_alive() is False and run.state == "running"  # still served: nothing changed
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: run.poll() and run.final, "the run's end read")
    assert run.state == "signal"
    wait_until(lambda: not serving(live), "the socket gone")
    assert run.check_alive() is False and run.state == "signal"  # a final event stays final


# ---------------------------------------------------------------------- the command's bad input


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    small, large = FIXTURES / "small-lr", FIXTURES / "large-lr"
    (tmp_path / "notarun").mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "events.jsonl").write_text("not json\n")
    cases = [
        ([str(small)], "compare: give 2 to 6 run directories (got 1)"),
        ([str(small)] * 7, "compare: give 2 to 6 run directories (got 7)"),
        ([str(small), str(tmp_path / "notarun")], "notarun is not a run directory (no events.jsonl)"),
        ([str(small), str(tmp_path / "gone")], "gone does not exist"),
        ([str(small), str(garbage)], "garbage/events.jsonl has no tui-trainer events"),
        ([str(small), str(small)], "is given twice"),
        (["--last", "3"], "0 runs in no runs/ folder here, 3 needed"),
        (["--last", "9"], "--last takes 2 to 6 (got 9)"),
        (["--last", "2", str(small), str(large)], "give RUN_DIRs or --last N, not both"),
        ([str(small), str(large)], "compare: draws its screen in a terminal, and stdin or stdout is not one"),
    ]
    for args, expected in cases:
        line = one_line_error(run_cli("compare", *args, cwd=tmp_path))
        assert line.startswith("tui-trainer: error: ") and expected in line, (args, line)


def test_without_run_dirs_the_newest_runs(tmp_path):
    from tui_trainer.run.history import newest_runs

    for name in ("small-lr", "large-lr"):
        shutil.copytree(FIXTURES / name, tmp_path / "runs" / name)
    # listed by when each started: small-lr's RunStarted is the older one
    assert [p.name for p in newest_runs(2, tmp_path / "runs")] == ["small-lr", "large-lr"]


# ---------------------------------------------------------------------- the screen (Pilot)


def test_metric_and_axis_keys_change_the_chart():
    asyncio.run(_metric_and_axis_keys())


async def _metric_and_axis_keys():
    from tui_trainer.ui.compare import CompareApp

    app = CompareApp(open_runs([FIXTURES / "small-lr", FIXTURES / "large-lr"]))
    async with app.run_test(size=(120, 40)) as pilot:
        chart, plot = app.query_one("#cmp-chart"), app.query_one("#cmp-plot")
        await until(pilot, lambda: "small-lr" in text_of(plot), "the chart drawn")
        assert chart.border_title == "train loss per step"
        first = text_of(plot)
        assert "━ small-lr" in first and "━ large-lr" in first
        titles = []
        for _ in range(5):
            await pilot.press("m")
            await pilot.pause()
            titles.append(chart.border_title)
        assert titles == ["val_loss per epoch", "val_acc per epoch", "val_f1 per epoch",
                          "train_loss (epoch) per epoch", "train loss per step"]
        assert text_of(plot) == first  # back where it started
        await pilot.press("M")
        await pilot.pause()
        assert chart.border_title == "train_loss (epoch) per epoch"
        await pilot.press("m", "m")  # val_loss
        await pilot.pause()
        by_step = text_of(plot)
        assert "last val_loss" in text_of(app.query_one("#cmp-best"))
        await pilot.press("x")
        await pilot.pause()
        assert "x: epoch" in chart.border_subtitle and text_of(plot) != by_step
        assert text_of(plot).rstrip().splitlines()[-1].split() == ["1", "2.5", "4"]  # epochs 1..4 on the x axis
        linear = text_of(plot)
        await pilot.press("g")
        await pilot.pause()
        assert "log y" in chart.border_subtitle and text_of(plot) != linear
        labels = [float(row.split("┤")[0].split()[-1]) for row in text_of(plot).splitlines() if "┤" in row]
        values = [v for r in app.runs for v in r.curves["val_loss"].ys]
        assert labels[0] > max(values) and labels[-1] < min(values)  # labelled in values, not their logs
        mid = labels[1]
        assert abs(mid - (labels[0] * labels[-1]) ** 0.5) < 0.01 * mid  # the middle of a log axis: a geometric mean
        await pilot.press("q")
    assert app.return_code == 0


def test_a_growing_run_updates_the_screen(tmp_path):
    asyncio.run(_a_growing_run(tmp_path))


async def _a_growing_run(tmp_path):
    from tui_trainer.ui.compare import CompareApp

    grown = tmp_path / "grown"
    grown.mkdir()
    shutil.copy(FIXTURES / "small-lr" / "config.toml", grown)
    lines = (FIXTURES / "small-lr" / "events.jsonl").read_bytes().splitlines(keepends=True)
    (grown / "events.jsonl").write_bytes(b"".join(lines[:8]))
    runs = open_runs([grown, FIXTURES / "large-lr"])
    assert runs[0].state == "dead"  # nobody writes it and nobody serves it (yet)
    app = CompareApp(runs, poll_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        best = app.query_one("#cmp-best")
        await until(pilot, lambda: "grown" in text_of(best), "the table drawn")
        before, version = text_of(app.query_one("#cmp-plot")), app.version
        assert "dead" in text_of(best)
        with open(grown / "events.jsonl", "ab") as f:
            f.write(b"".join(lines[8:]))
        await until(pilot, lambda: "completed" in text_of(best).split("grown")[1].splitlines()[0], "the new lines read")
        assert app.version > version and text_of(app.query_one("#cmp-plot")) != before
        assert "28/28" in text_of(best)


def test_a_run_whose_events_go_away_says_so_and_keeps_its_curves(tmp_path):
    asyncio.run(_events_go_away(tmp_path))


async def _events_go_away(tmp_path):
    from tui_trainer.ui.compare import CompareApp

    moved = Path(shutil.copytree(FIXTURES / "large-lr", tmp_path / "moved"))
    app = CompareApp(open_runs([FIXTURES / "small-lr", moved]), poll_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        best = app.query_one("#cmp-best")
        await until(pilot, lambda: "moved" in text_of(best), "the table drawn")
        (moved / "events.jsonl").unlink()
        await until(pilot, lambda: "events.jsonl unreadable" in text_of(best), "the run said to be unreadable")
        assert app.errors == {1: "events.jsonl unreadable (No such file or directory)"}
        shutil.copy(FIXTURES / "large-lr" / "events.jsonl", moved)  # back again
        await until(pilot, lambda: "completed" in text_of(best).split("moved")[1], "readable again")
        assert app.errors == {}
        assert "━ moved" in text_of(app.query_one("#cmp-plot"))  # what was read stays on the chart
        await pilot.press("q")
    assert app.return_code == 0


# ---------------------------------------------------------------------- snapshots of the fixed runs


def _fixed_app():
    from tui_trainer.ui.compare import CompareApp

    return CompareApp(open_runs([FIXTURES / "small-lr", FIXTURES / "large-lr"]))


async def _settle(pilot):
    await until(pilot, lambda: pilot.app._drawn is not None, "the chart drawn")
    await pilot.pause(0.2)


def test_compare_screen(snap_compare):
    assert snap_compare(_fixed_app(), terminal_size=(120, 40), run_before=_settle)


def test_compare_screen_narrow_val_loss(snap_compare):
    async def val_loss(pilot):
        await _settle(pilot)
        await pilot.press("m")
        await pilot.pause(0.2)

    assert snap_compare(_fixed_app(), terminal_size=(80, 24), run_before=val_loss)


# ---------------------------------------------------------------------- the real command in tmux


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_compare_in_tmux(two_runs):
    from tests.integration.test_e2e_tmux import Tmux

    base, a, b = two_runs
    tty = Tmux("tui-trainer-compare", f"{sys.executable} -m tui_trainer compare runs/{a.name} runs/{b.name}",
               cwd=base, width=120, height=40)
    try:
        screen = tty.wait_for("train loss per step")
        assert "━ lr-0.05" in screen and "━ lr-0.2" in screen  # the legend names both runs
        assert "optimizer.lr" in screen and "data.batch_size" in screen
        assert screen.count("completed") == 2
        chart = screen.split("train loss per step")[1].split("Runs")[0]
        tty.keys("m")
        screen = tty.wait_for("val_loss per epoch")
        assert screen.split("val_loss per epoch")[1].split("Runs")[0] != chart
        tty.keys("q")
        tty.wait_for("EXIT=0")
    finally:
        tty.close()


def test_the_read_benchmark_runs_and_reports():
    """benchmarks/compare_read.py on a small run (its numbers mean something only on a quiet box)."""
    from benchmarks import compare_read

    out = compare_read.main(["--steps", "5000", "--log-every", "10", "--polls", "5"])
    assert out["lines"] > 500 and out["curve_points"] <= 2048 and out["open_s"] > 0
    assert out["poll_one_report_us"] > 0 and out["poll_nothing_new_us"] > 0
