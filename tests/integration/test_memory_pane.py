"""The Memory pane and the header's input wait, fed fixed histories (tests/helpers/machine.py: no
live trainer, no clock, no psutil): snapshots of the pane on a CPU at the sizes the app gives it
(42x11 at 120x40, 42x18 at 80x24) and on a GPU, its text at the sizes where rows run out, and the
header's `data 34%` (on an orange ground above 20%). Update with --snapshot-update."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from pathlib import Path

import pytest
from rich.color import Color
from textual.app import App

from tests.helpers.factories import T0
from tests.helpers.history import history
from tests.helpers.machine import machine_run
from tests.helpers.pilot import until
from tui_trainer.engine import events as ev
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets import memory
from tui_trainer.ui.widgets.header import RunHeader
from tui_trainer.ui.widgets.memory import MemoryPane

TCSS = Path(memory.__file__).parent.parent / "app.tcss"
ORANGE = Color.parse("dark_orange").get_truecolor().hex


class PaneApp(App):
    """The header and the Memory pane alone, styled by the app's own CSS, the pane as tall as the app
    makes it at 120x40 (13 rows with its border) unless told: what the other panes draw cannot move
    this snapshot."""

    CSS_PATH = TCSS

    def __init__(self, events: list[ev.Event], rows: int = 13):
        super().__init__()
        self.view = RunView()
        for e in events:
            self.view.apply(e)
        self.rows = rows

    def compose(self):
        yield RunHeader(id="header")
        yield MemoryPane(id="memory", classes="pane")

    def on_mount(self) -> None:
        self.query_one("#memory").styles.height = self.rows
        self.call_after_refresh(self.draw)

    def draw(self) -> None:
        self.query_one(RunHeader).draw(self.view, "header")
        self.query_one(MemoryPane).draw(self.view, "memory")


async def settle(pilot):
    await pilot.pause(0.3)
    await until(pilot, lambda: pilot.app.query_one(MemoryPane).size.height > 0, "the pane laid out")
    pilot.app.draw()
    await pilot.pause(0.2)


def pane_lines(app) -> list[str]:
    pane = app.query_one("#memory")
    region = pane.content_region
    lines = ["".join(s.text for s in strip) for strip in app.screen._compositor.render_strips()]
    return [line[region.x:region.right].rstrip() for line in lines[region.y:region.bottom]]


def sync(test):
    """An async test run to its end by asyncio (as test_ui_pilot does: no async plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


# --------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("rows", [13, 20], ids=["120x40", "80x24"])
def test_cpu_pane(snap_compare, rows):
    assert snap_compare(PaneApp(machine_run(), rows), terminal_size=(100, rows + 2), run_before=settle)


def test_gpu_pane(snap_compare):
    assert snap_compare(PaneApp(machine_run(gpu=True), 20), terminal_size=(100, 22), run_before=settle)


# --------------------------------------------------------------------------- what the rows say


@sync
async def test_cpu_rows_at_the_sizes_the_app_gives():
    app = PaneApp(machine_run())
    async with app.run_test(size=(100, 15)) as pilot:
        await settle(pilot)
        lines = pane_lines(app)
    said = [line for line in lines if line[:1].isalpha()]  # the rest are charts
    assert [line.split()[0] for line in said] == ["process", "process", "host", "waiting", "history:"], lines
    assert said[0].endswith("1.1 GiB") and "of 2 cores" in said[1] and said[2].endswith("of 16.0 GiB")
    assert said[3].endswith(" 3%") and said[4].startswith("history: last 0:44"), "90 samples half a second apart"
    assert len(lines) == 11 and lines[-1] == said[-1], "the 11 rows used, the spare ones by the first charts"
    assert [lines.index(line) for line in said] == [0, 3, 6, 8, 10]
    assert all(len(line) <= 42 for line in lines)
    async with PaneApp(machine_run(), rows=9).run_test(size=(100, 11)) as pilot:  # 7 rows: one a track
        await settle(pilot)
        short = pane_lines(pilot.app)
    assert [line.split()[0] for line in short[:4]] == ["RSS", "CPU", "host", "data"], short
    assert short[4].startswith("history:")


@sync
async def test_gpu_rows_give_way_from_the_least_telling():
    async with PaneApp(machine_run(gpu=True), rows=9).run_test(size=(100, 11)) as pilot:
        await settle(pilot)
        lines = pane_lines(pilot.app)
    assert lines[0].startswith("GPU cuda:0") and lines[1].startswith("allocated ━")
    assert [line.split()[0] for line in lines[4:7]] == ["allocated", "data", "GPU"], lines


@sync
async def test_a_replay_without_the_new_numbers_shows_rss_alone():
    app = TrainerApp(ReplayLink(history()))  # an events.jsonl of before: RSS only, no input wait
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        lines = pane_lines(app)
        header = "".join(s.text for s in app.screen._compositor.render_strips()[0])
    assert lines[0].startswith("process RSS"), lines
    assert not any(line.startswith(("process CPU", "waiting")) for line in lines)
    assert "data " not in header


# --------------------------------------------------------------------------- the header


def last_report(data_wait: float | None) -> list[ev.Event]:
    events = history()
    last = max(i for i, e in enumerate(events) if isinstance(e, ev.StepReport))
    events[last] = dataclasses.replace(events[last], data_wait=data_wait, time=T0 + 10_000)
    return events


def header_segments(app) -> list:
    return list(app.screen._compositor.render_strips()[0])


@pytest.mark.parametrize("wait, text, loud", [(0.34, "data 34%", True), (0.05, "data 5%", False)])
@sync
async def test_the_header_shows_the_input_wait(wait, text, loud):
    app = TrainerApp(ReplayLink(last_report(wait)))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        segments = header_segments(app)
    line = "".join(s.text for s in segments)
    assert text in line and line.index(text) > line.index("samples/s"), line
    grounds = {s.style.bgcolor.name for s in segments if text in s.text and s.style and s.style.bgcolor}
    assert (grounds == {ORANGE}) is loud, grounds


@sync
async def test_the_header_says_nothing_of_an_unmeasured_wait():
    app = TrainerApp(ReplayLink(last_report(None)))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        line = "".join(s.text for s in header_segments(app))
    assert "samples/s" in line and "data" not in line


@sync
async def test_a_narrow_header_keeps_the_wait_and_the_eta():
    app = TrainerApp(ReplayLink(last_report(0.34)))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        line = "".join(s.text for s in header_segments(app))
    assert "812/s" in line and "data 34%" in line and "ETA" in line, line


def test_narrow_app_gives_the_pane_the_whole_width(snap_compare):
    """80x24, key 4: the Memory pane alone in the app (header, tabs and footer around it)."""

    async def memory_pane(pilot):
        await pilot.press("4")
        await pilot.pause(0.3)
        await until(pilot, lambda: not pilot.app.redraw_pending, "every pane drawn")
        await pilot.pause(0.2)

    assert snap_compare(TrainerApp(ReplayLink(machine_run())), terminal_size=(80, 24), run_before=memory_pane)


@pytest.mark.parametrize("epochs, says", [(5, "epoch 3/5  step 120 "), (0, "epoch 3  step 120 ")])
@sync
async def test_the_header_of_a_run_of_unknown_length_shows_no_total_and_no_bar(epochs, says):
    """A loop over a loader with no len (total_steps 0), or without run.epochs (epochs 0 too): the
    step alone, not "step 120/0" and a bar at 12000%."""
    events = history()
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.RunStarted))
    events[first] = dataclasses.replace(events[first], total_steps=0, steps_per_epoch=0, epochs=epochs)
    app = TrainerApp(ReplayLink(events))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        second = "".join(s.text for s in app.screen._compositor.render_strips()[1])
    assert says in second and "%" not in second and "/0" not in second, second


@sync
async def test_the_lr_pane_of_a_run_of_unknown_length_draws_its_history_and_breaks_its_note_between_words():
    """No plan (a loader with no len): the x axis grows with the run, so the LR history is drawn (it
    was drawn on 0..1, off the chart), and the note breaks between words."""
    events = history()
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.RunStarted))
    s = events[first]
    plan = ev.LrPlan(s.plan.groups, (0,), tuple((lrs[0],) for lrs in s.plan.lrs), 0, True,
                     "not plannable: the loader has no length")
    events[first] = dataclasses.replace(s, total_steps=0, steps_per_epoch=0, plan=plan)
    app = TrainerApp(ReplayLink(events))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.redraw_pending, "drawn")
        pane = app.query_one("#lr-plot")
        region = pane.content_region
        lines = ["".join(s.text for s in strip) for strip in app.screen._compositor.render_strips()]
        plot = [line[region.x:region.right] for line in lines[region.y:region.bottom]]
    text = "\n".join(plot)
    assert "length)" in text and "leng\n" not in text, text
    dots = sum(1 for line in plot[3:-2] for ch in line.split("┤", 1)[-1] if "\u2801" <= ch <= "\u28ff")
    assert dots > 10, text  # the "actual" line across the chart
