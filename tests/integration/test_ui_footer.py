"""The footer at 80x24: the keys a user needs most (pause, stop, help, save, LR,
the layer toggle) are all on screen, none cut off at the right edge, whichever pane has focus;
and every key the footer names has its full meaning in the help screen."""

from __future__ import annotations

import asyncio

from textual.widgets import Footer

from tests.helpers.pilot import until
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink
from tui_trainer.ui.widgets.help import KEYS

APP_KEYS = {"p Pause", "q Stop", "? Help", "s Save", "l LR lower", "L LR undo"}


class ViewerLink(ReplayLink):
    remote = True  # as an attached viewer's link: `d` (detach) is shown too


def footer_items(app: TrainerApp) -> list[tuple[str, object]]:
    """(text as drawn, region) of each key in the footer."""
    footer = app.screen.query_one(Footer)
    return [(str(key.render()).strip(), key.region) for key in footer.query("FooterKey")]


def shown(app: TrainerApp) -> set[str]:
    """The footer keys drawn whole on the bottom line of the screen."""
    width, height = app.size
    return {text for text, region in footer_items(app)
            if region.width > 0 and region.x >= 0 and region.right <= width and region.y == height - 1}


def assert_all_fit(app: TrainerApp) -> None:
    width = app.size.width
    cut = [text for text, region in footer_items(app) if region.right > width]
    assert not cut, f"cut off at {width} columns: {cut}"


def test_footer_fits_80_columns_with_each_pane_focused():
    app = TrainerApp(ReplayLink([]))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "space Freeze" in shown(app), "footer with the layer pane's keys")
            assert APP_KEYS | {"space Freeze"} <= shown(app)
            assert_all_fit(app)
            await pilot.press("5")  # the log pane, focused
            await until(pilot, lambda: "space Freeze" not in shown(app) and APP_KEYS <= shown(app),
                        "footer with the app's keys only")
            assert_all_fit(app)

    asyncio.run(scenario())


def test_footer_fits_80_columns_for_a_viewer():
    app = TrainerApp(ViewerLink([]))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "d Detach" in shown(app), "footer with detach")
            assert APP_KEYS | {"space Freeze", "d Detach"} <= shown(app)
            assert_all_fit(app)

    asyncio.run(scenario())


def test_short_footer_labels_have_their_full_meaning_in_help():
    app = TrainerApp(ReplayLink([]))
    in_help = {part.strip() for key, _ in KEYS for part in key.split("/")}

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: "space Freeze" in shown(app), "footer")
            for text, _ in footer_items(app):
                assert text.split()[0] in in_help, f"footer key {text!r} is not in the help screen"

    asyncio.run(scenario())
