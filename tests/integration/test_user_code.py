"""Bring your own dataset, step and metrics (issue 12), end to end through the launch path the CLI
takes (`tests.helpers.engine.run`): every dataset form a factory may return, every step form, every
kind of metric and what it drives (EpochEnd, best.pt, metrics.csv, events.jsonl), exact resume with
dict samples (with and without worker processes), gradient clipping by value and by other norms,
and a real torchvision segmentation model on a tiny user dataset."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tests.helpers import user_code
from tests.helpers.engine import Snapshots, StopAt, run
from tests.helpers.runs import assert_exactly_equal, load_checkpoint, losses_by_step, of_kind, read_events
from tests.helpers.user_code import UC, write_preset
from tui_trainer.engine.events import CheckpointSaved, EpochEnd, Finished, RunStarted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def completed(outcome) -> Finished:
    final = outcome.final
    assert isinstance(final, Finished) and final.status == "completed", final
    assert final.exit_code == 0
    return final


def finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


# --------------------------------------------------------------------------- dataset forms


@pytest.mark.parametrize("data, note, classes", [
    ({"dataset": f"{UC}:one"}, "77 train / 19 val, 3 classes", ["a", "b", "c"]),  # split by val_fraction 0.2
    ({"dataset": f"{UC}:pair"}, "96 train / 24 val, 3 classes", ["a", "b", "c"]),
    ({"dataset": f"{UC}:as_dict"}, "96 train / 24 val, 3 classes", ["x", "y", "z"]),
    ({"dataset": f"{UC}:Blobs", "kwargs": {"n": 64}, "val_fraction": 0.25}, "48 train / 16 val, 3 classes",
     ["a", "b", "c"]),
    ({"dataset": f"{UC}:seeded", "kwargs": {"n": 40}}, "32 train / 8 val, 3 classes", ["a", "b", "c"]),
], ids=["one-dataset", "tuple", "dict-with-classes", "dataset-class", "takes-seed"])
def test_each_dataset_form_trains(tmp_path, data, note, classes):
    preset = write_preset(tmp_path / "p.toml", seed=7, data=data)
    out = run(preset)
    completed(out)
    started = out.of(RunStarted)[0]
    assert started.data.endswith(note), started.data
    assert out.session.trainer.parts.data.classes == classes
    ends = out.of(EpochEnd)
    assert [e.epoch for e in ends] == [1, 2]
    assert all(finite(e.val_loss) and finite(e.val_acc) for e in ends)  # class targets: val_acc measured
    if data["dataset"].endswith(":seeded"):
        assert user_code.SEEDS[-1] == 7, "a factory with a seed parameter gets the preset's seed"
    if data["dataset"].endswith(":Blobs"):
        assert out.session.trainer.parts.data.train.dataset.dataset.dataset.seed == 7  # Keyed(Subset(Blobs))


# --------------------------------------------------------------------------- step forms


def test_a_step_returning_only_the_loss(tmp_path):
    preset = write_preset(tmp_path / "p.toml", step={"fn": f"{UC}:loss_only_step"})
    out = run(preset)
    completed(out)
    ends = out.of(EpochEnd)
    assert len(ends) == 2
    assert all(finite(e.val_loss) and e.val_acc is None and e.metrics == {} for e in ends)
    assert ends[-1].val_loss < ends[0].val_loss * 1.5  # it trained, sanely


def test_a_step_returning_outputs_and_targets_feeds_the_metrics(tmp_path):
    preset = write_preset(tmp_path / "p.toml", step={"fn": f"{UC}:dict_step"},
                          metrics=[{"name": "accuracy"}, {"name": "f1"}])
    out = run(preset)
    completed(out)
    for e in out.of(EpochEnd):
        assert finite(e.val_acc) and 0 <= e.val_acc <= 1
        assert list(e.metrics) == ["val_f1"] and finite(e.metrics["val_f1"])


def test_dict_batches_with_two_inputs_and_a_custom_collate(tmp_path):
    user_code.COLLATED.clear()
    preset = write_preset(tmp_path / "p.toml", model={"arch": f"{UC}:two_inputs"},
                          data={"dataset": f"{UC}:dict_samples", "collate": f"{UC}:dict_collate"},
                          step={"fn": f"{UC}:two_input_step"}, metrics=[{"name": "accuracy"}], train={"epochs": 3})
    out = run(preset)
    completed(out)
    assert 16 in user_code.COLLATED, "the user's collate made the batches"
    ends = out.of(EpochEnd)
    assert all(finite(e.val_acc) and finite(e.val_loss) for e in ends)
    assert ends[-1].val_acc > 0.5  # both inputs reached the model: it learns the 3 classes


# --------------------------------------------------------------------------- metric forms

BLOBS = {"model": {"arch": f"{UC}:mlp"}, "data": {"dataset": f"{UC}:pair"}}
SEGMENT = {"model": {"arch": f"{UC}:seg_net"}, "data": {"dataset": f"{UC}:segmentation", "batch_size": 4}}
REGRESS = {"model": {"arch": f"{UC}:mlp", "kwargs": {"inputs": 5, "classes": 1}},
           "data": {"dataset": f"{UC}:regression"}, "loss": {"name": "MSELoss"},
           "optimizer": {"lr": 0.03}}


@pytest.mark.parametrize("setup, metrics, monitor, goal", [
    (BLOBS, [{"name": "accuracy"}], "val_acc", max),
    (SEGMENT, [{"name": "dice"}, {"name": "iou"}], "val_dice", max),
    (REGRESS, [{"name": "mae"}, {"name": "r2"}], "val_mae", min),
    (REGRESS, [{"name": "mae"}, {"name": "r2"}], "val_r2", max),
    (BLOBS, [{"name": "torchmetrics:MulticlassF1Score", "num_classes": 3}], "val_multiclass_f1_score", max),
    (BLOBS, [{"name": f"{UC}:hit_rate", "label": "hits", "mode": "max"}], "val_hits", max),
], ids=["accuracy", "dice-iou", "mae-r2-min", "mae-r2-max", "torchmetrics", "user-fn"])
def test_metrics_are_reported_and_the_monitored_one_picks_best_pt(tmp_path, setup, metrics, monitor, goal):
    # lr 0.5 with momentum: big enough that a metric may get worse in some epoch (best != last)
    preset = write_preset(tmp_path / "p.toml", **{"optimizer": {"lr": 0.5}, **setup}, metrics=metrics,
                          train={"epochs": 4}, checkpoint={"monitor": monitor, "keep_last": 4})
    out = run(preset, run_dir=tmp_path / "r")
    final = completed(out)
    ends = out.of(EpochEnd)
    keys = [f"val_{'acc' if m['name'] == 'accuracy' else m.get('label') or m['name'].rpartition(':')[2]}"
            for m in metrics]
    keys = ["val_multiclass_f1_score" if k == "val_MulticlassF1Score" else k for k in keys]
    for e in ends:
        assert list(e.metrics) == [k for k in keys if k != "val_acc"]
        assert all(finite(v) for v in e.metrics.values()), e.metrics
        assert e.monitor == monitor
        assert (e.val_acc is None) == (setup is not BLOBS)
    history = [e.val_acc if monitor == "val_acc" else e.metrics[monitor] for e in ends]
    best_epoch = history.index(goal(history)) + 1  # the first epoch that reached the best value
    assert final.best_epoch == best_epoch and final.best == history[best_epoch - 1], history
    assert [e.improved for e in ends] == [
        i == 0 or (history[i] > max(history[:i]) if goal is max else history[i] < min(history[:i]))
        for i in range(len(history))]
    best_saves = [c for c in out.of(CheckpointSaved) if "best" in c.tags]
    assert best_saves[-1].epoch == best_epoch
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    at_best = load_checkpoint(tmp_path / "r" / "checkpoints" / f"epoch-{best_epoch:04d}.pt")
    assert_exactly_equal(best["model"], at_best["model"], "best.pt")


def test_a_regression_run_has_no_val_acc_and_records_each_metric(tmp_path):
    preset = write_preset(tmp_path / "p.toml", **REGRESS, metrics=[{"name": "mae"}, {"name": "rmse"},
                                                                   {"name": "r2"}])
    out = run(preset, run_dir=tmp_path / "r")
    completed(out)
    ends = out.of(EpochEnd)
    assert all(e.val_acc is None for e in ends)
    assert all(list(e.metrics) == ["val_mae", "val_rmse", "val_r2"] for e in ends)
    with open(tmp_path / "r" / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert [c for c in header if c.startswith("val_")] == ["val_loss", "val_acc", "val_mae", "val_rmse", "val_r2"]
    epoch_rows = [r for r in rows if r["phase"] == "epoch"]
    assert len(epoch_rows) == 2
    for row, e in zip(epoch_rows, ends):
        assert row["val_acc"] == ""
        for key in ("val_mae", "val_rmse", "val_r2"):
            assert math.isclose(float(row[key]), e.metrics[key], rel_tol=1e-5)
    lines = (tmp_path / "r" / "events.jsonl").read_text(encoding="utf-8").splitlines()
    recorded = [json.loads(line) for line in lines if '"kind":"EpochEnd"' in line]
    assert [r["metrics"] for r in recorded] == [e.metrics for e in ends]
    assert all(r["val_acc"] is None for r in recorded)


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_with_dict_samples(tmp_path, workers):
    """Stopped mid-epoch 2 (step 6 of 4 x 3) and resumed: bit-identical to one uninterrupted run."""
    preset = write_preset(tmp_path / "p.toml", model={"arch": f"{UC}:two_inputs", "kwargs": {"dropout": 0.2}},
                          data={"dataset": f"{UC}:dict_samples", "val_fraction": 0.25, "num_workers": workers},
                          step={"fn": f"{UC}:two_input_step"}, train={"epochs": 3})
    completed(run(preset, run_dir=tmp_path / "straight"))
    stopped = run(preset, run_dir=tmp_path / "stopped", callbacks=[StopAt(6)])
    assert stopped.final.status == "stopped" and stopped.final.step == 6
    resumed = run(preset, resume=str(tmp_path / "stopped" / "checkpoints" / "last.pt"))
    completed(resumed)
    assert resumed.of(RunStarted)[0].start_step == 6
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in ("model", "optimizer"):
        assert_exactly_equal(a[key], b[key], key)
    la, lb = losses_by_step(read_events(tmp_path / "straight")), losses_by_step(read_events(tmp_path / "stopped"))
    assert la == lb and sorted(la) == list(range(1, 13))
    va = [(e["val_loss"], e["val_acc"]) for e in of_kind(read_events(tmp_path / "straight"), "EpochEnd")]
    vb = [(e["val_loss"], e["val_acc"]) for e in of_kind(read_events(tmp_path / "stopped"), "EpochEnd")]
    assert va == vb and len(va) == 3


# --------------------------------------------------------------------------- gradient clipping


def _moves(tmp_path, train: dict):
    """Per step: every parameter's change (SGD without momentum: -lr x the clipped gradient)."""
    preset = write_preset(tmp_path / "p.toml", optimizer={"name": "SGD", "lr": 0.1, "momentum": 0.0},
                          train={"epochs": 1, **train})
    before: dict = {}
    snaps: list[Snapshots] = []

    def attach(session):
        model = session.trainer.model
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        snaps.append(Snapshots(model, tuple(before)))
        return snaps

    out = run(preset, callbacks=attach)
    completed(out)
    (snap,) = snaps
    steps = sorted(snap.at)
    assert steps == list(range(1, out.final.step + 1)) and len(steps) >= 5
    moves, prev = [], before
    for step in steps:
        moves.append(torch.cat([(snap.at[step][n] - prev[n]).flatten() for n in prev]).double())
        prev = snap.at[step]
    return moves


def test_grad_clip_value_bounds_each_weight_move(tmp_path):
    clip = 1e-3
    moves = _moves(tmp_path, {"grad_clip_value": clip})
    bound = 0.1 * clip
    for move in moves:
        assert move.abs().max() <= bound * (1 + 1e-3)
    assert max(m.abs().max() for m in moves) >= bound * 0.99, "the clip never bit: the test proves nothing"


@pytest.mark.parametrize("norm_type, norm", [(math.inf, lambda m: m.abs().max()), (1.0, lambda m: m.abs().sum())],
                         ids=["inf", "1"])
def test_grad_clip_norm_types_bound_the_update_in_that_norm(tmp_path, norm_type, norm):
    """grad_clip_norm_type = inf (TOML's inf: the one float key that may be infinite) or 1."""
    clip = 0.01
    moves = _moves(tmp_path, {"grad_clip_norm": clip, "grad_clip_norm_type": norm_type})
    bound = 0.1 * clip
    for move in moves:
        assert norm(move) <= bound * 1.01
    assert all(norm(m) >= bound * 0.95 for m in moves), "every step's gradient is above the clip here"


# --------------------------------------------------------------------------- segmentation


def test_lraspp_mobilenet_trains_a_step_on_a_tiny_user_dataset_and_reports_dice(tmp_path):
    preset = write_preset(tmp_path / "p.toml", model={"arch": "lraspp_mobilenet_v3_large", "weights": "none",
                                                      "num_classes": 2},
                          data={"dataset": f"{UC}:segmentation", "kwargs": {"n": 4, "n_val": 2, "size": 32},
                                "batch_size": 4},
                          optimizer={"name": "SGD", "lr": 0.01}, train={"epochs": 1},
                          metrics=[{"name": "dice"}], checkpoint={"monitor": "val_dice"})
    out = run(preset)
    final = completed(out)
    assert final.step == 1
    (end,) = out.of(EpochEnd)
    assert list(end.metrics) == ["val_dice"] and finite(end.metrics["val_dice"]) and 0 <= end.metrics["val_dice"] <= 1
    assert end.val_acc is None and finite(end.val_loss)


# --------------------------------------------------------------------------- a model too big for the input

INCEPTION = {"model": {"arch": "inception_v3", "weights": "none"},
             "data": {"dataset": "digits", "image_size": 64, "batch_size": 4, "limit": 16}}
INCEPTION_SAYS = ("model.arch: the model cannot take a batch of (3, 3, 64, 64) float32: RuntimeError: Calculated"
                  " padded input size per channel: (2 x 2). Kernel size: (3 x 3). Kernel size can't be greater"
                  " than actual input size; check model.arch and the input size (data.image_size, data.channels,"
                  " data.flatten)")


def test_inception_v3_at_64_pixels_fails_in_the_start_up_check(tmp_path):
    """inception_v3 needs at least 75 x 75: the dry run on a real batch says so before any step."""
    from tui_trainer.errors import UserError
    from tui_trainer.run.launch import prepare

    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"), **INCEPTION)
    with pytest.raises(UserError) as info:
        prepare(preset)
    assert info.value.exit_code == 2 and str(info.value) == f"{preset}: {INCEPTION_SAYS}"
    assert not (tmp_path / "runs").exists()


def test_inception_v3_at_64_pixels_is_one_line_from_the_cli(tmp_path):
    from tests.conftest import run_cli

    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"), **INCEPTION)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(str(preset), "--no-ui", cwd=work, timeout=120,
                   env_extra={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert list(work.iterdir()) == []
    assert proc.stderr.splitlines() == [f"tui-trainer: error: {preset}: {INCEPTION_SAYS}"]


def test_a_list_of_two_samples_is_not_taken_for_train_and_val(tmp_path):
    from tui_trainer.errors import UserError
    from tui_trainer.run.launch import prepare

    preset = write_preset(tmp_path / "p.toml", data={"dataset": f"{UC}:two_samples"})
    with pytest.raises(UserError) as info:
        prepare(preset)
    assert info.value.key == "data.dataset", str(info.value)
    assert "tuple" in str(info.value) and "Dataset" in str(info.value)
