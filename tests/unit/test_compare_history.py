"""`tui-trainer compare`'s pure pieces: reading events.jsonl incrementally (run/history.py), the
config diff, the bounded curves and the overlay plot (text/overlay.py). The run directories are
the fixed real runs under tests/fixtures/compare (two tiny runs, made by the CLI)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tui_trainer.errors import UserError
from tui_trainer.run.history import (
    MISSING,
    TRAIN_LOSS,
    Curve,
    EventTail,
    RunHistory,
    config_diff,
    flatten,
    open_runs,
    short_labels,
    value_text,
)
from tui_trainer.text.overlay import Line, legend, overlay, ranges, thin

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compare"


def events_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def copy_run(name: str, dest: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, dest / name))


# ---------------------------------------------------------------------- reading


def test_a_finished_run_reads_as_its_events_say():
    run = RunHistory(FIXTURES / "small-lr")
    assert run.poll()
    events = events_of(FIXTURES / "small-lr")
    finished = next(e for e in events if e["kind"] == "Finished")
    started = events[0]
    losses = {e["first_step"] + i: loss
              for e in events if e["kind"] == "StepReport" for i, loss in enumerate(e["losses"])}
    assert run.final and run.state == finished["status"] == "completed"
    assert run.step == finished["step"] == started["total_steps"] == 28
    assert run.steps_text == "28/28"
    assert (run.monitor, run.best, run.best_epoch) == ("val_loss", finished["best"], finished["best_epoch"])
    assert run.train.xs == sorted(losses) and run.train.ys == [losses[s] for s in sorted(losses)]
    epochs = [e for e in events if e["kind"] == "EpochEnd"]
    assert run.curves["val_loss"].xs == [1, 2, 3, 4]
    assert run.curves["val_loss"].ys == [e["val_loss"] for e in epochs]
    assert run.curves["val_f1"].ys == [e["metrics"]["val_f1"] for e in epochs]
    assert run.last("val_acc") == epochs[-1]["val_acc"]
    assert not run.poll()  # nothing new: nothing changed


def test_lines_are_read_once_and_a_half_written_line_waits(tmp_path):
    lines = (FIXTURES / "small-lr" / "events.jsonl").read_bytes().splitlines(keepends=True)
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    path = run_dir / "events.jsonl"
    path.write_bytes(b"".join(lines[:5]))
    run = RunHistory(run_dir)
    run.poll()
    assert run.lines == 5 and run._tail.offset == path.stat().st_size
    steps = run.step
    half = len(lines[5]) // 2
    with open(path, "ab") as f:
        f.write(lines[5][:half])
    assert not run.poll() and run.lines == 5  # half a line is not read...
    with open(path, "ab") as f:
        f.write(lines[5][half:])
    run.poll()
    assert run.lines == 6  # ...and read whole once its newline came
    with open(path, "ab") as f:
        f.write(b"".join(lines[6:]))
    assert run.poll() and run.step > steps and run.final
    whole = RunHistory(FIXTURES / "small-lr")
    whole.poll()
    assert (run.train.xs, run.train.ys) == (whole.train.xs, whole.train.ys)
    assert (run.best, run.state) == (whole.best, whole.state)


def test_a_file_that_shrank_is_read_again(tmp_path):
    run_dir = copy_run("small-lr", tmp_path)
    run = RunHistory(run_dir)
    run.poll()
    assert run.final
    head = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)[:4]
    (run_dir / "events.jsonl").write_bytes(b"".join(head))  # replaced by a shorter file
    assert run.poll()
    assert not run.final and run.lines == 4 and len(run.curves) == 0


def test_a_torn_or_foreign_line_is_skipped(tmp_path):
    run_dir = copy_run("small-lr", tmp_path)
    path = run_dir / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + b'{"kind":"StepRep\n' + b'[1, 2]\n' + b'{"kind":"StepReport"}\n'
                     + b"".join(lines[3:]))
    run = RunHistory(run_dir)
    run.poll()
    assert run.final and run.step == 28


def test_a_resumed_run_forgets_the_steps_it_does_again(tmp_path):
    run_dir = copy_run("small-lr", tmp_path)
    events = events_of(run_dir)
    started = dict(events[0], start_step=14, start_epoch=3, time=events[-1]["time"] + 1)
    with open(run_dir / "events.jsonl", "a") as f:  # resumed from the epoch-2 checkpoint
        f.write(json.dumps(started) + "\n")
    run = RunHistory(run_dir)
    run.poll()
    assert max(run.train.xs) == 14 and run.curves["val_loss"].xs == [1, 2]
    assert not run.final and run.step == 14


def test_a_report_of_steps_past_the_cap_keeps_the_curve_bounded():
    curve = Curve(max_points=256)
    for step in range(1, 1_000_001):
        curve.add(step, 1.0 + (step % 2))  # alternating 1, 2: every merged point is their mean
    assert len(curve) <= 256 and curve.stride > 1
    assert curve.xs == sorted(curve.xs) and curve.xs[-1] >= 1_000_000 - curve.stride
    assert all(math.isclose(y, 1.5, abs_tol=1e-3) for y in curve.ys)
    curve.add(2_000_000, float("nan"))
    assert len(curve) <= 256


def test_the_tail_reads_in_bounded_pieces(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"kind":"x","n":%d}\n' % i for i in range(1000)))
    tail = EventTail(path, max_read=1000)
    got = []
    while chunk := tail.read():
        assert sum(len(line) + 1 for line in chunk) <= 1000
        got += chunk
    assert [json.loads(line)["n"] for line in got] == list(range(1000))
    assert not tail.behind


# ---------------------------------------------------------------------- opening runs


def test_open_runs_labels_each_by_its_folder():
    runs = open_runs([FIXTURES / "small-lr", FIXTURES / "large-lr"])
    assert [r.label for r in runs] == ["small-lr", "large-lr"]
    assert runs[1].state == "completed" and runs[1].steps_text == "12/12"
    assert short_labels([Path("a/run"), Path("b/run"), Path("c/x")]) == ["a/run", "b/run", "x"]


@pytest.mark.parametrize("count", [1, 7])
def test_two_to_six_runs(count, tmp_path):
    paths = [copy_run("small-lr", tmp_path / str(i)) for i in range(count)]
    with pytest.raises(UserError, match=rf"give 2 to 6 run directories \(got {count}\)"):
        open_runs(paths)


def test_bad_run_directories_are_one_line_each(tmp_path):
    good = FIXTURES / "small-lr"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is not a run directory .no events.jsonl.; `tui-trainer ls`"):
        open_runs([good, tmp_path / "empty"])
    with pytest.raises(UserError, match="nowhere does not exist"):
        open_runs([good, tmp_path / "nowhere"])
    with pytest.raises(UserError, match="is given twice"):
        open_runs([good, good.parent / ".." / "compare" / "small-lr"])
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "events.jsonl").write_text("hello\nworld\n")
    with pytest.raises(UserError, match="garbage/events.jsonl has no tui-trainer events"):
        open_runs([good, garbage])
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "events.jsonl").mkdir()  # not a file: reads as no events.jsonl
    with pytest.raises(UserError, match="unreadable is not a run directory"):
        open_runs([good, unreadable])


def test_a_run_without_config_still_opens(tmp_path):
    run_dir = copy_run("large-lr", tmp_path)
    (run_dir / "config.toml").unlink()
    runs = open_runs([FIXTURES / "small-lr", run_dir])
    assert runs[1].config is None and runs[1].config_error == "no config.toml"


# ---------------------------------------------------------------------- config diff


def test_only_keys_that_differ_one_value_per_run():
    a = {"seed": 0, "optimizer": {"name": "SGD", "lr": 0.05}, "train": {"epochs": 2}, "metrics": []}
    b = {"seed": 0, "optimizer": {"name": "SGD", "lr": 0.1}, "train": {"epochs": 2.0}, "metrics": [{"name": "f1"}]}
    c = {"seed": 0, "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9}, "train": {"epochs": 2}, "metrics": []}
    rows = dict(config_diff([a, b, c]))
    assert list(rows) == ["optimizer.lr", "metrics", "optimizer.momentum"]
    assert rows["optimizer.lr"] == [0.05, 0.1, 0.05]
    assert rows["optimizer.momentum"] == [MISSING, MISSING, 0.9]
    assert [value_text(v) for v in rows["metrics"]] == ["[]", '[{"name": "f1"}]', "[]"]
    assert value_text(MISSING) == "-" and value_text(True) == "true" and value_text("SGD") == "SGD"
    assert config_diff([a, a]) == []
    assert dict(config_diff([a, None]))["seed"] == [0, MISSING]
    assert flatten({"model": {"kwargs": {}}}) == {"model.kwargs": {}}


def test_the_fixture_runs_differ_in_what_their_command_lines_set():
    runs = open_runs([FIXTURES / "small-lr", FIXTURES / "large-lr"])
    assert {key for key, _ in config_diff([r.config for r in runs])} == {"data.batch_size", "optimizer.lr"}


# ---------------------------------------------------------------------- the overlay


def test_overlay_draws_every_run_in_its_colour_with_a_legend():
    lines = [Line("run-a", [1, 2, 3], [3.0, 2.0, 1.0], "red", "1.0"),
             Line("run-b", [1, 2, 3], [1.0, 2.0, 3.0], "blue", "3.0")]
    text = overlay(lines, 40, 12)
    rows = text.plain.split("\n")
    assert rows[0] == "━ run-a 1.0  ━ run-b 3.0"
    assert len(rows) == 12 and all(len(r) <= 40 for r in rows)
    styles = {str(span.style) for span in text.spans}
    assert {"red", "blue"} <= styles
    assert ranges(lines) == ((1, 3), (0.9, 3.1))


def test_legend_wraps_whole_entries():
    lines = [Line(f"run-{i}", [], [], "red", "0.1234") for i in range(6)]
    rows = legend(lines, 40).plain.split("\n")
    assert len(rows) > 1 and all(len(r) <= 40 for r in rows)
    assert sum(r.count("━ run-") for r in rows) == 6


def test_overlay_without_points_says_so():
    text = overlay([Line("a", [], [], "red"), Line("b", [], [], "blue")], 40, 10, empty="no val_f1 yet")
    assert text.plain.split("\n")[1] == "no val_f1 yet"


def test_one_point_has_a_range_and_losses_keep_a_floor_of_zero():
    assert ranges([Line("a", [5], [2.0], "red")]) == ((4, 6), (1.8, 2.2))
    assert ranges([Line("a", [1, 2], [0.01, 2.01], "red")])[1] == (0.0, 2.11)
    assert ranges([Line("a", [1, 2], [-1.0, 1.0], "red")])[1] == (-1.1, 1.1)


def test_thin_draws_the_mean_of_each_bucket():
    xs = list(range(1000))
    ys = [1.0 + (x % 2) for x in xs]  # noise between 1 and 2
    tx, ty = thin(xs, ys, 100)
    assert len(tx) <= 102 and (tx[0], tx[-1]) == (0, 999) and tx == sorted(tx)
    assert all(abs(y - 1.5) <= 0.1 for y in ty[1:-1])  # a stride would have drawn 1s or 2s only
    assert thin([1, 2, 3], [4, 5, 6], 100) == ([1, 2, 3], [4, 5, 6])


def test_train_loss_is_the_step_curve():
    run = RunHistory(FIXTURES / "large-lr")
    run.poll()
    assert run.curve(TRAIN_LOSS) is run.train and run.curve("nope") is None


def test_per_epoch_points_are_marked_where_the_line_passes():
    lines = [Line("a", [1, 2, 3], [1.0, 3.0, 2.0], "red", marks=True), Line("b", [1, 3], [2.0, 2.0], "blue")]
    text = overlay(lines, 40, 12)
    rows = text.plain.split("\n")[1:-1]
    marks = [(r, row.index("●")) for r, row in enumerate(rows) if "●" in row]
    assert len(marks) == 3 and sum(row.count("●") for row in rows) == 3
    assert [r for r, _ in sorted(marks, key=lambda m: m[1])] == [len(rows) - 1, 0, (len(rows) - 1) // 2]
    assert {str(s.style) for s in text.spans if text.plain[s.start:s.end] == "●"} == {"red"}
    many = overlay([Line("a", list(range(100)), [float(i) for i in range(100)], "red", marks=True)], 40, 12)
    assert "●" not in many.plain  # too many to tell apart: the line alone


def test_a_log_axis_is_labelled_in_values_and_keeps_the_width():
    lines = [Line("a", [1, 2, 3, 4], [2.3, 0.5, 0.1, 0.0], "red"),
             Line("b", [1, 2, 3, 4], [2.0, 1.0, 0.5, 0.2], "blue")]
    for width in (37, 50, 80):
        rows = overlay(lines, width, 14, log=True).plain.split("\n")
        assert {len(r) for r in rows[1:]} == {width}  # the legend row aside, every row is as wide as asked
        labels = [float(r.split("┤")[0]) for r in rows if "┤" in r]
        assert labels[0] > 2.3 and 0.05 < labels[-1] < 0.1  # 0.0 has no log: left out
    assert "above 0" in overlay([Line("a", [1], [0.0], "red")], 40, 10, log=True).plain


def test_without_a_legend_the_plot_takes_every_row():
    lines = [Line("a", [1, 2], [1.0, 2.0], "red"), Line("b", [1, 2], [2.0, 1.0], "blue")]
    text = overlay(lines, 40, 8, with_legend=False)
    assert "━" not in text.plain and len(text.plain.split("\n")) == 8


def test_an_unreadable_events_file_is_one_line_naming_it(tmp_path, monkeypatch):
    # root reads any file whatever its mode, so the refusal is made here
    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(EventTail, "read", refuse)
    with pytest.raises(UserError) as err:
        open_runs([FIXTURES / "small-lr", FIXTURES / "large-lr"])
    assert str(err.value) == (f"compare: cannot read {FIXTURES / 'small-lr' / 'events.jsonl'} (Permission denied);"
                              " check its permissions (chmod u+r) or give another run")
