"""Layout snapshots of the app at 120x40 and 80x24, fed a fixed metric history (no live trainer,
no clock): the real small CNN's layer table, a real planned OneCycle schedule, and a fixed run of
reports, epochs, a freeze, a manual LR cut and checkpoints (tests/helpers/history.py). Update with
--snapshot-update."""

from __future__ import annotations

import time

import pytest

from tests.helpers.history import history
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink

@pytest.fixture
def fixed_tz(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def settle(pilot):
    """Until every pane drew its data at its final size (panes redraw at 1-4 Hz each)."""
    await pilot.pause(0.3)
    deadline = time.monotonic() + 30  # a hang guard on a loaded machine, not a timing assertion
    while pilot.app.redraw_pending and time.monotonic() < deadline:
        await pilot.pause(0.1)
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_layout(snap_compare, fixed_tz, size):
    app = TrainerApp(ReplayLink(history()))
    assert snap_compare(app, terminal_size=size, run_before=settle)


def test_narrow_layout_shows_other_panes(snap_compare, fixed_tz):
    app = TrainerApp(ReplayLink(history()))

    async def lr_pane(pilot):
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=lr_pane)
