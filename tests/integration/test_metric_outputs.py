"""A run's [[metrics]] where people look: the loss pane's epoch table in a real Textual app at
80x24 and 120x40 (and at the width the app gives the pane at 120x40), `tui-trainer ls`, and
TensorBoard."""

from __future__ import annotations

import asyncio

import pytest
from textual.app import App
from textual.widgets import Static

from tests.helpers.factories import T0, epoch_end, run_started
from tui_trainer.engine import events as ev
from tui_trainer.run.catalog import BEST_WIDTH, format_runs, list_runs
from tui_trainer.run.launch import TensorBoardSink
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.losses import LossPane

TODAY_HEADER = f"{'epoch':>6}  {'train':>7}  {'val loss':>8}  {'val acc':>7}"


def fed(names=("val_dice", "val_iou"), monitor="val_dice", acc=True, epochs=3) -> RunView:
    view = RunView()
    view.apply(run_started(monitor=monitor))
    for epoch in range(1, epochs + 1):
        metrics = {name: 0.81234 - 0.1 * i + 0.01 * epoch for i, name in enumerate(names)}
        view.apply(epoch_end(epoch, val_acc=0.5 + 0.1 * epoch if acc else None, metrics=metrics, monitor=monitor,
                             value=metrics.get(monitor, 0.9), best=metrics.get(monitor, 0.9),
                             improved=epoch != 2, best_epoch=epoch if epoch != 2 else 1))
    return view


class PaneApp(App):
    """One LossPane, bordered and padded as in the app; `width`: the pane's (default: the screen's)."""

    def __init__(self, view: RunView, width: int | None = None):
        super().__init__()
        self.view = view
        self.pane_width = width

    def compose(self):
        yield LossPane(id="loss")

    def on_mount(self) -> None:
        pane = self.query_one(LossPane)
        pane.styles.border = ("round", "white")
        pane.styles.padding = (0, 1)
        if self.pane_width is not None:
            pane.styles.width = self.pane_width


def table(view: RunView, size: tuple[int, int], width: int | None = None) -> tuple[list[str], list[str], int]:
    """(the table's lines as drawn, the lines on screen, the pane's content width)."""

    async def scenario():
        app = PaneApp(view, width)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            pane = app.query_one(LossPane)
            pane.draw(view, "loss")
            await pilot.pause()
            static = app.query_one("#loss-epochs", Static)
            screen = [static.render_line(y).text for y in range(static.size.height)]
            return static.content.plain.split("\n"), screen, pane.size.width

    return asyncio.run(scenario())


def check_fits(lines: list[str], screen: list[str], width: int) -> None:
    assert max(len(line) for line in lines) <= width, lines
    assert [s.rstrip() for s in screen[:len(lines)]] == [line.rstrip() for line in lines]  # nothing wrapped


@pytest.mark.parametrize("size, width, content", [((80, 24), None, 76), ((120, 40), None, 116), ((120, 40), 48, 44)])
def test_pane_shows_two_metrics(size, width, content):
    lines, screen, pane_width = table(fed(), size, width)
    assert pane_width == content
    check_fits(lines, screen, pane_width)
    header = lines[0].split()
    assert "dice" in header and ("iou" in header or header[-1] in ("more", "+1"))
    assert "0.8423" in lines[3]  # epoch 3's dice, 4 significant digits, no percent
    assert "80.0%" in lines[3]  # accuracy stays a percent
    assert "★" in lines[1] and "★" not in lines[2]


@pytest.mark.parametrize("size, width", [((80, 24), None), ((120, 40), 48)])
def test_pane_drops_metrics_from_the_right_but_keeps_the_monitored_one(size, width):
    names = ("val_dice", "val_iou", "val_precision", "val_recall", "val_specificity", "val_multiclass_f1_score")
    lines, screen, pane_width = table(fed(names, monitor="val_multiclass_f1_score"), size, width)
    check_fits(lines, screen, pane_width)
    header = lines[0]
    assert "multic…" in header and ("dice" in header) == (pane_width > 44)  # 44: only the monitored one fits
    if pane_width == 76:
        assert header.split()[-2:] == ["+2", "more"] and "specif…" not in header  # the rightmost others went
    else:
        assert header.split()[-1] == "+5"
    assert "0.3223" in lines[1]  # the monitored metric's values
    assert "best val_multiclass_f1_score" in lines[-1]


def test_pane_shows_every_metric_when_wide():
    names = ("val_dice", "val_iou", "val_precision", "val_multiclass_f1_score")
    lines, screen, pane_width = table(fed(names), (120, 40))
    check_fits(lines, screen, pane_width)
    assert lines[0].split()[-4:] == ["dice", "iou", "precis…", "multic…"]
    assert "more" not in lines[0]


def test_regression_run_has_no_empty_acc_column():
    lines, screen, pane_width = table(fed(("val_mae",), monitor="val_loss", acc=False), (80, 24))
    check_fits(lines, screen, pane_width)
    assert "val acc" not in lines[0] and "mae" in lines[0] and "%" not in "".join(lines)


def test_run_without_metrics_looks_as_before():
    lines, _, _ = table(fed((), monitor="val_loss"), (120, 40), 48)
    assert lines[0] == TODAY_HEADER
    assert lines[1] == f"{1:>6}  {'1.0000':>7}  {'0.9000':>8}  {'60.0%':>7}  ★ best"
    assert lines[2] == f"{2:>6}  {'1.0000':>7}  {'0.9000':>8}  {'70.0%':>7}"


# --------------------------------------------------------------------------- ls


def write_run(path, monitor: str, best: float) -> None:
    path.mkdir(parents=True)
    events = [
        run_started(monitor=monitor, run_dir=str(path), run_name=path.name),
        epoch_end(1, val_acc=None, monitor=monitor, value=best, best=best, metrics={monitor: best, "val_iou": 0.5}),
        ev.Finished("completed", 4, 1, 3.0, 0, "done", best=best, best_epoch=1, time=T0 + 5),
    ]
    (path / "events.jsonl").write_text("".join(e.json_line + "\n" for e in events), encoding="utf-8")


def test_ls_shows_a_metric_monitor_and_abbreviates_a_long_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short paths: the run column holds them
    write_run(tmp_path / "runs" / "seg-1", "val_dice", 0.81234)
    write_run(tmp_path / "runs" / "cls-1", "val_multiclass_f1_score", 0.7)
    runs = list_runs("runs")
    assert {r.monitor for r in runs} == {"val_dice", "val_multiclass_f1_score"}
    lines = format_runs(runs, "runs").splitlines()
    header = lines[0]
    end = header.index("best") + len("best")  # the best column is right-aligned to here
    for line in lines[1:]:
        assert line[end:] == "  -"  # attach: nothing lives, and the column did not move
    best = {line.split()[0].rsplit("/", 1)[-1]: line[end - BEST_WIDTH:end].strip() for line in lines[1:]}
    assert best == {"seg-1": "val_dice 0.8123", "cls-1": "mult…f1_score 0.7000"}


# --------------------------------------------------------------------------- TensorBoard


class FakeWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_tensorboard_gets_each_metric_by_monitor():
    writer = FakeWriter()
    sink = TensorBoardSink(writer)
    sink(epoch_end(2, metrics={"val_dice": 0.8, "val_iou": None}))
    assert writer.scalars == [("epoch/train_loss", 1.0, 2), ("epoch/val_loss", 0.9, 2), ("epoch/val_acc", 0.5, 2),
                              ("epoch/val_dice", 0.8, 2)]
