"""Issue 13, the screen of a run of many ranks: the header names the ranks and nodes, the Memory
pane shows every rank's memory (gathered at report time in the losses' all_reduce), at 80x24 and
120x40; and a real 2-rank gloo run writes what the screen shows into events.jsonl."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from tests.helpers import ranks as rank_runs
from tests.helpers.history import history
from tests.helpers.pilot import until
from tests.helpers.runs import of_kind, read_events
from tui_trainer.engine import events as ev
from tui_trainer.engine.events import from_json
from tui_trainer.text.format import short_bytes
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import ReplayLink

G = 2**30
SIZES = [(80, 24), (120, 40)]


def gpu(rank: int) -> ev.MemorySample:
    return ev.MemorySample(f"cuda:{rank % 8}", rss=(3 + rank) * G, allocated=(10 + rank) * G,
                           reserved=(14 + rank) * G, peak=(16 + rank) * G, total=80 * G, utilization=90.0 + rank)


def cpu(rank: int) -> ev.MemorySample:
    return ev.MemorySample("cpu", rss=(300 + 17 * rank) * 2**20)


def many_ranks(world: int, nodes: int = 1, sample=gpu, device_name: str = "NVIDIA H200") -> list[ev.Event]:
    """The fixed history of the layout snapshots, as a run of `world` ranks on `nodes` hosts."""
    hosts = tuple(f"gpu-node-{r * nodes // world:02d}.cluster" for r in range(world))
    out = []
    for e in history():
        if isinstance(e, ev.RunStarted):
            e = dataclasses.replace(e, world=world, nodes=nodes, hosts=hosts, device_name=device_name)
        elif isinstance(e, ev.StepReport) and e.memory is not None:
            samples = tuple(sample(r) for r in range(world))
            e = dataclasses.replace(e, memory=samples[0], ranks=samples)
        out.append(e)
    return out


def screen_lines(app: TrainerApp) -> list[str]:
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]


def memory_lines(app: TrainerApp) -> list[str]:
    """The Memory pane's rows as drawn (inside its border)."""
    pane = app.query_one("#memory")
    region = pane.content_region
    return [line[region.x:region.right].rstrip() for line in screen_lines(app)[region.y:region.bottom]]


async def settled(pilot, size) -> None:
    if size[0] < 100:  # narrow: one pane at a time
        await pilot.press("4")
    await pilot.pause(0.3)
    await until(pilot, lambda: not pilot.app.redraw_pending, "every pane drawn")
    await pilot.pause(0.2)


def show(events, size) -> tuple[list[str], list[str]]:
    """(the screen's lines, the Memory pane's lines) once every pane drew the history."""
    app = TrainerApp(ReplayLink(events))

    async def scenario():
        async with app.run_test(size=size) as pilot:
            await settled(pilot, size)
            return screen_lines(app), memory_lines(app)

    return asyncio.run(scenario())


# --------------------------------------------------------------------------- the screen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("world", [2, 8])
def test_every_rank_has_its_row_and_the_header_names_the_ranks(size, world):
    screen, memory = show(many_ranks(world), size)
    header = screen[0]
    assert f"NVIDIA H200 · {world} ranks · amp off" in header, header
    assert "RUNNING " in header, "the state stays whole beside the ranks"
    rows = [line for line in memory if line[:2].strip().isdigit()]
    assert [int(line.split()[0]) for line in rows] == list(range(world)), memory
    for rank, line in enumerate(rows):
        numbers = line.split()[2:]
        assert numbers == [f"{10 + rank:.1f}G", f"{14 + rank:.1f}G", f"{16 + rank:.1f}G", f"{90 + rank}%"], line
    (total,) = [line for line in memory if line.lstrip().startswith("Σ")]
    utils = [90 + r for r in range(world)]
    assert total.split()[2:] == [short_bytes(sum(10 + r for r in range(world)) * G),
                                 short_bytes(sum(14 + r for r in range(world)) * G), f"{sum(utils) / world:.0f}%"]
    assert any("of 80.0G each" in line for line in memory), "the heading names the devices' size"
    inside = 42 if size[0] >= 100 else size[0] - 4  # narrow: the pane alone, the whole width
    assert all(len(line) <= inside for line in memory)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sixteen_ranks_on_two_nodes_name_the_hosts(size):
    screen, memory = show(many_ranks(16, nodes=2), size)
    header = screen[0]
    assert "16 ranks on 2 nodes" in header or "×16 on 2 nodes" in header, header
    assert "RUNNING " in header
    hosts = [line.split()[0] for line in memory if line.lstrip().startswith("…node")]
    if size == (80, 24):  # room for all 16: each host labels its first rank
        assert hosts == ["…node-00", "…node-01"], memory
        assert sum(1 for line in memory if line.split() and line.split()[-1].endswith("%")) == 17  # 16 and Σ
    else:  # 120x40: 9 rows: the fullest ranks (the last ones here), a line for the others, Σ
        assert hosts and hosts[-1] == "…node-01", memory
        assert any(line.startswith("+") and "more ranks" in line for line in memory), memory
        assert memory[-1].lstrip().startswith("Σ") or any(line.lstrip().startswith("Σ") for line in memory)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_ranks_show_their_resident_memory(size):
    screen, memory = show(many_ranks(2, sample=cpu, device_name="cpu"), size)
    assert "cpu · 2 ranks · amp off" in screen[0]
    assert [line.split()[-1] for line in memory if line[:2].strip().isdigit()] == ["300M", "317M"]
    assert any(line.lstrip().startswith("Σ") and line.endswith("617M") for line in memory), memory


def test_one_process_keeps_its_screen():
    """No ranks: the header and pane of a one-process run, unchanged (the layout snapshots hold it)."""
    screen, memory = show(history(), (120, 40))
    assert "ranks" not in screen[0] and "×" not in screen[0].split("RUNNING")[0]
    assert memory[0].startswith("process RSS") and not any(line.lstrip().startswith("Σ") for line in memory)


# --------------------------------------------------------------------------- a real run of 2 ranks


class Ballast:
    """A callback that makes rank 1 the larger process (about 64 MiB more), to tell the ranks'
    samples apart in rank 0's events."""

    def __init__(self, mib: int = 64):
        self.kept = bytearray(b"\x01") * (mib * 2**20) if os.environ.get("RANK") == "1" else b""

    def on_event(self, event, control) -> None:
        pass


@pytest.mark.timeout(120)
def test_rank_0_records_every_ranks_memory_and_the_world(tmp_path):
    from tests.helpers.user_code import write_preset

    preset = write_preset(tmp_path / "p.toml", train={"epochs": 1},
                          callbacks=[{"target": "tests.integration.test_distributed_screen:Ballast"}])
    result = rank_runs.launch(rank_runs.train_run, str(preset), str(tmp_path / "run"),
                              ["checkpoint.every_epochs=0", "checkpoint.save_best=false", "train.max_steps=6"])
    assert result[0]["finished"] and result[1]["finished"], result[0]["error"] or result[1]["error"]
    events = [from_json(e) for e in read_events(tmp_path / "run")]
    (started,) = [e for e in events if isinstance(e, ev.RunStarted)]
    assert (started.world, started.nodes, len(started.hosts)) == (2, 1, 2)
    reports = [e for e in events if isinstance(e, ev.StepReport)]
    sampled = [e for e in reports if e.memory is not None]
    assert sampled and sampled[0] is reports[0], "the first report carries memory"
    for report in sampled:
        assert len(report.ranks) == 2 and report.ranks[0] == report.memory, "ranks[0] is rank 0's own sample"
        assert all(m.device == "cpu" and m.rss > 0 for m in report.ranks)
        assert report.ranks[1].rss - report.ranks[0].rss > 32 * 2**20, "rank 1's slot holds rank 1's process"
    assert all(e.ranks == () for e in reports if e.memory is None), "no samples between memory samples"
    raw = of_kind(read_events(tmp_path / "run"), "StepReport")[0]
    assert [m["rss"] for m in raw["ranks"]] == [m.rss for m in sampled[0].ranks]  # as written in events.jsonl
