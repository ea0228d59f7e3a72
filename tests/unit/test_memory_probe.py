"""The Memory pane's numbers: the probe's CPU use and host memory on this real process (psutil), their
way through the all_reduce's slots, and the bounded history the pane charts (ui/memory_history.py)."""

from __future__ import annotations

import math
import os
import time

import torch

from tests.helpers.factories import T0
from tui_trainer.engine import events as ev
from tui_trainer.engine import probes
from tui_trainer.engine.probes import MemoryProbe, pack, unpack
from tui_trainer.ui.memory_history import MachineHistory, columns, cpu_share

G = 2**30


def burn(cpu_seconds: float) -> None:
    """Spin until this process has used `cpu_seconds` more CPU time (a hang guard of a minute)."""
    start, deadline = time.process_time(), time.monotonic() + 60
    x = 0
    while time.process_time() - start < cpu_seconds and time.monotonic() < deadline:
        x += sum(range(1000))
    assert time.process_time() - start >= cpu_seconds, "the machine gave this test no CPU for a minute"


# --------------------------------------------------------------------------- the probe, for real


def test_a_real_process_has_rss_host_memory_and_cpu_use_within_its_cores():
    probe = MemoryProbe(torch.device("cpu"))
    burn(0.3)
    time.sleep(probes.HOST_EVERY_S)  # a new reading is due
    m = probe.read()
    cores = len(os.sched_getaffinity(0))
    assert m.device == "cpu" and m.rss > 0
    assert m.cpu_cores == cores
    assert m.host_total is not None and 0 < m.host_available <= m.host_total
    assert m.cpu_percent is not None and 0 < m.cpu_percent <= 100 * cores * 1.05, (m.cpu_percent, cores)
    assert m.allocated is None and m.total is None, "no device numbers on a CPU"


def test_cpu_use_is_measured_between_reads_and_not_more_often_than_every_half_second(monkeypatch):
    probe = MemoryProbe(torch.device("cpu"))
    time.sleep(probes.HOST_EVERY_S)
    first = probe.read()
    monkeypatch.setattr(probes, "HOST_EVERY_S", 3600.0)
    burn(0.2)
    second = probe.read()  # a rank reads at every report: the numbers of the last reading, no new one
    assert (second.cpu_percent, second.host_available) == (first.cpu_percent, first.host_available)
    assert second.rss > 0
    monkeypatch.setattr(probes, "HOST_EVERY_S", 0.0)
    third = probe.read()
    assert third.cpu_percent is not None and third.cpu_percent >= 0


# --------------------------------------------------------------------------- the slots of the all_reduce


def test_the_new_numbers_travel_in_each_ranks_slot():
    samples = [ev.MemorySample("cpu", rss=300 * 2**20 + r, cpu_percent=143.5 + r, cpu_cores=16,
                               host_available=(100 + r) * G, host_total=2000 * G) for r in range(3)]
    samples.append(ev.MemorySample("cuda:1", rss=5, allocated=7, reserved=9, peak=8, total=100, utilization=0.0,
                                   cpu_percent=0.0, cpu_cores=1, host_available=None, host_total=None))
    world = len(samples)
    summed = [sum(c) for c in zip(*(pack(s, r, world) for r, s in enumerate(samples)))]
    back = unpack(summed, world)
    assert back == tuple(samples)
    assert isinstance(back[0].cpu_percent, float) and isinstance(back[0].host_available, int)
    assert back[3].cpu_percent == 0.0 and back[3].host_available is None, "0 stays 0, unknown stays None"


def test_old_samples_without_the_new_numbers_still_load():
    old = {"device": "cpu", "rss": 5, "allocated": None, "reserved": None, "peak": None, "total": None,
           "utilization": None}
    report = ev.from_json({"kind": "StepReport", "time": T0, "step": 2, "epoch": 1, "first_step": 1,
                           "losses": [1.0], "lrs": [0.1], "samples_per_s": 10.0, "eta_s": None, "memory": old})
    assert report.memory == ev.MemorySample("cpu", rss=5) and report.memory.cpu_percent is None


# --------------------------------------------------------------------------- the history


def report(step: int, memory: ev.MemorySample | None = None, data_wait: float | None = None, steps: int = 10,
           at: float | None = None) -> ev.StepReport:
    return ev.StepReport(step=step, epoch=1, first_step=step - steps + 1, losses=(1.0,) * steps, lrs=(0.1,),
                         samples_per_s=1.0, eta_s=None, memory=memory, data_wait=data_wait,
                         time=T0 + (step if at is None else at))


def cpu(rss: int = 100, percent: float = 50.0) -> ev.MemorySample:
    return ev.MemorySample("cpu", rss=rss, cpu_percent=percent, cpu_cores=2, host_available=3 * G, host_total=8 * G)


def test_cpu_share_is_of_the_cores_the_process_may_use():
    assert cpu_share(cpu(percent=150.0)) == 75.0
    assert cpu_share(ev.MemorySample("cpu", rss=1)) is None


def test_a_row_per_sample_with_the_input_wait_of_the_reports_since_the_last_one():
    h = MachineHistory()
    assert not h.add(report(10, data_wait=0.1, steps=10, at=0.0))
    assert h.data_wait == 0.1, "the first figure shows at once"
    assert not h.add(report(40, data_wait=0.5, steps=30, at=0.3))
    assert h.add(report(50, cpu(rss=7, percent=100.0), data_wait=0.0, steps=10, at=0.5))
    row = h.rows[-1]
    assert math.isclose(row.data_wait, (0.1 * 10 + 0.5 * 30 + 0.0 * 10) / 50), "weighted by steps"
    assert h.data_wait == row.data_wait
    assert (row.rss, row.cpu, row.available, row.allocated) == (7, 50.0, 3 * G, None)
    assert h.add(report(60, cpu(), at=1.0))  # a sample with no report of the wait since: a gap, not a zero
    assert h.rows[-1].data_wait is None and h.data_wait == row.data_wait


def test_without_samples_the_wait_still_gets_rows():
    h = MachineHistory()
    assert not h.add(report(10, data_wait=0.3, at=0.0))
    assert not h.add(report(20, data_wait=0.3, at=1.0))
    assert h.add(report(30, data_wait=0.6, at=MachineHistory.ROW_EVERY_S))
    assert h.rows[-1].rss is None and math.isclose(h.rows[-1].data_wait, 0.4)
    assert not h.add(report(40, at=10.0)), "nothing to say: no row"
    assert not h.known("rss") and h.known("data_wait")


def test_the_history_is_bounded():
    h = MachineHistory()
    for i in range(3 * MachineHistory.MAX_ROWS):
        h.add(report(10 * i + 10, cpu(rss=i), data_wait=0.2, at=0.5 * i))
    assert len(h.rows) == MachineHistory.MAX_ROWS
    assert h.rows[-1].rss == 3 * MachineHistory.MAX_ROWS - 1
    assert h.span_s() == 0.5 * (MachineHistory.MAX_ROWS - 1)


def test_columns_keep_spikes_and_gaps():
    assert columns([1, 2, 3], 5) == [1, 2, 3], "fewer values than columns: one each"
    values = [0.0] * 100
    values[37] = 9.0
    assert max(columns(values, 10)) == 9.0, "a one-sample spike survives"
    assert min(columns([5.0] * 50 + [1.0] + [5.0] * 49, 10, keep=min)) == 1.0, "and a dip, where the low matters"
    assert columns([None] * 20 + [1.0] * 20, 4) == [None, None, 1.0, 1.0]
    assert len(columns(list(range(1000)), 42)) == 42 and columns(list(range(1000)), 42)[-1] == 999


def test_the_headline_wait_is_the_mean_of_the_last_few_seconds():
    h = MachineHistory()
    h.add(report(10, cpu(), data_wait=0.1, steps=10, at=0.0))
    h.add(report(40, cpu(), data_wait=0.5, steps=30, at=1.0))
    assert math.isclose(h.data_wait, (0.1 * 10 + 0.5 * 30) / 40), "steps-weighted over the window"
    h.add(report(50, cpu(), data_wait=0.2, steps=10, at=1.0 + MachineHistory.WAIT_WINDOW_S + 0.5))
    assert math.isclose(h.data_wait, 0.2), "older rows leave the window"
    assert [r.data_wait for r in h.rows] == [0.1, 0.5, 0.2], "the chart keeps each row's own figure"
