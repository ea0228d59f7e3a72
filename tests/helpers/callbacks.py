"""A scripted "user" for subprocess tests: a real tui-trainer callback (preset `[[callbacks]]`)
that acts at exact steps, so tests assert on step numbers instead of wall-clock time.

    [[callbacks]]
    target = "tests.helpers.callbacks:Script"
    freeze_at = 3          # send SetTrainable(freeze, False) after step 3
    scale_at = 5           # send ScaleLr(factor) after step 5
    signal_at = 10         # os.kill(own pid, signal) after step 10 (count times)
    wait_at = 7            # after step 7: write ready_file, block until go_file exists
    wait_again_at = 9      # after step 9: block until go_file + "2" exists (a second hold)

Steps are the StepReport steps (set train.log_every = 1 for exact steps).
"""

from __future__ import annotations

import os
import signal as _signal
import time
from pathlib import Path

from tui_trainer.engine.commands import ScaleLr, SetTrainable
from tui_trainer.engine.events import StepReport


class Script:
    def __init__(self, freeze_at: int = 0, freeze: str = "0", scale_at: int = 0, factor: float = 0.5,
                 signal_at: int = 0, signal: str = "SIGINT", count: int = 1, wait_at: int = 0,
                 ready_file: str = "ready", go_file: str = "go", wait_s: float = 120.0,
                 wait_again_at: int = 0):
        self.freeze_at, self.freeze = freeze_at, freeze
        self.scale_at, self.factor = scale_at, factor
        self.signal_at, self.signum, self.count = signal_at, getattr(_signal, signal), count
        self.wait_at, self.ready_file, self.go_file, self.wait_s = wait_at, ready_file, go_file, wait_s
        self.wait_again_at = wait_again_at

    def on_event(self, event, control) -> None:
        if not isinstance(event, StepReport):
            return
        step = event.step
        if step == self.freeze_at:
            control.send(SetTrainable((self.freeze,), False))
        if step == self.scale_at:
            control.send(ScaleLr(self.factor))
        if step == self.signal_at:
            for _ in range(self.count):
                os.kill(os.getpid(), self.signum)  # the handler runs before os.kill returns
        if step == self.wait_at:
            Path(self.ready_file).write_text(f"{step} {os.getpid()}")
            self._hold(self.go_file)
        if step == self.wait_again_at:
            self._hold(self.go_file + "2")

    def _hold(self, go_file: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while not Path(go_file).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
