"""The app's own small drawings: sizes are exact (a pane never wraps or scrolls) and the LR legend
stays on one line."""

from __future__ import annotations

import asyncio

import pytest

from tui_trainer.text.plot import braille_plot
from tui_trainer.ui.widgets.draw import spark
from tui_trainer.ui.widgets.lr_preview import _legend, thin


@pytest.mark.parametrize("width,height", [(44, 8), (30, 4), (100, 20)])
def test_braille_plot_fills_exactly_its_box(width, height):
    xs = list(range(200))
    plan = [0.1 * min(1, x / 20) for x in xs]
    actual = plan[:70]
    text = braille_plot([(xs, plan, "blue"), (xs[:70], actual, "green")], width, height, (0, 199), (0.0, 0.105),
                        marker=(70, "red"))
    lines = text.plain.split("\n")
    assert len(lines) == height
    assert all(len(line) == width for line in lines), [len(line) for line in lines]
    plot_rows = lines[:-1]  # the last line is the x axis
    # the "now" marker is one column, the same on every plot row that the curves do not cover
    columns = {line.index("│", 12) for line in plot_rows if "│" in line[12:]}
    assert len(columns) == 1
    assert any(ch not in " │┤" and not ch.isdigit() for ch in "".join(plot_rows)[12:])  # dots were drawn


def test_the_legend_is_one_line_when_it_fits_and_whole_entries_on_more_lines_when_not():
    items = [("plan default", "blue"), ("plan fc", "cyan"), ("re-planned", "orange1"), ("actual", "green3")]
    wide = _legend(items, "now", 120).plain
    assert "plan default" in wide and "\n" not in wide
    for width in (44, 30, 20):
        lines = _legend(items, "now", width).plain.split("\n")
        assert len(lines) > 1 and all(len(line) <= width for line in lines), (width, lines)
        words = " ".join(lines)
        assert "…" not in words and "plan " not in words  # shortened, then wrapped: never cut
        for label in ("default", "fc", "re-planned", "actual", "│ now"):
            assert label in words


def test_a_note_longer_than_the_pane_breaks_between_words():
    """"now (not plannable: the loader has no length)" in a 46-column pane: it read "...no leng" / "th)"."""
    now = "now (not plannable: the loader has no length)"
    for width in (44, 30, 20):
        lines = _legend([("actual", "green3")], now, width).plain.split("\n")
        assert all(len(line) <= width for line in lines), (width, lines)
        assert " ".join(line.strip(" │━") for line in lines).split() == ["actual", *now.split()]


def test_thin_keeps_the_last_point():
    xs, ys = thin(list(range(1000)), list(range(1000)), 50)
    assert len(xs) <= 52 and xs[-1] == 999 and ys[-1] == 999
    assert thin([1, 2], [3, 4], 50) == ([1, 2], [3, 4])


def test_memory_spark_scales_from_zero():
    line = spark([50.0, 100.0], 10)
    assert line == "▄█"  # half of the top is half a block, not the bottom (min-scaled would say ▁)


def test_layer_table_row_cache_does_not_grow_with_the_run():
    """Each statistics update changes every row; the table keeps one drawn strip per row, not one
    per value it ever showed (it used to: about 1 MiB per 100k steps on the footprint run)."""
    asyncio.run(_layer_table_cache())


async def _layer_table_cache():
    from tests.helpers.history import history
    from tui_trainer.ui.app import TrainerApp
    from tui_trainer.ui.link import ReplayLink
    from tui_trainer.ui.widgets.layers import LayerTable

    app = TrainerApp(ReplayLink(history()))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        table = app.query_one(LayerTable)
        rows = len(table.shown)
        drawn = set()
        for i in range(200):
            table.set_stats(tuple(0.1 * (i + 1) + r for r in range(rows)), tuple(1e-3 * (i + 1) for _ in range(rows)))
            for y in range(rows + 1):
                drawn.add(table.render_line(y).text)
        assert len(drawn) > 200  # the rows really were redrawn with new numbers
        assert len(table._strips) <= rows + 1
