"""The fixed UI history (tests/helpers/history.py) with the machine's numbers the Memory pane and
the header show: every memory sample with the process's CPU use and the host's memory, and every
report with its input wait (deterministic: functions of the step, no clock, no psutil)."""

from __future__ import annotations

import dataclasses
import math

from tests.helpers.history import history
from tui_trainer.engine import events as ev

G = 2**30


def wait_at(step: int) -> float:
    """The input wait of the report at `step`: low, then a stretch above 20% (the loud colour)."""
    return 0.34 if 60 < step <= 100 else 0.05 + 0.03 * math.sin(step / 7)


def with_machine(events: list[ev.Event] | None = None, data_wait: bool = True) -> list[ev.Event]:
    out = []
    for e in history() if events is None else events:
        if isinstance(e, ev.StepReport):
            memory = e.memory
            if memory is not None:
                memory = dataclasses.replace(memory, cpu_percent=120.0 + 60 * math.sin(e.step / 9), cpu_cores=2,
                                             host_available=int((11.5 - e.step / 100) * G), host_total=16 * G)
            e = dataclasses.replace(e, memory=memory, data_wait=wait_at(e.step) if data_wait else None)
        out.append(e)
    return out
