"""A run's [[metrics]] in every text output: the epoch log line, metric values, metrics.csv rows
(new files and a resumed run's older file), the epoch table's column plan, `ls`'s best column and
what RunView keeps."""

from __future__ import annotations

import csv

import pytest

from tests.helpers.factories import T0, epoch_end, run_started
from tui_trainer.engine import events as ev
from tui_trainer.run.catalog import BEST_WIDTH, best_text
from tui_trainer.run.rundir import METRIC_FIELDS, Recorder, RunDir, metric_fields
from tui_trainer.text.format import event_line, metric_text
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.losses import METRIC_WIDTH, metric_header, plan_table

METRICS = {"val_dice": 0.81234, "val_iou": 0.69}


def report(step: int, lrs=(0.1,)) -> ev.StepReport:
    return ev.StepReport(step=step, epoch=1, first_step=step, losses=(0.5,), lrs=tuple(lrs), samples_per_s=320.0,
                         eta_s=1.0, time=T0 + step)


# --------------------------------------------------------------------------- event_line


def test_epoch_line_names_every_metric_after_val_acc():
    line, level = event_line(epoch_end(3, metrics=METRICS, best=0.81234, monitor="val_dice", best_epoch=3),
                             run_started(monitor="val_dice"))
    assert line == ("epoch 3 done: train_loss 1.0000 val_loss 0.9000 val_acc 0.5000 val_dice 0.8123 val_iou 0.6900"
                    " | best val_dice 0.8123 @ epoch 3 | 0.4s val")
    assert level == "good"


def test_epoch_line_without_metrics_is_unchanged():
    line, _ = event_line(epoch_end(2, val_acc=None), run_started())
    assert line == "epoch 2 done: train_loss 1.0000 val_loss 0.9000 | best val_loss 0.9000 @ epoch 2 | 0.4s val"


def test_epoch_line_skips_a_metric_with_nothing_measured():
    line, _ = event_line(epoch_end(1, val_acc=None, metrics={"val_dice": None, "val_iou": 0.5}), run_started())
    assert "val_dice" not in line and "val_iou 0.5000" in line


# --------------------------------------------------------------------------- metric_text


@pytest.mark.parametrize("value, text", [
    (0.81234, "0.8123"), (0.5, "0.5000"), (1.0, "1.000"), (12.345, "12.35"), (1234.5, "1234"),
    (123456.7, "1.235e+05"), (None, "-"), (float("nan"), "nan"),
])
def test_metric_text_has_four_significant_digits(value, text):
    assert metric_text(value) == text


@pytest.mark.parametrize("value, text", [(123456.7, "1.235e5"), (1.2345e-5, "1.23e-5"), (-1.2345e-5, "-1.2e-5"),
                                         (-0.81234, "-0.8123"), (0.0001234, "0.00012")])
def test_metric_text_fits_a_column(value, text):
    assert metric_text(value, 7) == text and len(text) <= 7


# --------------------------------------------------------------------------- metrics.csv


def rows_of(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_csv_columns_of_a_plain_run_are_unchanged():
    assert metric_fields() == METRIC_FIELDS
    assert metric_fields(["val_dice", "val_iou"], 3) == [
        "time", "phase", "epoch", "step", "loss", "val_loss", "val_acc", "val_dice", "val_iou", "lr", "lr_1", "lr_2",
        "samples_per_s", "data_wait"]
    assert metric_fields(["val_acc", "val_dice", "val_dice"]) == metric_fields(["val_dice"])  # no column twice


def test_csv_has_a_column_per_metric_and_per_param_group(tmp_path):
    rd = RunDir(tmp_path)
    rec = Recorder(rd, ["val_dice", "val_iou"], groups=2)
    rec(report(1, lrs=(0.1, 0.01)))
    rec(epoch_end(1, metrics={"val_dice": 0.81234, "val_iou": None}))
    rec.close()
    fields, rows = rows_of(tmp_path / "metrics.csv")
    assert fields == metric_fields(["val_dice", "val_iou"], 2)
    assert rows[0]["phase"] == "train" and rows[0]["lr"] == "0.1" and rows[0]["lr_1"] == "0.01"
    assert rows[0]["val_dice"] == ""
    assert rows[1]["phase"] == "epoch" and rows[1]["val_dice"] == "0.81234" and rows[1]["val_iou"] == ""
    assert rows[1]["val_acc"] == "0.5" and rows[1]["lr"] == "" and rows[1]["lr_1"] == ""


OLD_FIELDS = ["time", "phase", "epoch", "step", "loss", "val_loss", "val_acc", "lr", "samples_per_s"]  # before data_wait


def test_a_resumed_run_keeps_an_old_files_header(tmp_path):
    old = ",".join(OLD_FIELDS) + "\r\n1.000,train,1,1,0.5,,,0.1,320.0\r\n"
    (tmp_path / "metrics.csv").write_text(old, encoding="utf-8", newline="")
    rec = Recorder(RunDir(tmp_path), ["val_dice"], groups=2)  # this run would have made more columns
    rec(report(2, lrs=(0.1, 0.01)))
    rec(epoch_end(1, metrics={"val_dice": 0.8}))
    rec.close()
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as f:
        text = f.read()
    assert text.startswith(old)  # the header and the rows already there are untouched
    fields, rows = rows_of(tmp_path / "metrics.csv")
    assert fields == OLD_FIELDS and len(rows) == 3
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as f:
        assert all(len(row) == len(OLD_FIELDS) for row in csv.reader(f))  # well-formed: no extra values (data_wait)
    assert rows[1]["lr"] == "0.1" and rows[2]["val_acc"] == "0.5" and rows[2]["loss"] == "1"


def test_a_resumed_run_fills_the_metric_columns_of_its_own_file(tmp_path):
    rec = Recorder(RunDir(tmp_path), ["val_dice"], groups=2)
    rec(epoch_end(1, metrics={"val_dice": 0.7}))
    rec.close()
    rec = Recorder(RunDir(tmp_path))  # resumed: what it is told does not matter, the file's header does
    rec(epoch_end(2, metrics={"val_dice": 0.8}))
    rec(report(9, lrs=(0.1, 0.02)))
    rec.close()
    fields, rows = rows_of(tmp_path / "metrics.csv")
    assert fields == metric_fields(["val_dice"], 2)
    assert [r["val_dice"] for r in rows] == ["0.7", "0.8", ""] and rows[2]["lr_1"] == "0.02"


# --------------------------------------------------------------------------- the epoch table's plan


def test_a_run_without_metrics_gets_todays_table():
    plan = plan_table(44, True, [], "val_loss")
    assert (plan.gap, plan.epoch_width, plan.marker, plan.acc, plan.metrics, plan.hidden) == (
        2, 6, "  ★ best", True, (), 0)


def test_all_metrics_when_they_fit():
    plan = plan_table(76, True, ["val_dice", "val_iou", "val_f1"], "val_loss")
    assert plan.metrics == ("val_dice", "val_iou", "val_f1") and plan.hidden == 0 and plan.width <= 76


def test_narrow_keeps_the_monitored_metric_and_counts_the_rest():
    names = ["val_dice", "val_iou", "val_f1", "val_precision"]
    plan = plan_table(44, True, names, "val_f1")
    assert "val_f1" in plan.metrics and plan.hidden == len(names) - len(plan.metrics) > 0
    assert plan.width <= 44 and plan.header_width <= 44


def test_builtin_monitors_are_never_metric_columns():
    plan = plan_table(120, True, ["val_acc", "val_dice"], "val_acc")
    assert plan.metrics == ("val_dice",)


def test_metric_header_is_cut_to_the_column():
    assert metric_header("val_dice") == "dice"
    assert metric_header("val_multiclass_f1_score") == "multic…" and len(metric_header("val_" + "x" * 30)) == METRIC_WIDTH


# --------------------------------------------------------------------------- ls


@pytest.mark.parametrize("monitor", ["val_loss", "val_dice", "val_multiclass_f1_score", "val_" + "x" * 40])
def test_best_column_fits(monitor):
    text = best_text(monitor, 0.81234)
    assert len(text) <= BEST_WIDTH and text.endswith(" 0.8123")


def test_best_column_abbreviates_sensibly():
    assert best_text("val_loss", 0.5) == "val_loss 0.5000"
    assert best_text("val_multiclass_f1_score", 0.81234) == "mult…f1_score 0.8123"


# --------------------------------------------------------------------------- RunView


def test_view_keeps_metric_names_in_order_and_whether_acc_was_seen():
    v = RunView()
    v.apply(epoch_end(1, val_acc=None, metrics={"val_dice": 0.5}))
    assert v.metric_names == ["val_dice"] and not v.has_val_acc
    v.apply(epoch_end(2, metrics={"val_iou": 0.5, "val_dice": 0.6}))
    assert v.metric_names == ["val_dice", "val_iou"] and v.has_val_acc


def test_view_metric_names_are_bounded():
    v = RunView()
    for epoch in range(1, 4):
        v.apply(epoch_end(epoch, metrics={f"val_m{epoch}_{i}": 0.5 for i in range(40)}))
    assert len(v.metric_names) == RunView.MAX_METRICS
