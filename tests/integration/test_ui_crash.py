"""A crash of the TUI itself (a bug in a pane) ends the run as cleanly as `q` would: the engine
stops after its step and saves, the traceback is on the terminal after Textual restored it and in
events.jsonl, and the process exits 1 (it used to exit 0: the exit code came from the engine's
final event, and `run_app` swallowed the app's failure).

The real CLI on a pseudo-terminal that is its controlling terminal. The bug is planted by a
callback (`BreakTheHeader`, below; it runs inside the CLI's process): after step K every draw of
the header raises, as a pane with a bug would. Textual catches that in its timer, exits the app
and prints its traceback; `App.run()` returns normally.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from tests.helpers.proc import Cli
from tests.helpers.runs import load_checkpoint, of_kind, read_events, write_preset

K = 3
ALT_SCREEN_OFF = "\x1b[?1049l"  # Textual leaves the alternate screen: the terminal is restored


class BreakTheHeader:
    """A preset callback: after step `at`, the header pane's draw raises; then it holds the engine
    until `go_file` exists, so the run cannot end before the monitor has crashed."""

    def __init__(self, at: int = K, ready_file: str = "ready", go_file: str = "go", wait_s: float = 120.0):
        self.at, self.ready_file, self.go_file, self.wait_s = at, ready_file, go_file, wait_s

    def on_event(self, event, control) -> None:
        from tui_trainer.engine.events import StepReport
        from tui_trainer.ui.widgets.header import RunHeader

        if not isinstance(event, StepReport) or event.step != self.at:
            return

        def draw(pane, view, what) -> None:
            raise RuntimeError("header exploded")

        RunHeader.draw = draw
        Path(self.ready_file).write_text(str(event.step))
        deadline = time.monotonic() + self.wait_s
        while not Path(self.go_file).exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def _await_text(run: Cli, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.text:
        assert run.proc.poll() is None or text in run.text, run.text[-3000:]
        assert time.monotonic() < deadline, run.text[-3000:]
        time.sleep(0.02)


def test_ui_crash_saves_records_and_exits_1(tmp_path):
    preset = write_preset(tmp_path / "crash.toml", train={"epochs": 2, "log_every": 1},
                          callbacks=[{"target": "tests.integration.test_ui_crash:BreakTheHeader"}])
    run = Cli([str(preset), "--run-dir", "run"], tmp_path, tty=True, env={"TERM": "xterm-256color"})
    try:
        run.wait_for_file(tmp_path / "ready")
        _await_text(run, "header exploded")  # the app crashed and Textual printed its traceback
        (tmp_path / "go").touch()  # only now may the engine go on: it must see the stop
        code = run.wait(timeout=120)
    finally:
        (tmp_path / "go").touch()
        run.close()
    out = run.text
    assert code == 1, out[-3000:]

    assert ALT_SCREEN_OFF in out
    after = out[out.rfind(ALT_SCREEN_OFF):]  # what the terminal shows once the app has left
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", after)  # Textual's traceback is in colour
    assert "Traceback" in after and "RuntimeError: header exploded" in after, after[-3000:]
    assert "the monitor crashed" in after, after[-3000:]
    assert after.index("Traceback") < after.rindex("the monitor crashed")  # our summary comes last

    events = read_events(tmp_path / "run")
    kinds = [e["kind"] for e in events]
    crash = [e for e in of_kind(events, "RunWarning") if "the monitor crashed" in e["message"]]
    assert len(crash) == 1, kinds
    assert "RuntimeError: header exploded" in crash[0]["message"] and 'File "' in crash[0]["message"]
    assert kinds[-1] == "Finished" and kinds.count("Finished") == 1 and "Failed" not in kinds
    assert kinds.index("RunWarning", events.index(crash[0])) < kinds.index("Finished")
    finished = events[-1]
    assert finished["status"] == "stopped" and finished["step"] == K, finished  # stopped after its step
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == K
    assert not (tmp_path / "run" / "control.sock").exists()


def test_how_textual_hands_over_a_pane_crash(monkeypatch):
    """Textual 8 catches an exception in a timer (the tick draws the panes) itself: it sets
    `return_code` 1 and `_exception`, exits the app, and `App.run()` returns normally. `ui_crash`
    finds it there (the test above depends on it; textual is pinned < 9), unless the terminal had
    gone away: then the hang-up decides the ending, as before."""
    asyncio.run(_pane_crash(monkeypatch))


async def _pane_crash(monkeypatch):
    from tests.helpers.history import history
    from tui_trainer.ui.app import TrainerApp
    from tui_trainer.ui.launch import ui_crash
    from tui_trainer.ui.link import ReplayLink
    from tui_trainer.ui.widgets.memory import MemoryPane

    def draw(pane, view, what) -> None:
        raise RuntimeError("memory exploded")

    monkeypatch.setattr(MemoryPane, "draw", draw)
    app = TrainerApp(ReplayLink(history()))
    with pytest.raises(RuntimeError, match="memory exploded"):  # run_test re-raises what Textual caught
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                if app.return_code is not None:
                    break
                await pilot.pause(0.05)
    assert app.return_code == 1
    crash = ui_crash(app)
    assert isinstance(crash, RuntimeError) and str(crash) == "memory exploded"
    app.terminal_gone = True
    assert ui_crash(app) is None
