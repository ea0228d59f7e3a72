"""LayerShapes: a loop run's output shapes, which come after RunStarted (its first forward). The Layers
pane fills its output column without closing what the user opened, and an attached viewer gets the
shapes however long the run (the socket's replay keeps the latest). The loop side is in
test_loop_api.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from tests.helpers.history import history
from tests.helpers.pilot import until
from tui_trainer.engine import events as ev
from tui_trainer.run.server import MAX_OTHER, Replay
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink


def without_shapes() -> tuple[list[ev.Event], ev.RunStarted, int]:
    events = history()
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.RunStarted))
    started = events[first]
    bare = dataclasses.replace(started, layers=tuple(dataclasses.replace(r, out_shape=None) for r in started.layers))
    events[first] = bare
    return events, started, first


def table_text(app) -> str:
    table = app.query_one("#layer-table")
    region = table.content_region
    lines = ["".join(s.text for s in strip) for strip in app.screen._compositor.render_strips()]
    return "\n".join(line[region.x:region.right] for line in lines[region.y:region.bottom])


def test_the_layers_pane_fills_its_output_column_and_keeps_the_tree_as_opened():
    events, started, first = without_shapes()
    shapes = ev.LayerShapes(1, tuple(r.out_shape for r in started.layers))
    collapsed = started.layers[0].name  # a block the user closes before the shapes come

    async def scenario():
        app = TrainerApp(ReplayLink(events[:first + 1]))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: not app.redraw_pending, "drawn")
            table = app.query_one("#layer-table")
            before = table_text(app)
            table.expanded.discard(collapsed)
            table.rebuild()
            shown = list(table.shown)
            app.view.apply(shapes)
            app.view.dirty.add("layers")
            await until(pilot, lambda: table.rows_info is app.view.started.layers, "the shapes drawn")
            await pilot.pause(0.3)
            return before, table_text(app), shown, list(table.shown)

    before, after, shown, shown_after = asyncio.run(scenario())
    want = "×".join(map(str, started.layers[0].out_shape[1:]))
    assert want not in before and want in after, after
    assert shown_after == shown  # the closed block stays closed


def test_an_attached_viewer_gets_the_shapes_however_long_the_run():
    events, started, first = without_shapes()
    replay = Replay()
    for e in events[:first + 1]:
        replay.add(e)
    replay.add(ev.LayerShapes(1, tuple(r.out_shape for r in started.layers)))
    for i in range(MAX_OTHER + 10):  # a long run's other events (warnings, checkpoints, LR changes)
        replay.add(ev.RunWarning(i, f"warning {i}"))
    lines = replay.lines().decode().splitlines()
    assert sum('"kind":"LayerShapes"' in line for line in lines) == 1
    kinds = [line.split('"kind":"')[1].split('"')[0] for line in lines]
    assert kinds.index("RunStarted") < kinds.index("LayerShapes")
    shapes = ev.from_json(json.loads(lines[kinds.index("LayerShapes")]))
    assert shapes.shapes == tuple(r.out_shape for r in started.layers)
