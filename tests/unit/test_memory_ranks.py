"""Issue 13, every rank's memory on rank 0's screen: the slots of the all_reduce (engine/probes.py
pack / unpack), the new event fields through JSON (and old events.jsonl without them), RunView,
the header's and the Memory pane's text helpers, the headless lines, and Trainer._report with a
stand-in for the other rank (the real 2-rank run is tests/integration/test_distributed_screen.py)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tests.helpers.factories import T0, run_started
from tui_trainer.engine import events as ev
from tui_trainer.engine import probes
from tui_trainer.engine.distributed import Dist
from tui_trainer.engine.probes import SLOT, pack, slot, unpack
from tui_trainer.run.headless import LineReporter
from tui_trainer.text.format import short_bytes
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.header import world_forms
from tui_trainer.ui.widgets.memory import rank_labels, short_hosts

G = 2**30
H200 = 150_121_938_944  # bytes of a real device's total: far below 2**53, exact in float64


def gpu(rank: int, util: float | None = 97.0) -> ev.MemorySample:
    return ev.MemorySample(f"cuda:{rank}", rss=2 * G + 4096 * rank + 1, allocated=37 * G + 12_345 + rank,
                           reserved=40 * G + rank, peak=45 * G + 7 + rank, total=H200, utilization=util)


def summed(samples) -> list[float]:
    """What the all_reduce gives every rank: the sum of every rank's pack."""
    world = len(samples)
    vectors = [pack(s, r, world) for r, s in enumerate(samples)]
    return [sum(column) for column in zip(*vectors)]


# --------------------------------------------------------------------------- pack / unpack


def test_pack_writes_one_slot_and_zeros_elsewhere():
    vector = pack(gpu(2), 2, 4)
    n = len(SLOT)
    assert len(vector) == 4 * n
    assert vector[:2 * n] == [0.0] * (2 * n) and vector[3 * n:] == [0.0] * n
    assert vector[2 * n] == 1.0, "the presence mark"


@pytest.mark.parametrize("world", [1, 2, 8])
def test_the_sum_of_every_ranks_pack_gives_back_every_sample_exactly(world):
    samples = [gpu(r, util=None if r % 2 else 50.0 + r) for r in range(world)]
    assert unpack(summed(samples), world) == tuple(samples)


@pytest.mark.parametrize("world", [1, 2, 8])
def test_every_ranks_slot_gathered_in_rank_order_gives_back_every_sample(world):
    """A CPU sync gathers each rank's own slot (Dist.gather_started): the slots one after another
    are the layout the sum of every rank's pack has."""
    samples = [gpu(r, util=None if r % 2 else 50.0 + r) for r in range(world)]
    gathered = [x for s in samples for x in slot(s)]
    assert gathered == summed(samples)
    assert unpack(gathered, world) == tuple(samples)


def test_cpu_samples_and_unknown_numbers_round_trip():
    samples = [ev.MemorySample("cpu", rss=300 * 2**20 + r) for r in range(3)]
    assert unpack(summed(samples), 3) == tuple(samples)
    odd = ev.MemorySample("cuda", rss=0, allocated=0, reserved=None, peak=0, total=None, utilization=0.0)
    assert unpack(summed([odd, odd]), 2) == (odd, odd), "no index, zeros and Nones stay what they were"


def test_a_sum_that_missed_a_rank_or_counted_one_twice_unpacks_to_nothing():
    samples = [gpu(r) for r in range(3)]
    missing = [sum(c) for c in zip(pack(samples[0], 0, 3), pack(samples[2], 2, 3))]
    assert unpack(missing, 3) == (), "a rank that sent nothing (a sum that did not happen: Dist.go_alone)"
    twice = [a + b for a, b in zip(summed(samples), pack(samples[1], 1, 3))]
    assert unpack(twice, 3) == ()
    assert unpack(summed(samples), 2) == (), "the wrong world"


def test_packed_is_a_float64_tensor_where_the_losses_are():
    t = probes.packed(gpu(1), 1, 2, torch.device("cpu"))
    assert t.dtype == torch.float64 and t.tolist() == pack(gpu(1), 1, 2)


def test_hosts_of_one_process_costs_nothing():
    assert probes.hosts(Dist()) == ()


# --------------------------------------------------------------------------- events through JSON


def test_new_fields_round_trip_through_json():
    started = run_started(world=16, nodes=2, hosts=tuple(f"node-{r // 8}" for r in range(16)))
    report = ev.StepReport(step=4, epoch=1, first_step=3, losses=(1.0, 0.5), lrs=(0.1,), samples_per_s=64.0,
                           eta_s=2.0, memory=gpu(0), ranks=(gpu(0), gpu(1, util=None)), time=T0)
    for event in (started, report):
        line = json.loads(event.json_line)
        assert ev.from_json(line) == event
    assert json.loads(report.json_line)["ranks"][1]["utilization"] is None


def test_old_events_without_the_new_fields_still_load():
    old_started = json.loads(run_started().json_line)
    for key in ("world", "nodes", "hosts"):
        del old_started[key]
    started = ev.from_json(old_started)
    assert (started.world, started.nodes, started.hosts) == (1, 1, ())
    old_report = {"kind": "StepReport", "time": T0, "step": 2, "epoch": 1, "first_step": 1, "losses": [1.0, 0.9],
                  "lrs": [0.1], "samples_per_s": 10.0, "eta_s": None,
                  "memory": {"device": "cpu", "rss": 5, "allocated": None, "reserved": None, "peak": None,
                             "total": None, "utilization": None}}
    report = ev.from_json(old_report)
    assert report.ranks == () and report.memory == ev.MemorySample("cpu", rss=5)


# --------------------------------------------------------------------------- RunView


def report(step: int, memory=None, ranks=()) -> ev.StepReport:
    return ev.StepReport(step=step, epoch=1, first_step=step, losses=(1.0,), lrs=(0.1,), samples_per_s=1.0,
                         eta_s=None, memory=memory, ranks=ranks, time=T0 + step)


def test_view_keeps_every_rank_and_the_fullest_in_its_history():
    view = RunView()
    view.apply(run_started(world=2, nodes=2, hosts=("a", "b")))
    assert (view.world, view.nodes, view.host_of(1), view.host_of(5)) == (2, 2, "b", "")
    big = ev.MemorySample("cuda:0", rss=1, allocated=9 * G, reserved=10 * G, peak=10 * G, total=80 * G)
    view.take_dirty()
    view.apply(report(1, gpu(0), (gpu(0), big)))
    assert "memory" in view.take_dirty()
    assert view.ranks == (gpu(0), big) and view.memory == gpu(0)
    assert list(view.memory_history) == [float(gpu(0).allocated)], "the fullest rank (37 GiB, not 9)"
    view.apply(report(2))  # no sample: what the pane shows stays
    assert view.ranks == (gpu(0), big)
    view.apply(report(3, gpu(0)))  # a sample of rank 0 alone
    assert view.ranks == ()


def test_one_process_view_is_as_before():
    view = RunView()
    view.apply(run_started())
    assert (view.world, view.nodes, view.host_of(0)) == (1, 1, "")
    view.apply(report(1, ev.MemorySample("cpu", rss=100)))
    assert view.ranks == () and list(view.memory_history) == [100.0]


# --------------------------------------------------------------------------- text helpers


@pytest.mark.parametrize("n, text", [(0, "0B"), (999, "999B"), (1000, "0.98K"), (100 * 1024, "100K"),
                                     (int(9.996 * G), "10.0G"), (int(12.34 * G), "12.3G"), (123 * G, "123G"),
                                     (H200, "140G"), (1023 * G, "1.00T"), (None, "?")])
def test_short_bytes_stays_within_five_characters(n, text):
    assert short_bytes(n) == text and len(text) <= 5


def test_world_forms_longest_first():
    assert world_forms(1, 1) == [""]
    assert world_forms(2, 1) == [" · 2 ranks", " ×2", " ×2"]
    assert world_forms(16, 2) == [" · 16 ranks on 2 nodes", " ×16 on 2 nodes", " ×16"]


def test_hosts_are_told_apart_in_eight_characters():
    names = short_hosts(["gpu-node-07.cluster.example", "gpu-node-12.cluster.example"])
    assert names == {"gpu-node-07.cluster.example": "…node-07", "gpu-node-12.cluster.example": "…node-12"}
    assert short_hosts(["a1", "b2"]) == {"a1": "a1", "b2": "b2"}
    same_end = short_hosts(["alpha-worker", "bravo-worker"])
    assert same_end == {"alpha-worker": "alpha-w…", "bravo-worker": "bravo-w…"}, "else the start"


def test_rank_labels_name_each_host_once_and_share_one_width():
    assert rank_labels([0, 1, 2], None, 3) == ["0", "1", "2"]
    assert rank_labels([7, 9, 10], None, 16) == [" 7", " 9", "10"]
    hosts = ["n0"] * 2 + ["n1"] * 2
    assert rank_labels(range(4), hosts, 4) == ["n0 0", "   1", "n1 2", "   3"]
    assert rank_labels([1, 3], hosts, 4) == ["n0 1", "n1 3"], "a host is named on its first row shown"


# --------------------------------------------------------------------------- headless lines


def test_headless_lines_name_the_ranks_and_the_fullest():
    out = io.StringIO()
    lines = LineReporter(out, tty=False)
    lines(run_started(world=16, nodes=2, hosts=("h",) * 16))
    big = ev.MemorySample("cuda:1", rss=1, allocated=60 * G, reserved=61 * G, peak=62 * G, total=80 * G)
    lines(report(1, gpu(0), (gpu(0), big)))
    lines(report(2))
    first, _, sampled, plain = out.getvalue().splitlines()
    assert "| cpu | 16 ranks on 2 nodes | amp off |" in first
    assert sampled.endswith("samples/s | mem max 60.0G/80.0G (rank 1)"), sampled
    assert plain.endswith("samples/s"), "no ranks in a report: the line as before"
    out = io.StringIO()
    LineReporter(out, tty=False)(run_started())
    assert "ranks" not in out.getvalue()


def test_headless_cpu_ranks_say_rss():
    out = io.StringIO()
    lines = LineReporter(out, tty=False)
    cpus = tuple(ev.MemorySample("cpu", rss=(300 + r) * 2**20) for r in range(2))
    lines(report(1, cpus[0], cpus))
    assert out.getvalue().rstrip().endswith("| RSS max 301M (rank 1)")


# --------------------------------------------------------------------------- Trainer._report


class StandIn(Dist):
    """Rank 0 of 2 in one process: the other rank's numbers are added by hand where the collective
    would bring them (the same losses; `other`'s memory in slot 1). `alone`: this rank went alone
    (Dist.go_alone: no collective happens)."""

    def __init__(self, other: ev.MemorySample, alone: bool = False):
        super().__init__(rank=0, world=2, alone=alone)
        self.other, self.alone_ = other, alone

    def share(self, commands, every: int = 1):
        self.every = every
        return commands

    def wrap(self, module, device):
        return module

    def close(self) -> None:
        pass

    def sum_(self, tensors) -> None:
        if self.alone_:
            return
        width = 2 * len(SLOT)
        if len(tensors) == 1 and tensors[0].dim() == 1 and tensors[0].numel() >= width + 2:
            # a sync's payload (Trainer._payload): the losses, both ranks' memory slots, the head
            t = tensors[0]
            n = t.numel() - width - 2
            t[:n] += t[:n].clone()  # the same losses
            t[n:n + width] += torch.tensor(pack(self.other, 1, 2), dtype=torch.float64)
            return  # the head (command count, steps to the next sync): rank 0's, the other adds zeros
        for t in tensors:
            t += t.clone()

    def gather_started(self, tensor):
        """A CPU sync (Trainer._cpu_payload): rank 0's payload, then the other rank's (the same
        losses, `other`'s memory slot, a head of zeros)."""
        if self.alone_:
            return super().gather_started(tensor)
        width = len(SLOT)
        n = tensor.numel() - width - 2
        theirs = tensor.clone()
        theirs[n:n + width] = torch.tensor(slot(self.other), dtype=torch.float64)
        theirs[n + width:] = 0.0
        return None, torch.cat([tensor, theirs])


def run_as_rank_0(tiny_preset, tmp_path, monkeypatch, dist: StandIn | None, name: str, fused: bool = True):
    from tui_trainer.run.launch import prepare

    monkeypatch.setattr(probes, "hosts", lambda d: ("here", "there") if d.active else ())
    seen: list = []
    session = prepare(tiny_preset(), ["train.max_steps=4", "checkpoint.every_epochs=0"], run_dir=tmp_path / name,
                      sinks=[seen.append])
    if dist is not None:
        session.trainer.dist = dist
        session.trainer._fused = fused  # False: the CUDA way (commands on the control group, losses at reports)
    try:
        session.trainer.run()
    finally:
        session.close()
    return seen


@pytest.mark.parametrize("fused", [True, False], ids=["cpu-one-collective", "cuda-split"])
def test_report_of_rank_0_carries_every_rank_and_the_same_loss(tiny_preset, tmp_path, monkeypatch, fused):
    other = ev.MemorySample("cpu", rss=123_456_789)
    alone = run_as_rank_0(tiny_preset, tmp_path, monkeypatch, None, "one")
    many = run_as_rank_0(tiny_preset, tmp_path, monkeypatch, StandIn(other), "two", fused)
    (started,) = [e for e in many if isinstance(e, ev.RunStarted)]
    assert (started.world, started.nodes, started.hosts) == (2, 2, ("here", "there"))
    reports = [e for e in many if isinstance(e, ev.StepReport)]
    assert reports[0].memory is not None and reports[0].ranks == (reports[0].memory, other)
    assert all(e.ranks == () for e in reports if e.memory is None)
    one = [e.losses for e in alone if isinstance(e, ev.StepReport)]
    assert [e.losses for e in reports] == one, "the mean of two equal ranks' losses is the loss, bit for bit"


def test_a_sum_that_did_not_happen_keeps_the_rank_own_loss_and_no_ranks(tiny_preset, tmp_path, monkeypatch):
    """A rank on its own (Dist.go_alone: no collective after a failure) reports its own losses,
    not half of them, and no memory of the others."""
    alone = run_as_rank_0(tiny_preset, tmp_path, monkeypatch, None, "one")
    cut = run_as_rank_0(tiny_preset, tmp_path, monkeypatch, StandIn(gpu(1), alone=True), "cut")
    reports = [e for e in cut if isinstance(e, ev.StepReport)]
    assert [e.losses for e in reports] == [e.losses for e in alone if isinstance(e, ev.StepReport)]
    assert all(e.ranks == () for e in reports) and reports[0].memory is not None
