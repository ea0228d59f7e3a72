"""One tiny run through the real CLI, `--no-ui`, output captured (not a TTY): the run directory
it leaves, and the plain log lines it prints. Plus every event kind through events.jsonl."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings

import pytest
import torch

from tests.conftest import ONE_THREAD_ENV, run_cli, tiny_preset_text
from tests.helpers.engine import At, edit, run
from tui_trainer import config
from tui_trainer.engine.commands import SaveCheckpoint, ScaleLr, SetTrainable
from tui_trainer.engine.events import EVENT_TYPES, EpochEnd, Failed, Finished, RunStarted, StepReport, from_json
from tui_trainer.run.rundir import METRIC_FIELDS

EPOCHS, STEPS_PER_EPOCH = 3, 7


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    preset = cwd / "tiny.toml"
    preset.write_text(tiny_preset_text(), encoding="utf-8")
    proc = run_cli(str(preset), "--no-ui", f"--set=train.epochs={EPOCHS}", cwd=cwd, env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (run_dir,) = (cwd / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return preset, proc, run_dir, events


def test_run_directory_layout(cli_run):
    preset, proc, run_dir, _ = cli_run
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", run_dir.name)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.toml", "events.jsonl", "metrics.csv"]
    # keep_last = 2: the oldest epoch checkpoint is gone; no temp file is left behind.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt"]
    assert proc.stderr == ""


def test_config_toml_reloads_as_the_same_preset(cli_run):
    preset, _, run_dir, _ = cli_run
    resolved = config.load(run_dir / "config.toml")
    assert resolved.to_dict() == config.load(preset, [f"train.epochs={EPOCHS}"]).to_dict()


def test_every_event_line_round_trips(cli_run):
    _, _, _, events = cli_run
    for data in events:
        assert json.loads(json.dumps(from_json(data).to_json())) == data
    kinds = [d["kind"] for d in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    assert {"StateChanged", "StepReport", "EpochEnd", "CheckpointSaved"} <= set(kinds)
    finished = events[-1]
    assert (finished["status"], finished["step"], finished["exit_code"]) == ("completed", 21, 0)


def test_metrics_csv(cli_run):
    _, _, run_dir, events = cli_run
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_FIELDS
    train = [r for r in rows if r["phase"] == "train"]
    epochs = [r for r in rows if r["phase"] == "epoch"]
    assert [int(r["step"]) for r in train] == [d["step"] for d in events if d["kind"] == "StepReport"]
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    ends = [d for d in events if d["kind"] == "EpochEnd"]
    for row, end in zip(epochs, ends):
        assert float(row["val_loss"]) == pytest.approx(end["val_loss"], rel=1e-5)
        assert float(row["val_acc"]) == pytest.approx(end["val_acc"], rel=1e-5)


def test_last_and_best_are_aliases_of_the_right_files(cli_run):
    _, _, run_dir, events = cli_run
    ckpt = run_dir / "checkpoints"
    assert os.path.samefile(ckpt / "last.pt", ckpt / "epoch-0003.pt")
    best_epoch = [d for d in events if d["kind"] == "EpochEnd"][-1]["best_epoch"]
    best = torch.load(ckpt / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch and best["step"] == best_epoch * STEPS_PER_EPOCH
    if best_epoch >= 2:
        assert os.path.samefile(ckpt / "best.pt", ckpt / f"epoch-{best_epoch:04d}.pt")


# --------------------------------------------------------------------------- headless lines

ANSI = re.compile(r"\x1b\[")
STEP_LINE = re.compile(r"\d\d:\d\d:\d\d epoch (\d+)/3 step (\d+)/21 loss (\d+\.\d{4}) lr (\d\.\d\de[-+]\d\d)"
                       r" ([\d,]+) samples/s data \d+% ETA \d+:\d\d")
EPOCH_LINE = re.compile(r"\d\d:\d\d:\d\d epoch (\d) done: train_loss (\d+\.\d{4}) val_loss (\d+\.\d{4})"
                        r" val_acc (\d+\.\d{4}) \| best val_loss \d+\.\d{4} @ epoch \d \| [\d.]+s val")


def test_headless_prints_plain_lines_one_per_report(cli_run):
    _, proc, _, events = cli_run
    out = proc.stdout
    assert not ANSI.search(out), "no colour codes or cursor moves when stdout is not a TTY"
    lines = out.splitlines()
    step_lines = [m for m in map(STEP_LINE.fullmatch, lines) if m]
    reports = [d for d in events if d["kind"] == "StepReport"]
    assert len(step_lines) == len(reports) and reports
    for match, report in zip(step_lines, reports):
        assert (int(match[1]), int(match[2])) == (report["epoch"], report["step"])
        assert float(match[3]) == pytest.approx(sum(report["losses"]) / len(report["losses"]), abs=1e-4)
        assert match[4] == f"{report['lrs'][0]:.2e}"
    ends = [d for d in events if d["kind"] == "EpochEnd"]
    epoch_lines = [m for m in map(EPOCH_LINE.fullmatch, lines) if m]
    assert [int(m[1]) for m in epoch_lines] == [1, 2, 3]
    for match, end in zip(epoch_lines, ends):
        assert match[3] == f"{end['val_loss']:.4f}" and match[4] == f"{end['val_acc']:.4f}"
    assert lines[-1].endswith(" -> " + str(events[-1]["best_path"])) and " completed: finished 21 steps" in lines[-1]


# --------------------------------------------------------------------------- every event kind


def test_the_engine_reads_its_losses_at_the_report_without_a_warning(tiny_preset, tmp_path, one_torch_thread):
    """The engine keeps each step's loss tensor as it is (backwarded, no alias made a step) until the
    report reads it: that read says nothing about requires_grad (a warning would reach every run's
    stderr), and every step's loss is reported."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        out = run(tiny_preset(), "train.log_every=3", "train.log_min_interval_s=0", run_dir=tmp_path / "r")
    assert isinstance(out.final, Finished)
    assert not [w for w in said if "requires_grad" in str(w.message)]
    reports = out.of(StepReport)
    losses = [v for e in reports for v in e.losses]
    assert len(losses) == out.final.step and all(math.isfinite(v) and v > 0 for v in losses)
    assert len(reports) >= out.final.step // 3


def test_every_event_kind_round_trips_through_events_jsonl(tiny_preset, tmp_path, one_torch_thread):
    """LrChanged, TrainableChanged, RunWarning, LayerStats and Failed do not happen in a plain
    run: make each happen for real, then read events.jsonl back."""
    preset = edit(tiny_preset(), ('arch = "examples.models:small_cnn"\nkwargs = { num_classes = 10, width = 4 }',
                                  'arch = "tests.helpers.engine:failing_cnn"\nkwargs = { fail_at = 6 }'))
    commands = At({1: [ScaleLr(0.5), SetTrainable(("body.0",), False), SetTrainable(("nope",), False)],
                   2: SaveCheckpoint()})
    out = run(preset, "train.log_every=1", callbacks=[commands], run_dir=tmp_path / "r", layer_stats=True)
    assert isinstance(out.final, Failed)
    assert out.final.step == 5 and out.final.exit_code == 1
    assert "RuntimeError: planned failure on training call 6" == out.final.error
    emergency = torch.load(out.final.emergency_path, weights_only=True)
    assert emergency["step"] == 5

    lines = (tmp_path / "r" / "events.jsonl").read_text().splitlines()
    assert len(lines) == len(out.events)
    for line, event in zip(lines, out.events):
        assert from_json(json.loads(line)) == event  # the same frozen dataclass: tuples, nested records
    # Printed, LayerShapes and LrPlanned: only tui_trainer.loop's (tests/integration/test_loop_api.py)
    assert {e.kind for e in out.events} == set(EVENT_TYPES) - {"EpochEnd", "Finished", "Printed", "LayerShapes",
                                                               "LrPlanned"}
    assert any(isinstance(e, StepReport) for e in out.events) and isinstance(out.events[0], RunStarted)
    assert not out.of(EpochEnd)


def test_a_new_run_into_a_run_dir_that_holds_a_run_is_refused(tmp_path):
    """It replaced the old run's best.pt and last.pt, keep_last deleted its own checkpoints first, and
    events.jsonl and metrics.csv held two histories. --resume into it is the way to go on."""
    from tests.helpers.user_code import write_preset

    preset = write_preset(tmp_path / "p.toml", checkpoint={"every_epochs": 1, "keep_last": 1})
    first = run_cli(str(preset), "--no-ui", "--run-dir", "r", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr[-1000:]
    files = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    again = run_cli(str(preset), "--no-ui", "--run-dir", "r", "--set", "train.epochs=1", cwd=tmp_path,
                    env_extra=ONE_THREAD_ENV)
    assert again.returncode == 2
    n = len(list((tmp_path / "r" / "checkpoints").glob("*.pt")))
    assert again.stderr.strip() == (f"tui-trainer: error: --run-dir: r already holds a run with {n} checkpoints;"
                                    " --resume r/checkpoints/last.pt continues it, or choose another --run-dir"
                                    " for a new one"), again.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == files
    more = run_cli(str(preset), "--no-ui", "--run-dir", "r", "--resume", "r/checkpoints/last.pt", "--set",
                   "train.epochs=3", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert more.returncode == 0, more.stderr[-1000:]
    assert (tmp_path / "r" / "checkpoints" / "epoch-0003.pt").is_file()
