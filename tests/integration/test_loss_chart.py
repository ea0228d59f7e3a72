"""The Loss pane's chart of the whole run in the app, fed a fixed history (no live trainer, no
clock): snapshots of the chart (linear and log), and Pilot: `m` cycles the metric the chart and
its title show, `g` toggles the log scale for losses. Update the snapshots with --snapshot-update."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.helpers.history import history
from tests.helpers.pilot import until
from tests.integration.test_ui_snapshots import fixed_tz, settle  # noqa: F401 (a fixture)
from tui_trainer.engine import events as ev
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink
from tui_trainer.ui.widgets.help import KEYS
from tui_trainer.ui.widgets.losses import LossPane


def chart_history() -> list[ev.Event]:
    """tests/helpers/history.py with a one-step loss spike at step 57 and a [[metrics]] entry (val_dice)."""
    out = []
    for event in history():
        if isinstance(event, ev.StepReport) and event.first_step <= 57 <= event.step:
            losses = list(event.losses)
            losses[57 - event.first_step] = 6.0
            event = dataclasses.replace(event, losses=tuple(losses))
        elif isinstance(event, ev.EpochEnd):
            event = dataclasses.replace(event, metrics={"val_dice": 0.5 + 0.1 * event.epoch})
        out.append(event)
    return out


def chart_text(app: TrainerApp) -> str:
    return str(app.query_one("#loss-legend").content) + "\n" + str(app.query_one("#loss-chart").content)


@pytest.mark.parametrize("keys", [("3",), ("3", "g")], ids=["linear", "log"])
def test_chart_snapshot(snap_compare, fixed_tz, keys):  # noqa: F811 (the fixture)
    """At 80x24 the Loss pane alone: the spike, the raw band under the smoothed line, val points."""
    app = TrainerApp(ReplayLink(chart_history()))

    async def show(pilot):
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=show)


def test_metric_key_cycles_the_chart_and_log_key_toggles_the_scale():
    app = TrainerApp(ReplayLink(chart_history()))

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one(LossPane)
            await until(pilot, lambda: "val loss" in chart_text(app) or "● val" in chart_text(app), "the chart")
            assert pane.border_title == "Loss · train loss"
            linear = chart_text(app)
            assert "⣿" in linear and "●" in linear
            seen = []
            for _ in range(4):
                await pilot.press("m")
                seen.append((pane.border_title, chart_text(app).split("\n")[0]))
            assert [title for title, _ in seen] == ["Loss · val loss", "Loss · val acc", "Loss · val_dice",
                                                    "Loss · train loss"]
            assert seen[0][1].startswith("━● val loss 0.5333") and seen[2][1].startswith("━● val_dice 0.8000")
            assert chart_text(app) == linear, "round the cycle: the train loss chart again"
            await pilot.press("g")
            assert pane.border_title == "Loss · train loss · log"
            log = chart_text(app)
            assert log != linear and log.split("\n")[0] == linear.split("\n")[0], "the same legend, another axis"
            await pilot.press("m", "m")  # val acc: a log scale is for losses only
            assert pane.border_title == "Loss · val acc"
            await pilot.press("m", "m", "g")
            assert pane.border_title == "Loss · train loss" and chart_text(app) == linear

    asyncio.run(scenario())


def test_keys_work_while_the_loss_pane_is_hidden_and_are_in_help():
    app = TrainerApp(ReplayLink(chart_history()))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:  # one pane at a time: the layers
            await settle(pilot)
            pane = app.query_one(LossPane)
            assert not pane.display
            await pilot.press("m")
            assert pane.title == "Loss · val loss"  # (and a notification says so)
            await pilot.press("3")
            await settle(pilot)
            assert app.query_one(LossPane).border_title == "Loss · val loss"
            assert chart_text(app).startswith("━● val loss")

    asyncio.run(scenario())
    assert {"m", "g"} <= {key for key, _ in KEYS}
