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


def machine_run(reports: int = 90, gpu: bool = False) -> list[ev.Event]:
    """The fixed history's start (run started, running), then `reports` reports of 2 steps, each
    with a memory sample half a second apart: enough to fill the Memory pane's charts. RSS grows and
    drops once, CPU use swings, the host's memory shrinks, the input wait has a stretch above 20%;
    `gpu`: a CUDA device's allocator numbers and utilisation too."""
    out = []
    for e in history():
        if isinstance(e, ev.StepReport):
            break
        out.append(e)
    started = next(e for e in out if isinstance(e, ev.RunStarted))
    if gpu:
        out = [dataclasses.replace(e, device="cuda:0", device_name="NVIDIA H200", amp="bf16")
               if isinstance(e, ev.RunStarted) else e for e in out]
    t0 = started.time
    for i in range(reports):
        step = 2 * (i + 1)
        memory = ev.MemorySample(
            "cuda:0" if gpu else "cpu", rss=int((0.9 + 0.004 * i - (0.15 if i > 60 else 0)) * G),
            cpu_percent=110.0 + 70 * math.sin(i / 5), cpu_cores=2,
            host_available=int((11.5 - 0.03 * i) * G), host_total=16 * G)
        if gpu:
            memory = dataclasses.replace(memory, allocated=int((30 + 0.2 * i) * G), reserved=50 * G,
                                         peak=int((38 + 0.2 * i) * G), total=141 * G,
                                         utilization=60.0 + 35 * math.cos(i / 6))
        wait = 0.34 if 10 <= i < 20 or 50 <= i < 65 else 0.05 + 0.03 * math.sin(i / 7)
        out.append(ev.StepReport(step, 1 + (step - 1) // started.steps_per_epoch, step - 1, (2.0 - 0.01 * i,) * 2,
                                 (0.001,), 812.5, 30.0, memory, data_wait=wait, time=t0 + 0.5 * i))
    return out
