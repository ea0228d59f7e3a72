"""Two DDP ranks: the engine against a bare DDP loop, and what the engine's collectives cost.

(a) A bare 2-rank DDP loop against (b) the engine on 2 ranks, as `tui-trainer PRESET --no-ui --set
train.devices=2` runs it (one sync about every 100 ms: losses, memory and commands in one
all_reduce), and (c) the same engine with `train.log_min_interval_s = 0` (a sync at every multiple
of log_every and every epoch end: what the engine did before the syncs were paced, with the
command count folded in); plus the cost of one `Dist.share([])` alone (the pause-time broadcast).

    python benchmarks/ddp.py                       # tiny and resnet18, alternating windows, + the broadcast
    python benchmarks/ddp.py --workload tiny --variants ab
    python benchmarks/ddp.py --pieces              # + the engine's pieces timed in place on each rank
    python benchmarks/ddp.py --workload tiny --windows 0 --pairs 300   # epochs paired inside one run
    python benchmarks/ddp.py --quick               # smoke: tiny, a few steps, seconds
    python benchmarks/ddp.py --pool a.json b.json  # the paired rounds of earlier --json runs, pooled

Every run is a fresh pair of ranks started the way the CLI starts them: torch's elastic launcher,
spawn, gloo on CPU (NCCL on CUDA), one torch/OpenMP thread per rank (`--threads`). Both variants
load the same preset (workloads.py: the same model, seed, optimizer, preloaded data, per-rank batch
and steps), and each rank takes its slice of every global batch (parts/batches.py).

  a  bare: each rank builds the parts with `tui_trainer.parts.build(preset, rank=, world=)`, wraps the
     model in DDP and runs zero_grad / forward / loss / backward / step over its shard. Nothing else.
  b  engine: each rank runs `tui_trainer.run.ranks.rank_main`, the function the CLI's launcher starts
     (run_headless: rank 0 writes the run directory, the log lines to a file and serves the control
     socket; the command broadcast at the step boundaries the engine picks, every step until
     a6d93c1 and about every 50 ms since; the loss all-reduce at every report).
  c  engine with exact reports: (b) with `--set train.log_min_interval_s=0`. b against c is what
     pacing the collectives gains.

A window is one run of every variant, in a rotating order. Inside each rank, the clocks (wall, process
CPU, thread CPU) are read right after step `warmup` and after step `steps` (in the engine: right after
the trainer's report of those steps, a wrapper on `Trainer._report`), so start-up and warm-up stay out.
Steps/s is rank 0's window; CPU time per step is the sum of both ranks' process CPU. Ratios are taken
within a window and the report gives their median and spread, as throughput.py does, with its noise
verdict. The broadcast alone: `Dist.share([])` called back to back on 2 ranks, each call timed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.throughput import Clocks, _num, _percentile, _pm, _round_up, cpu_split, noise, spread  # noqa: E402
from benchmarks.workloads import DIGITS_TRAIN, WORKLOADS, Workload, quick  # noqa: E402

WORLD = 2
GOAL = 0.98  # b/a, on both workloads (issue 13)
NAMES = {"a": "a bare DDP loop", "b": "b engine, --no-ui", "c": "c engine, log_min_interval_s=0"}
EXACT = ["train.log_min_interval_s=0"]  # variant c
WINDOWS = {"tiny": {"warmup": 300, "steps": 1300, "windows": 10},
           "resnet18": {"warmup": 5, "steps": 25, "windows": 5}}
SHARE_CALLS, SHARE_WARMUP = 5000, 500


# --------------------------------------------------------------------------- inside a rank


def _rank_setup(threads: int) -> tuple[int, int]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _window(taken: dict[int, Clocks], warmup: int, steps: int, rank: int) -> dict:
    if warmup not in taken or steps not in taken:
        raise RuntimeError(f"rank {rank}: no clocks at steps {warmup} and {steps} (have {sorted(taken)})")
    start, end = taken[warmup], taken[steps]
    n = steps - warmup
    return {"rank": rank, "t0": start.wall, "t1": end.wall, "steps_per_s": n / (end.wall - start.wall),
            "cpu": cpu_split(start, end, n)}


def bare_rank(preset_path: str, warmup: int, steps: int, threads: int) -> dict:
    """(a) One rank of the textbook DDP loop: the same parts from the same preset (this rank's shard),
    DDP around the model, zero_grad / forward / loss / backward / step; nothing else."""
    rank, world = _rank_setup(threads)
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tui_trainer import config
    from tui_trainer.parts import build

    preset = config.load(preset_path)
    cuda = preset.train.device.startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        parts = build(preset, rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        device = parts.device
        model = DDP(parts.model, device_ids=[device.index] if cuda else None)
        optimizer, loss_fn, amp = parts.optimizer, parts.loss_fn, parts.amp_dtype
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None
        model.train()
        step, taken = 0, {}
        for epoch in range(preset.train.epochs):
            parts.data.train_batches.set_epoch(epoch)
            for x, y in parts.data.train:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = loss_fn(model(x), y)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                step += 1
                if step == warmup or step == steps:
                    if cuda:
                        torch.cuda.synchronize()  # only at the two ends of the window
                    taken[step] = Clocks.now()
                    if step == steps:
                        return _window(taken, warmup, steps, rank)
        raise RuntimeError(f"rank {rank}: the data ran out after {step} steps")
    finally:
        dist.destroy_process_group()


def engine_rank(preset_path: str, run_dir: str, warmup: int, steps: int, threads: int, share: bool) -> dict:
    """(b) One rank exactly as the CLI's launcher starts it (`ranks.rank_main`: run_headless, rank 0
    serving), with the clocks read after the trainer's report of steps `warmup` and `steps`.
    (c) The same with exact reports (`share` False: train.log_min_interval_s = 0)."""
    rank, _ = _rank_setup(threads)
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.run.ranks import rank_main

    taken: dict[int, Clocks] = {}
    step = Trainer._step

    def timed_step(self, batch) -> bool:
        done = step(self, batch)
        if done and self.step in (warmup, steps) and self.step not in taken:
            taken[self.step] = Clocks.now()  # right after the step, as the bare loop; syncs fall inside
        return done

    Trainer._step = timed_step  # this rank's process only
    code = rank_main(preset_path, [] if share else EXACT, None, run_dir)
    if code != 0:
        raise RuntimeError(f"rank {rank}: engine run failed (exit {code}); see {run_dir}/events.jsonl")
    return _window(taken, warmup, steps, rank)


def _writers_cpu() -> float:
    """CPU seconds of this process's own threads of tui-trainer (the recorder's and the headless
    lines' writers, the control socket's server)."""
    import threading

    total = 0.0
    for th in threading.enumerate():
        if th.name.startswith("tui-trainer") and th.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(th.ident))
            except (OSError, ProcessLookupError):
                pass  # ended between the listing and the read
    return total


def _thread_cpu(by_tid: bool = False) -> dict[str, float]:
    """Every thread's CPU seconds so far (from /proc's schedstat; Linux only), by thread name (threads
    of one name summed), or by "name:tid" with `by_tid`."""
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        key = f"{name}:{tid}" if by_tid else name
        out[key] = out.get(key, 0.0) + ns / 1e9
    return out


def paired_rank(preset_path: str, run_dir: str, warm: int, block: int, pairs: int, threads: int,
                by_thread: bool = False) -> dict:
    """The engine on one rank (as `engine_rank`), with a bare block of `block` DDP steps run inside it
    at every `block`-th step boundary after `warm` (at the start of `Trainer._step`, when no sync is in
    flight): the same DDP module, optimizer and loss, a live iterator over the same shard, the textbook
    body and nothing else. Both ranks do it at the same steps. Per block: wall, process CPU and the
    CPU of tui-trainer's own threads; with `by_thread`, every thread's CPU (from /proc's schedstat:
    gloo's TCP loops and run loops too) summed per kind of block. The pace of the syncs is kept to
    the engine's own time (the bare block's wall is taken off `_synced_t`), so bare blocks do not
    thin the engine's syncs."""
    rank, _ = _rank_setup(threads)
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.run.ranks import rank_main

    step = Trainer._step
    blocks: list[tuple[str, int, float, float, float]] = []  # (kind, steps, wall, process CPU, writers' CPU)
    state: dict = {"it": None, "mark": None}

    threads_cpu: dict[str, dict[str, float]] = {"engine": {}, "bare": {}}

    def now():
        return time.perf_counter(), time.process_time(), _writers_cpu(), _thread_cpu(by_tid=True) if by_thread else {}

    def count(kind, t0, t1) -> None:
        for key, v in t1[3].items():
            d = threads_cpu[kind]
            d[key] = d.get(key, 0.0) + v - t0[3].get(key, v)

    def bare_block(self) -> None:
        net, optimizer, loss_fn, device = self.net, self.optimizer, self.loss_fn, self.device
        n = 0
        while n < block:
            if state["it"] is None:
                state["it"] = iter(self.parts.data.train)
            try:
                x, y = next(state["it"])
            except StopIteration:
                state["it"] = None
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            n += 1

    def stepped(self, batch) -> bool:
        k = self.step - warm
        if k >= 0 and k % block == 0 and k // block <= pairs:
            t = now()
            if state["mark"] is not None:
                m = state["mark"]
                blocks.append(("engine", block, t[0] - m[0], t[1] - m[1], t[2] - m[2]))
                count("engine", m, t)
            if k // block < pairs:
                bare_block(self)
                u = now()
                blocks.append(("bare", block, u[0] - t[0], u[1] - t[1], u[2] - t[2]))
                count("bare", t, u)
                self._synced_t += u[0] - t[0]  # the pace of the syncs: the engine's own time
                state["mark"] = now()
            else:
                state["mark"] = None
        return step(self, batch)

    Trainer._step = stepped  # this rank's process only
    code = rank_main(preset_path, [], None, run_dir)
    if code != 0:
        raise RuntimeError(f"rank {rank}: engine run failed (exit {code}); see {run_dir}/events.jsonl")
    return {"rank": rank, "blocks": blocks, "threads_cpu": threads_cpu}


PIECES = (("Trainer", "_step"), ("Trainer", "_update"), ("Trainer", "_between_steps"), ("Dist", "share"),
          ("Trainer", "_sync"), ("Trainer", "_start_sync"), ("Trainer", "_finish_sync"), ("Trainer", "_read"),
          ("Trainer", "_payload"), ("Trainer", "_cpu_payload"), ("Trainer", "_synced"), ("Dist", "gather_started"),
          ("MemoryProbe", "read"),
          ("Dist", "commands"), ("Trainer", "_report"), ("Dist", "sum_"), ("Trainer", "_end_epoch"), ("Recorder", "__call__"),
          ("LineReporter", "__call__"), ("ControlServer", "__call__"))


def pieces_rank(preset_path: str, run_dir: str, steps: int, threads: int, share: bool) -> dict:
    """The engine on one rank (as `engine_rank`), with the wall and thread CPU time of each of its
    pieces summed over the whole run (`PIECES`; rows nest: _step holds _update, _report holds sum_
    and the sinks). Each wrapped call adds about 1 us of timer overhead."""
    rank, _ = _rank_setup(threads)
    from tui_trainer.engine.distributed import Dist
    from tui_trainer.engine.probes import MemoryProbe
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.run.headless import LineReporter
    from tui_trainer.run.ranks import rank_main
    from tui_trainer.run.rundir import Recorder
    from tui_trainer.run.server import ControlServer

    classes = {"Trainer": Trainer, "Dist": Dist, "Recorder": Recorder, "LineReporter": LineReporter,
               "ControlServer": ControlServer, "MemoryProbe": MemoryProbe}
    spent: dict[str, list[int]] = {}

    def timed(name, call):
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return call(*args, **kwargs)
            finally:
                entry = spent.setdefault(name, [0, 0, 0])
                entry[0] += time.perf_counter_ns() - t0
                entry[1] += time.thread_time_ns() - c0
                entry[2] += 1
        return wrapper

    for cls, attr in PIECES + (("Trainer", "run"),):
        setattr(classes[cls], attr, timed(f"{cls}.{attr}", getattr(classes[cls], attr)))
    code = rank_main(preset_path, [] if share else EXACT, None, run_dir)
    if code != 0:
        raise RuntimeError(f"rank {rank}: engine run failed (exit {code})")
    return {"rank": rank, "steps": steps, "pieces": spent}


def share_rank(calls: int, warmup: int, threads: int) -> dict:
    """`Dist.share([])` back to back: what every step pays for the commands when there are none."""
    rank, _ = _rank_setup(threads)
    from tui_trainer.engine.distributed import Dist

    d = Dist.from_env("cpu")
    try:
        for _ in range(warmup):
            d.share([])
        took = []
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            s = time.perf_counter_ns()
            d.share([])
            took.append(time.perf_counter_ns() - s)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        d.close()
    us = [t / 1e3 for t in took]
    return {"rank": rank, "calls": calls, "median_us": common.median(us), "p90_us": _percentile(us, 90),
            "p99_us": _percentile(us, 99), "mean_us": wall / calls * 1e6, "cpu_us": cpu / calls * 1e6}


def collective_rank(calls: int, gap_ms: float, threads: int, rounds: int = 3) -> dict:
    """What one sync costs each thread of a rank, alone: `calls` async collectives of 40 float64 a
    rank (a sync's size: losses, memory, head) on the default gloo group, `gap_ms` of sleep between
    the issue and the wait (the rank idle, so nothing else competes), against the same loop without
    one. Two kinds: an all_gather (what the engine's CPU sync is, `Dist.gather_started`) and an
    all_reduce of the same data (what it was before), interleaved over `rounds` rounds so that both
    see the same minutes. Per collective and kind: CPU by thread name (the rank's own thread, gloo's
    TCP loop and its work threads) and the wall of the issue alone."""
    rank, _ = _rank_setup(threads)
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    kinds = ("none", "all_gather", "all_reduce")
    world = dist.get_world_size()
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # as Dist.gather_started
    try:
        spent: dict[str, dict[str, float]] = {k: {} for k in kinds}
        issue: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for kind in kinds:
                dist.barrier()
                before = _thread_cpu()
                for _ in range(calls):
                    t = torch.zeros(40, dtype=torch.float64)
                    s = time.perf_counter_ns()
                    if kind == "all_reduce":
                        work = dist.all_reduce(t, async_op=True)
                    elif kind == "all_gather":
                        work = gather(torch.empty(40 * world, dtype=torch.float64), t, async_op=True)
                    else:
                        work = None
                    issue[kind].append((time.perf_counter_ns() - s) / 1e3)
                    time.sleep(gap_ms / 1e3)
                    if work is not None:
                        work.wait()
                after = _thread_cpu()
                for k in after:
                    spent[kind][k] = spent[kind].get(k, 0.0) + (after[k] - before.get(k, 0.0)) / (calls * rounds) * 1e6
    finally:
        dist.destroy_process_group()
    out = {"rank": rank, "calls": calls * rounds}
    for kind in kinds[1:]:
        per = {k: spent[kind][k] - spent["none"].get(k, 0.0) for k in spent[kind]}
        out[kind] = {"cpu_us_by_thread": {k: v for k, v in per.items() if abs(v) >= 1.0}, "cpu_us": sum(per.values()),
                     "issue_median_us": common.median(issue[kind])}
    return out


def measure_collective(calls: int, threads: int, scratch: Path) -> dict:
    out = launch(collective_rank, calls, 4.0, threads, threads=threads, log_dir=str(scratch / "logs-collective"))
    ranks = [out[r] for r in sorted(out)]
    for r in ranks:
        for kind in ("all_gather", "all_reduce"):
            one = r[kind]
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(one["cpu_us_by_thread"].items(), key=lambda kv: -kv[1]))
            print(f"one sync-sized {kind} (40 float64 a rank, gloo, ranks idle between), rank {r['rank']}:"
                  f" {one['cpu_us']:.0f} us of CPU ({parts}); its issue {one['issue_median_us']:.0f} us", flush=True)
    return {"calls": calls, "ranks": ranks}


# --------------------------------------------------------------------------- the launcher side


def launch(fn, *args, n: int = WORLD, threads: int = 1, log_dir: str | None = None) -> dict:
    """`fn(*args)` on `n` fresh ranks, started as the CLI starts them (run/ranks.py: elastic launch,
    spawn, no restarts; the ranks' output to files under `log_dir`); {rank: return value}."""
    import logging

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logs = DefaultLogsSpecs(log_dir=log_dir, redirects=Std.ALL, tee=Std.NONE)
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=uuid.uuid4().hex, rdzv_backend="c10d",
                       rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={}, max_restarts=0, monitor_interval=0.1,
                       start_method="spawn", logs_specs=logs)
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # as torchrun does for nproc_per_node > 1
    try:
        return elastic_launch(cfg, fn)(*args)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def write_preset(w: Workload, folder: Path, device: str, amp: str) -> Path:
    """The workload's preset for 2 ranks: `data.batch_size` is per rank, so an epoch has half the
    steps of one process; enough epochs for `w.steps`. `train.devices = 2` as the CLI would be told."""
    text = w.preset_text(device=device, amp=amp)
    per_epoch = DIGITS_TRAIN // (w.batch_size * WORLD) // w.accumulate
    epochs = -(-w.steps // per_epoch)
    lines = [f"epochs = {epochs}" if line.startswith("epochs = ") else line for line in text.splitlines()]
    text = "\n".join(lines).replace("[train]\n", f"[train]\ndevices = {WORLD}\n") + "\n"
    path = folder / f"bench_{w.name}_ddp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_variant(v: str, preset: Path, w: Workload, scratch: Path, tag: str, threads: int) -> dict:
    logs = scratch / f"logs-{tag}-{v}"
    run_dir = scratch / f"run-{tag}-{v}"
    if v == "a":
        out = launch(bare_rank, str(preset), w.warmup, w.steps, threads, threads=threads, log_dir=str(logs))
    else:
        out = launch(engine_rank, str(preset), str(run_dir), w.warmup, w.steps, threads, v == "b",
                     threads=threads, log_dir=str(logs))
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    ranks = [out[r] for r in sorted(out)]
    return {"steps_per_s": ranks[0]["steps_per_s"],  # rank 0's window; the ranks step in lockstep
            "cpu_s_per_step": sum(r["cpu"]["process"] for r in ranks),
            "cpu_s_per_step_ranks": [r["cpu"]["process"] for r in ranks],
            "steps_per_s_ranks": [r["steps_per_s"] for r in ranks]}


def measure(w: Workload, windows: int, variants: str, device: str, amp: str, scratch: Path, threads: int) -> dict:
    preset = write_preset(w, scratch, device, amp)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    rank_cpus: dict[str, list[list[float]]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants if v != "a" and "a" in variants}
    cpu_ratios: dict[str, list[float]] = {v: [] for v in variants if v != "a" and "a" in variants}
    share_cost: list[float] = []  # b against c per window: 1 - rate_b / rate_c
    share_cpu: list[float] = []
    loads, log = [], []
    for i in range(windows):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        this = {v: run_variant(v, preset, w, scratch, f"{w.name}-{i}", threads) for v in order}
        for v, r in this.items():
            rates[v].append(r["steps_per_s"])
            cpus[v].append(r["cpu_s_per_step"])
            rank_cpus[v].append(r["cpu_s_per_step_ranks"])
        if "a" in this:
            for v in ratios:
                ratios[v].append(this[v]["steps_per_s"] / this["a"]["steps_per_s"])
                cpu_ratios[v].append(this["a"]["cpu_s_per_step"] / this[v]["cpu_s_per_step"])
        if "b" in this and "c" in this:
            share_cost.append(1 - this["b"]["steps_per_s"] / this["c"]["steps_per_s"])
            share_cpu.append(1 - this["c"]["cpu_s_per_step"] / this["b"]["cpu_s_per_step"])
        loads.append(os.getloadavg()[0])
        log.append(this)
        print(f"  window {i + 1:>2}/{windows}: " + "  ".join(
            f"{v} {_num(this[v]['steps_per_s'])}/s {this[v]['cpu_s_per_step'] * 1e3:.4g} ms" for v in variants)
            + f"  (load {loads[-1]:.2f})", flush=True)
    result = {
        "workload": w.name, "world": WORLD, "batch_size_per_rank": w.batch_size, "window": [w.warmup, w.steps],
        "windows": windows, "log_every": w.log_every, "goal": GOAL,
        "steps_per_s": rates, "median": {v: common.median(r) for v, r in rates.items()},
        "spread": {v: spread(r) for v, r in rates.items()},
        "cpu_ms_per_step": {v: common.median(c) * 1e3 for v, c in cpus.items()},
        "cpu_ms_per_step_ranks": {v: [common.median([c[k] for c in cs]) * 1e3 for k in range(WORLD)]
                                  for v, cs in rank_cpus.items()},
        "cpu_spread": {v: spread(c) for v, c in cpus.items()},
        "ratio": {v: common.median(r) for v, r in ratios.items()},
        "ratio_spread": {v: spread(r) for v, r in ratios.items()},
        "cpu_ratio": {v: common.median(r) for v, r in cpu_ratios.items()},
        "cpu_ratio_spread": {v: spread(r) for v, r in cpu_ratios.items()},
        "ratios_per_window": ratios, "cpu_ratios_per_window": cpu_ratios,
        "share_in_place": None,
        "noise": _noise(rates.get("a", [])),
        "load_1min": {"min": min(loads), "median": common.median(loads), "max": max(loads)},
        "per_window": log,
    }
    if share_cost:
        med_b, med_c = result["median"]["b"], result["median"]["c"]
        result["share_in_place"] = {
            "wall_share": common.median(share_cost), "wall_spread_abs": _abs_spread(share_cost),
            "cpu_share": common.median(share_cpu), "cpu_spread_abs": _abs_spread(share_cpu),
            "us_per_step": (1 / med_b - 1 / med_c) * 1e6, "per_window": share_cost}
    return result


def _noise(bare_rates: list[float]) -> dict:
    """throughput.py's verdict; from fewer than 3 windows (`--quick`) there is no spread to judge."""
    n = noise(bare_rates)
    if 0 < len(bare_rates) < 3:
        n = {**n, "noisy": False, "verdict": f"too few windows ({len(bare_rates)}) to judge the noise"}
    return n


def _abs_spread(values: list[float]) -> float:
    """Half the p10..p90 range, absolute (for values around 0)."""
    return (_percentile(values, 90) - _percentile(values, 10)) / 2


def report(result: dict) -> None:
    print(f"  {'variant':<22} {'steps/s':>9} {'spread':>7}  {'CPU ms/step':>11} {'spread':>7}  per rank (0 / 1)")
    for v, med in result["median"].items():
        r0, r1 = result["cpu_ms_per_step_ranks"][v]
        print(f"  {NAMES[v]:<22} {_num(med):>9} {_pm(result['spread'][v]):>7}  {result['cpu_ms_per_step'][v]:>11.4g}"
              f" {_pm(result['cpu_spread'][v]):>7}  {r0:.4g} / {r1:.4g}")
    for v, ratio in result["ratio"].items():
        cpu = result["cpu_ratio"][v]
        line = (f"  {v}/a  wall {ratio:.3f} {_pm(result['ratio_spread'][v])}   "
                f"CPU {cpu:.3f} {_pm(result['cpu_ratio_spread'][v])}")
        if v == "b":
            line += (f"   goal >= {GOAL}: wall {'met' if ratio >= GOAL else 'MISSED'},"
                     f" CPU {'met' if cpu >= GOAL else 'MISSED'}")
        print(line)
    s = result["share_in_place"]
    if s:
        print(f"  pacing the syncs (b against c, the exact cadence): {s['wall_share']:+.1%} +-{s['wall_spread_abs']:.1%} of a step"
              f" (wall), {s['cpu_share']:+.1%} +-{s['cpu_spread_abs']:.1%} (CPU); {s['us_per_step']:+.0f} us per step"
              " from the medians")
    n = result["noise"]
    load = result["load_1min"]
    print(f"  noise: the bare loop's windows spread {_pm(n['bare_spread'])} (limit +-{n['limit']:.0%}): {n['verdict']};"
          f" load average {load['min']:.2f}..{load['max']:.2f}")


def measure_paired(w: Workload, pairs: int, device: str, amp: str, scratch: Path, threads: int,
                   by_thread: bool = False) -> dict:
    """Bare and engine blocks of one epoch each inside one engine run (`paired_rank`), in the order
    B E B E ...; each engine block against the mean of the bare blocks on either side of it. Speed:
    rank 0's wall (the ranks step in lockstep), bare / engine per step (>= 0.98 is the goal). CPU:
    both ranks' process CPU per step, tui-trainer's own threads taken out of every block and all of
    their CPU charged to the engine's blocks."""
    block = DIGITS_TRAIN // (w.batch_size * WORLD) // w.accumulate  # one epoch: one epoch end per engine block
    warm = _round_up(w.warmup, block)
    pw = replace(w, steps=warm + (pairs + 1) * block + 2)
    preset = write_preset(pw, scratch, device, amp)
    run_dir = scratch / f"paired-{w.name}"
    out = launch(paired_rank, str(preset), str(run_dir), warm, block, pairs, threads, by_thread, threads=threads,
                 log_dir=str(scratch / f"logs-paired-{w.name}"))
    shutil.rmtree(run_dir, ignore_errors=True)
    ranks = [out[r]["blocks"] for r in sorted(out)]
    for r in sorted(out):
        per = out[r]["threads_cpu"]
        for key in sorted(per["engine"], key=lambda k: -per["engine"][k]):
            e, b = per["engine"][key], per["bare"].get(key, 0.0)
            print(f"    rank {r} thread {key:<28} engine {e * 1e3:8.1f} ms  bare {b * 1e3:8.1f} ms")
    kinds = [b[0] for b in ranks[0]]
    n_engine = sum(1 for k in kinds if k == "engine")
    engine_steps = n_engine * block
    writers = sum(b[4] for r in ranks for b in r)  # every rank's own threads, over every block
    wall = [b[2] / b[1] for b in ranks[0]]
    cpu = [sum(r[i][3] - r[i][4] for r in ranks) / ranks[0][i][1] for i in range(len(kinds))]
    extra = writers / engine_steps if engine_steps else 0.0
    speed, cost = [], []
    for i, k in enumerate(kinds):
        if k != "engine" or i + 1 >= len(kinds):
            continue
        bare_wall = (wall[i - 1] + wall[i + 1]) / 2
        bare_cpu = (cpu[i - 1] + cpu[i + 1]) / 2
        speed.append(bare_wall / wall[i])
        cost.append(bare_cpu / (cpu[i] + extra))
    from benchmarks.step_forms import bootstrap_median

    e_wall = [wall[i] for i, k in enumerate(kinds) if k == "engine"]
    b_wall = [wall[i] for i, k in enumerate(kinds) if k == "bare"]
    result = {"pairs": len(speed), "block_steps": block, "warm_steps": warm,
              "bare_us_per_step": common.median(b_wall) * 1e6, "engine_us_per_step": common.median(e_wall) * 1e6,
              "writers_us_per_engine_step": extra * 1e6,
              "wall": common.median(speed), "wall_ci95": bootstrap_median(speed), "wall_spread": spread(speed),
              "cpu": common.median(cost), "cpu_ci95": bootstrap_median(cost), "cpu_spread": spread(cost),
              "wall_per_pair": speed, "cpu_per_pair": cost}
    ci, cci = result["wall_ci95"], result["cpu_ci95"]
    print(f"  paired in one engine run ({len(speed)} engine blocks of {block} steps, each against the bare"
          f" blocks on either side; bare {result['bare_us_per_step']:.0f} us/step, engine"
          f" {result['engine_us_per_step']:.0f}):")
    print(f"    engine/bare speed {result['wall']:.4f} {_pm(result['wall_spread'])} (95% CI"
          f" {'-' if ci is None else f'{ci[0]:.4f}..{ci[1]:.4f}'}): goal >= {GOAL} {_paired_verdict(ci)}")
    print(f"    bare/engine CPU   {result['cpu']:.4f} {_pm(result['cpu_spread'])} (95% CI"
          f" {'-' if cci is None else f'{cci[0]:.4f}..{cci[1]:.4f}'}), with tui-trainer's threads"
          f" {result['writers_us_per_engine_step']:.1f} us an engine step: {_paired_verdict(cci)}", flush=True)
    return result


def measure_paired_rounds(w: Workload, pairs: int, rounds: int, device: str, amp: str, scratch: Path, threads: int,
                          by_thread: bool = False) -> dict:
    """`measure_paired` `rounds` times (each its own 2-rank run), pooled: the median of every pair's
    ratio, with a 95% interval that resamples the rounds too (step_forms.bootstrap_pooled), since one
    run's median moves between runs by more than its own interval says."""
    each = [measure_paired(w, pairs, device, amp, scratch, threads, by_thread) for _ in range(rounds)]
    return each[0] if rounds == 1 else pool_rounds(each)


def pool_rounds(each: list[dict]) -> dict:
    """Paired rounds (each `measure_paired`'s result, with its per-pair ratios) pooled and printed: the
    median of every pair's ratio, its 95% interval resampling the rounds and the pairs."""
    from benchmarks.step_forms import bootstrap_pooled

    rounds = len(each)
    speed = [x for one in each for x in one["wall_per_pair"]]
    cost = [x for one in each for x in one["cpu_per_pair"]]
    result = {"pairs": len(speed), "block_steps": each[0]["block_steps"], "warm_steps": each[0]["warm_steps"],
              "bare_us_per_step": common.median([one["bare_us_per_step"] for one in each]),
              "engine_us_per_step": common.median([one["engine_us_per_step"] for one in each]),
              "writers_us_per_engine_step": common.median([one["writers_us_per_engine_step"] for one in each]),
              "wall": common.median(speed), "wall_ci95": bootstrap_pooled([one["wall_per_pair"] for one in each]),
              "wall_spread": spread(speed),
              "cpu": common.median(cost), "cpu_ci95": bootstrap_pooled([one["cpu_per_pair"] for one in each]),
              "cpu_spread": spread(cost), "wall_per_pair": speed, "cpu_per_pair": cost,
              "rounds": [{k: v for k, v in one.items() if not k.endswith("_per_pair")} for one in each]}
    ci, cci = result["wall_ci95"], result["cpu_ci95"]
    medians = ", ".join(format(one["wall"], ".4f") for one in each)
    print(f"  {rounds} runs pooled ({len(speed)} engine blocks; round medians {medians}):")
    print(f"    engine/bare speed {result['wall']:.4f} (95% CI {ci[0]:.4f}..{ci[1]:.4f}): goal >= {GOAL}"
          f" {_paired_verdict(ci)}")
    print(f"    bare/engine CPU   {result['cpu']:.4f} (95% CI {cci[0]:.4f}..{cci[1]:.4f}): {_paired_verdict(cci)}",
          flush=True)
    return result


def saved_rounds(paths: list[str]) -> list[dict]:
    """The paired rounds of earlier runs (their --json files; pooled runs and single ones), each with its
    own per-pair ratios again (a pooled file keeps them in one list, in round order)."""
    import json

    each = []
    for path in paths:
        for workload in json.loads(Path(path).read_text())["workloads"]:
            paired = workload.get("paired")
            if not paired:
                continue
            rounds = paired.get("rounds") or [paired]
            at = 0
            for one in rounds:
                n = one["pairs"]
                each.append({**one, "wall_per_pair": paired["wall_per_pair"][at:at + n],
                             "cpu_per_pair": paired["cpu_per_pair"][at:at + n]})
                at += n
            if at != len(paired["wall_per_pair"]):
                raise SystemExit(f"ddp: {path}: {at} pairs in its rounds, {len(paired['wall_per_pair'])} in all")
    if not each:
        raise SystemExit(f"ddp: no paired rounds in {', '.join(paths)} (runs made with --pairs and --json)")
    return each


def _paired_verdict(ci) -> str:
    if ci is None:
        return "too few pairs for a verdict"
    lo, hi = ci
    return "met" if lo >= GOAL else "MISSED" if hi < GOAL else "not resolved at this noise"


def measure_share(calls: int, warmup: int, threads: int, scratch: Path) -> dict:
    out = launch(share_rank, calls, warmup, threads, threads=threads, log_dir=str(scratch / "logs-share"))
    ranks = [out[r] for r in sorted(out)]
    r0 = ranks[0]
    r1 = ranks[1]
    print(f"Dist.share([]) on {WORLD} gloo ranks, {calls} calls after {warmup}: rank 0 median {r0['median_us']:.1f} us,"
          f" p90 {r0['p90_us']:.1f} us, p99 {r0['p99_us']:.1f} us, mean {r0['mean_us']:.1f} us;"
          f" CPU {r0['cpu_us']:.1f} us per call (rank 1: median {r1['median_us']:.1f}, p90 {r1['p90_us']:.1f},"
          f" CPU {r1['cpu_us']:.1f})", flush=True)
    return {"calls": calls, "warmup": warmup, "ranks": ranks}


def measure_pieces(w: Workload, device: str, amp: str, scratch: Path, threads: int, variants: str) -> dict:
    """One engine run with the broadcast and (if `c` is asked for) one without, each piece timed in place."""
    preset = write_preset(w, scratch, device, amp)
    out = {}
    for v in [v for v in "bc" if v in variants]:
        ranks = launch(pieces_rank, str(preset), str(scratch / f"pieces-{w.name}-{v}"), w.steps, threads, v == "b",
                       threads=threads, log_dir=str(scratch / f"logs-pieces-{w.name}-{v}"))
        shutil.rmtree(scratch / f"pieces-{w.name}-{v}", ignore_errors=True)
        rows = {}
        for r in sorted(ranks):
            for name, (wall, cpu, calls) in ranks[r]["pieces"].items():
                rows.setdefault(name, {})[r] = {"wall_us_per_step": wall / 1e3 / w.steps,
                                                "cpu_us_per_step": cpu / 1e3 / w.steps, "calls": calls,
                                                "wall_us_per_call": wall / 1e3 / calls}
        out[v] = rows
        print(f"  {NAMES[v]}: in place, {w.steps} steps (the whole run), us per step: wall / thread CPU"
              f" on rank 0 | rank 1   (calls; wall us per call on rank 0)")
        for name, by_rank in sorted(rows.items(), key=lambda kv: -kv[1][0]["wall_us_per_step"]):
            r0, r1 = by_rank.get(0), by_rank.get(1)
            right = f"{r1['wall_us_per_step']:8.1f} / {r1['cpu_us_per_step']:7.1f}" if r1 else f"{'-':>8}   {'-':>7}"
            print(f"    {name:<24} {r0['wall_us_per_step']:8.1f} / {r0['cpu_us_per_step']:7.1f} | {right}"
                  f"   ({r0['calls']}; {r0['wall_us_per_call']:.1f})", flush=True)
        out[f"{v}_own"] = own = engine_own(rows, ranks)
        print("    the engine's own (" + " + ".join(OWN) + "), wall per step: "
              + "; ".join(f"rank {r} {o['us_per_step']:.1f} us = {o['share']:.2%} of its step" for r, o in own.items()))
    return out


OWN = ("Trainer._sync", "Trainer._start_sync", "Trainer._between_steps", "Trainer._end_epoch")  # none inside another


def engine_own(rows: dict, ranks: dict) -> dict:
    """Per rank: the wall time per step of the engine's pieces that do not nest (OWN: the sync, the
    sync's start inside the step, the commands check, the epoch's end), and its share of the run's
    wall time per step."""
    out = {}
    for r in sorted(ranks):
        own = sum(rows[name][r]["wall_us_per_step"] for name in OWN if r in rows.get(name, {}))
        out[r] = {"us_per_step": own, "share": own / rows["Trainer.run"][r]["wall_us_per_step"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--windows", type=int, default=None,
                   help="alternating windows (default: tiny 10, resnet18 5; 1 with --quick)")
    p.add_argument("--window", type=int, default=None,
                   help="steps measured per window (default: tiny 1000, resnet18 20)")
    p.add_argument("--variants", default="abc", help="which of a, b, c to run (default abc)")
    p.add_argument("--amp", default="off", help='preset train.amp for every variant (default "off")')
    p.add_argument("--log-every", type=int, default=None,
                   help="override the workloads' train.log_every (tiny 10, resnet18 5): how often the engine"
                        " all-reduces the losses")
    p.add_argument("--share-calls", type=int, default=None,
                   help=f"Dist.share([]) calls timed (default {SHARE_CALLS}; 200 with --quick; 0: none)")
    p.add_argument("--pairs", type=int, default=0,
                   help="also bare and engine blocks of one epoch each, paired inside one engine run (this many"
                        " pairs; 3 with --quick)")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --pairs: runs of the pairs, pooled (default 1; 5 gives an interval that holds"
                        " between runs)")
    p.add_argument("--collective", type=int, default=0,
                   help="also time this many sync-sized all_reduces alone: the CPU one costs each thread of a rank")
    p.add_argument("--by-thread", action="store_true",
                   help="with --pairs: every thread's CPU in the engine's and the bare blocks, per rank")
    p.add_argument("--pieces", action="store_true",
                   help="also time the engine's pieces in place on each rank (Dist.share, _report, sum_ ...), b and c")
    p.add_argument("--pool", nargs="+", metavar="JSON",
                   help="measure nothing: pool the paired rounds of these earlier --json files (runs of the same"
                        " code and command) and print the pooled ratio and its interval")
    args = p.parse_args(argv)
    if args.pool:
        print(f"pooled from {', '.join(args.pool)}:")
        return {"pooled_from": args.pool, "paired": pool_rounds(saved_rounds(args.pool))}
    if not args.variants or set(args.variants) - set("abc") or len(set(args.variants)) != len(args.variants):
        p.error("--variants: some of a, b, c, each once (a is the baseline of every ratio)")
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if args.device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < WORLD:
            print(f"ddp: {WORLD} CUDA devices needed (one per rank), {torch.cuda.device_count()} here: skipped")
            return {"skipped": True, "device": args.device, "workloads": [], "share": None, "noisy": False}
    names = ["tiny"] if args.quick and args.workload == "all" else list(WORKLOADS) if args.workload == "all" \
        else [args.workload]
    results = {"versions": common.versions(), "world": WORLD, "threads_per_rank": threads, "device": args.device,
               "amp": args.amp, "quick": args.quick, "workloads": [], "share": None}
    with tempfile.TemporaryDirectory(prefix="tui-ddp-") as tmp:
        scratch = Path(tmp)
        calls = args.share_calls if args.share_calls is not None else (200 if args.quick else SHARE_CALLS)
        if calls:
            results["share"] = measure_share(calls, 50 if args.quick else SHARE_WARMUP, threads, scratch)
        if args.collective and args.device == "cpu":
            results["collective"] = measure_collective(args.collective, threads, scratch)
        for name in names:
            w = WORKLOADS[name]
            shape = WINDOWS[name]
            steps = shape["warmup"] + args.window if args.window else shape["steps"]
            w = replace(w, warmup=shape["warmup"], steps=steps)
            if args.log_every:
                w = replace(w, log_every=args.log_every, warmup=_round_up(w.warmup, args.log_every),
                            steps=_round_up(w.steps, args.log_every))
            w = quick(w) if args.quick else w
            windows = args.windows if args.windows is not None else (1 if args.quick else shape["windows"])
            print(f"{name}: {WORLD} ranks (elastic launch, spawn, {'gloo' if args.device == 'cpu' else 'nccl'}),"
                  f" batch {w.batch_size} per rank, steps {w.warmup}..{w.steps} measured, log_every {w.log_every},"
                  f" {args.device}, amp {args.amp}, {threads} thread(s) per rank, {windows} windows", flush=True)
            if not windows:
                result = {"workload": name, "noise": {"noisy": False}}
            else:
                result = measure(w, windows, args.variants, args.device, args.amp, scratch, threads)
                report(result)
            pairs = min(args.pairs, 3) if args.quick else args.pairs
            if pairs:
                result["paired"] = measure_paired_rounds(w, pairs, max(1, args.rounds), args.device,
                                                         args.amp, scratch, threads, args.by_thread)
            if results["share"] and windows:
                a_ms = 1e3 / result["median"]["a"] if "a" in result["median"] else None
                med = results["share"]["ranks"][0]["median_us"]
                result["share_of_bare_step"] = med / (a_ms * 1e3) if a_ms else None
            if result.get("share_of_bare_step") is not None:
                print(f"  one Dist.share([]) alone ({results['share']['ranks'][0]['median_us']:.1f} us) is"
                      f" {result['share_of_bare_step']:.2%} of the bare loop's step here", flush=True)
            if args.pieces:
                result["pieces"] = measure_pieces(w, args.device, args.amp, scratch, threads, args.variants)
            results["workloads"].append(result)
    results["noisy"] = any(r["noise"]["noisy"] for r in results["workloads"])
    common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
