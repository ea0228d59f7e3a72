"""What `tui_trainer.loop` costs: the same textbook loop with and without `run.epochs`,
`run.batches` and `run.log`, on the tiny workload, headless.

    python benchmarks/loop_overhead.py              # 30 alternating windows of 1,000 steps, then 5 x 300 pairs
    python benchmarks/loop_overhead.py --windows 0  # the pairs alone (5 runs of 300, ~4 min)
    python benchmarks/loop_overhead.py --windows 0 --rounds 1   # one run of pairs (~45 s)
    python benchmarks/loop_overhead.py --quick      # smoke: a few steps

Both variants build the same model, optimizer, loss and preloaded batches from the tiny preset
with `tui_trainer.parts.build()` (workloads.py: same seeded weights, same batches in the same
order; a batch is one `index_select`), and run the same body: zero_grad / forward / loss /
backward / step.

  a  plain      `for epoch in range(E): for x, y in batches: ...` and nothing else (no `.item()`,
                no logging): the strictest baseline there is.
  b  loop       the same body inside `tui_trainer.loop(train, model=..., optimizer=..., ui=False)`:
                `for epoch in run.epochs(E)`, `for x, y in run.batches(batches)`, `run.log(loss=loss)`.
                Everything a headless user gets is on: the run-dir recorder (events.jsonl,
                metrics.csv), the headless lines (to a file here), the control socket, the print
                capture, a report every log_every = 10 steps with its one host read, the epoch end
                at each boundary (56 steps an epoch). No checkpoint inside the window (every_epochs
                = 0, save_best = false; the final save comes after it), as in throughput.py.

A window is one fresh run of each variant, in a rotating order (a b, b a, ...); both clocks are
read inside the loop body, right after the optimizer step of step `warmup` and of the last step,
so start-up and warm-up stay out. Per window: the cost ratio (b's process CPU per step) / (a's)
and the wall ratio (a's steps/s) / (b's); reported: their medians over the windows, the spread
(half the p10..p90 range, relative), a bootstrap 95% interval of the median, and the verdict on
the goal (<= 1.02) from that interval: met when all of it is <= 1.02, MISSED when all of it is
above, else not resolved at this noise (and no verdict from fewer than 10 windows). Before the
windows, a short run of each checks that they train identically (the same per-step losses).

Paired in one run (`paired`, `--pairs`): the issue's own words, "run.batches + run.log against the
same loop without them", measured inside one `tui_trainer.loop` run whose epochs alternate between
the plain `for` (a) and `run.batches` + `run.log` (b), a b b a ...: each pair is ~80 ms apart, so
the host's minute-to-minute noise (which the windows cannot pair away on this VM) mostly cancels.
A b block holds its epoch end and its reports; every other thread's CPU (the recorder's and the
headless lines' writers) is charged to b. The loop's report clock skips the a blocks (their wall time
is added to the clocks that pace reports and memory reads), so b reports as often per step of its
own as the same loop alone does (~10 a second at train.log_min_interval_s = 0.1; the output says
how often it did), not ~1.5x as often because half of the run's wall time was a's: ddp.py does the
same for the engine's sync pace. It leaves out what the windows include: the run's start, and the
idle threads' cost to a's epochs; the windows stay the strict comparison.

Rounds (`--rounds`, default 5): the pairs are run that many times, each its own loop run, and pooled.
One run's median moves between runs by more than its own 95% interval (the host's speed, and with it
the cold-cache costs, changes from minute to minute: 1.001-1.033 between runs of the same code),
so the pooled interval resamples the runs as well as the pairs in them
(step_forms.bootstrap_pooled); the verdict is that interval's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.step_forms import bootstrap_median, bootstrap_pooled  # noqa: E402
from benchmarks.throughput import Clocks, cpu_split, spread  # noqa: E402
from benchmarks.workloads import TINY, Workload, quick  # noqa: E402

GOAL = 0.02  # run.batches + run.log cost <= 2% per step
DEFAULT_WINDOWS = 30
DEFAULT_PAIRS = 300
DEFAULT_ROUNDS = 5
MIN_WINDOWS = 10
NAMES = {"a": "a plain loop", "b": "b tui_trainer.loop"}


def _parts(preset: Path):
    from tui_trainer import config
    from tui_trainer.parts import build

    return build(config.load(preset))


def _step(parts, x, y):
    device = parts.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    parts.optimizer.zero_grad(set_to_none=True)
    loss = parts.loss_fn(parts.model(x), y)
    loss.backward()
    parts.optimizer.step()
    return loss


def _sync(parts) -> None:
    if parts.device.type == "cuda":
        import torch

        torch.cuda.synchronize()  # only at the two ends of the window


def plain(preset: Path, w: Workload, scratch: Path, record: list | None = None) -> tuple[float, dict]:
    """(a) The textbook loop alone."""
    parts = _parts(preset)
    parts.model.train()
    epochs = -(-w.steps // len(parts.data.train))
    step, start = 0, None
    for epoch in range(epochs):
        parts.data.train_batches.set_epoch(epoch)
        for x, y in parts.data.train:
            loss = _step(parts, x, y)
            if record is not None:
                record.append(loss.detach())
            step += 1
            if step == w.warmup:
                _sync(parts)
                start = Clocks.now()
            elif step == w.steps:
                _sync(parts)
                end = Clocks.now()
                n = w.steps - w.warmup
                return n / (end.wall - start.wall), cpu_split(start, end, n)
    raise RuntimeError(f"the data ran out after {step} steps")


def with_loop(preset: Path, w: Workload, scratch: Path, record: list | None = None,
              window=None) -> tuple[float, dict]:
    """(b) The same loop, steerable: tui_trainer.loop, headless, with everything on. `window(True)`
    is called where the window starts and `window(False)` where it ends (the breakdown counts
    between them)."""
    import tui_trainer

    parts = _parts(preset)
    epochs = -(-w.steps // len(parts.data.train))
    taken: dict[int, Clocks] = {}

    def train(run):
        parts.model.train()
        for epoch in run.epochs(epochs):
            parts.data.train_batches.set_epoch(epoch)
            for x, y in run.batches(parts.data.train):
                loss = _step(parts, x, y)
                run.log(loss=loss)
                if record is not None:
                    record.append(loss.detach())
                step = run.step + 1
                if step == w.warmup or step == w.steps:
                    _sync(parts)
                    taken[step] = Clocks.now()
                    if window is not None:
                        window(step == w.warmup)
                    if step == w.steps:
                        return

    run_dir = scratch / "loop-run"
    with open(scratch / "loop-run.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        code = tui_trainer.loop(train, model=parts.model, optimizer=parts.optimizer, ui=False, run_dir=run_dir,
                                name="bench_loop", log_every=w.log_every, every_epochs=0, save_best=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    if code != 0 or w.warmup not in taken or w.steps not in taken:
        raise RuntimeError(f"the loop run failed (exit {code}); see {scratch / 'loop-run.log'}")
    n = w.steps - w.warmup
    return n / (taken[w.steps].wall - taken[w.warmup].wall), cpu_split(taken[w.warmup], taken[w.steps], n)


VARIANTS = {"a": plain, "b": with_loop}


def paired(preset: Path, w: Workload, scratch: Path, pairs: int) -> dict:
    """The issue's own comparison, "run.batches + run.log against the same loop without them", inside
    one `tui_trainer.loop` run so that both sides share the host's minute: epochs alternate between
    `for x, y in batches` (a) and `for x, y in run.batches(batches): ...; run.log(loss=loss)` (b), in
    the order a b b a ... (so neither side always goes first). A block is one epoch (56 steps, ~40 ms);
    its clocks are read around the whole `for` statement, so a b block holds the epoch end that
    `run.batches` does when it is called (the headless epoch line, the recorder's EpochEnd) and its
    last report. CPU: the training thread's time in each block; the time of every other thread of
    the process over the whole run (the recorder's writer, the control socket) is charged to b
    alone. Returns the per-pair ratios b/a (wall, CPU)."""
    import time

    import tui_trainer

    parts = _parts(preset)
    data, batches = parts.data.train, parts.data.train_batches
    blocks: list[tuple[str, int, float, float]] = []  # (variant, steps, wall s, thread CPU s)
    spans: dict[str, float] = {}
    warm = 4  # blocks of each kind before the measured ones

    def block(run, kind: str, epoch: int) -> tuple[int, float, float]:
        batches.set_epoch(epoch)
        n = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        if kind == "a":
            for x, y in data:
                _step(parts, x, y)
                n += 1
        else:
            for x, y in run.batches(data):
                loss = _step(parts, x, y)
                run.log(loss=loss)
                n += 1
        _sync(parts)
        return n, time.perf_counter() - t0, time.thread_time() - c0

    def train(run):
        parts.model.train()
        order = "abba"
        for i in range(2 * (pairs + warm)):
            if i == 2 * warm:
                spans["process0"], spans["thread0"] = time.process_time(), time.thread_time()
            kind = order[i % 4]
            n, wall, cpu = block(run, kind, i)
            if kind == "a":
                # the loop's clocks that pace its reports (train.log_min_interval_s) and memory reads
                # skip the a block, as the bare block is taken off the engine's pace in ddp.py: b then
                # reports as often per step as the same loop alone would (~10 a second), not ~1.5x as
                # often because half of the wall clock was a's
                run._reported_at += wall
                run._mem_at += wall
            if i >= 2 * warm:
                blocks.append((kind, n, wall, cpu))
                if kind == "b":
                    spans["b_steps"] = spans.get("b_steps", 0) + n
        spans["process1"], spans["thread1"] = time.process_time(), time.thread_time()
        spans["last_step"] = run.step

    run_dir = scratch / "paired-run"
    with open(scratch / "paired-run.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        code = tui_trainer.loop(train, model=parts.model, optimizer=parts.optimizer, ui=False, run_dir=run_dir,
                                name="bench_paired", log_every=w.log_every, every_epochs=0, save_best=False)
    if code != 0:
        raise RuntimeError(f"the paired run failed (exit {code}); see {scratch / 'paired-run.log'}")
    # the b steps of the measured blocks are the run's last `b_steps` steps: its reports among them
    first = spans["last_step"] - spans["b_steps"]
    with open(run_dir / "events.jsonl", encoding="utf-8") as f:
        reports = sum(1 for line in f if '"StepReport"' in line and json.loads(line)["step"] > first)
    shutil.rmtree(run_dir, ignore_errors=True)
    a = [b for b in blocks if b[0] == "a"]
    b = [b for b in blocks if b[0] == "b"]
    b_steps = sum(x[1] for x in b)
    others = (spans["process1"] - spans["process0"]) - (spans["thread1"] - spans["thread0"])
    other_per_step = max(0.0, others) / b_steps  # the other threads' CPU, all charged to b
    wall, cpu = [], []
    for (_, na, wa, ca), (_, nb, wb, cb) in zip(a, b):
        wall.append((wb / nb) / (wa / na))
        cpu.append((cb / nb + other_per_step) / (ca / na))
    totals = {"wall": (sum(x[2] for x in b) / b_steps) / (sum(x[2] for x in a) / sum(x[1] for x in a)),
              "cpu": (sum(x[3] for x in b) / b_steps + other_per_step) / (sum(x[3] for x in a) / sum(x[1] for x in a))}
    return {"pairs": len(wall), "steps_per_block": [a[0][1], b[0][1]], "wall_per_pair": wall, "cpu_per_pair": cpu,
            "wall": common.median(wall), "wall_ci95": bootstrap_median(wall), "wall_spread": spread(wall),
            "cpu": common.median(cpu), "cpu_ci95": bootstrap_median(cpu), "cpu_spread": spread(cpu),
            "totals": totals, "other_threads_us_per_b_step": other_per_step * 1e6,
            "reports_per_b_second": reports / sum(x[2] for x in b),
            "a_us_per_step": common.median([x[2] / x[1] for x in a]) * 1e6,
            "b_us_per_step": common.median([x[2] / x[1] for x in b]) * 1e6}


def paired_rounds(preset: Path, w: Workload, scratch: Path, pairs: int, rounds: int) -> dict:
    """`paired` `rounds` times (each its own loop run), pooled: the median of every pair's ratio,
    with a 95% interval that resamples the rounds too (bootstrap_pooled), since one run's median moves
    between runs by more than its own interval says (the host's speed, and so the cold-cache costs,
    change from minute to minute). Each round's own numbers are kept under "rounds"."""
    each = []
    for r in range(rounds):
        one = paired(preset, w, scratch, pairs)
        each.append(one)
        if rounds > 1:
            print(f"  round {r + 1}/{rounds}: b/a wall {one['wall']:.4f} (95% CI {_ci(one['wall_ci95'])}), CPU"
                  f" {one['cpu']:.4f}; a {one['a_us_per_step']:.1f} us/step, b reported"
                  f" {one['reports_per_b_second']:.1f}/s", flush=True)
    if rounds == 1:
        return each[0]
    wall = [x for one in each for x in one["wall_per_pair"]]
    cpu = [x for one in each for x in one["cpu_per_pair"]]
    totals = {k: common.median([one["totals"][k] for one in each]) for k in ("wall", "cpu")}
    return {"pairs": len(wall), "steps_per_block": each[0]["steps_per_block"],
            "wall": common.median(wall), "wall_ci95": bootstrap_pooled([one["wall_per_pair"] for one in each]),
            "wall_spread": spread(wall),
            "cpu": common.median(cpu), "cpu_ci95": bootstrap_pooled([one["cpu_per_pair"] for one in each]),
            "cpu_spread": spread(cpu), "totals": totals,
            "other_threads_us_per_b_step": common.median([one["other_threads_us_per_b_step"] for one in each]),
            "reports_per_b_second": common.median([one["reports_per_b_second"] for one in each]),
            "a_us_per_step": common.median([one["a_us_per_step"] for one in each]),
            "b_us_per_step": common.median([one["b_us_per_step"] for one in each]),
            "wall_per_pair": wall, "cpu_per_pair": cpu,
            "rounds": [{k: v for k, v in one.items() if not k.endswith("_per_pair")} for one in each]}


@contextlib.contextmanager
def attributed():
    """While inside, the training thread's CPU time spent in each part of the loop's machinery is
    added up (ns, and calls): run.log, the reports (their loss read, and each sink: the run-dir
    recorder, the headless lines, the control socket), the epoch ends and the commands check.
    Patched on the classes for one run; the clock reads themselves cost about 0.1 us each."""
    import time

    from tui_trainer.run import launch
    from tui_trainer.run import loop as L

    spent: dict[str, list[int]] = {}
    on = [False]  # counting: from the window's first step

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if not on[0]:
                return original(*args, **kwargs)
            t = time.thread_time_ns()
            try:
                return original(*args, **kwargs)
            finally:
                cell = spent.setdefault(label, [0, 0])
                cell[0] += time.thread_time_ns() - t
                cell[1] += 1

        setattr(owner, name, wrapper)
        return owner, name, original

    def send(self, event):
        if not on[0]:
            return original_send(self, event)
        for sink in list(self.sinks):
            t = time.thread_time_ns()
            sink(event)
            cell = spent.setdefault(f"sink {type(sink).__name__} (every event)", [0, 0])
            cell[0] += time.thread_time_ns() - t
            cell[1] += 1

    undo = [timed(L.Run, "log", "run.log"), timed(L.Run, "_report", "report (all of it)"),
            timed(L, "_read", "report: reading the losses (one .tolist())"),
            timed(L.Run, "_end_epoch", "epoch ends (EpochEnd)"), timed(L.Run, "_between", "commands (slow path)")]
    original_send = launch.FanOut._send
    undo.append((launch.FanOut, "_send", original_send))
    launch.FanOut._send = send
    try:
        yield spent, lambda counting: on.__setitem__(0, counting)
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)


def clock_cost_ns(n: int = 20000) -> float:
    """What one timed call adds by itself: two reads of the thread's CPU clock (a system call, about
    1-2 us here); subtracted from every part of the breakdown, per call."""
    import time

    samples = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            time.thread_time_ns()
            time.thread_time_ns()
        samples.append((time.perf_counter_ns() - t0) / n)
    return common.median(samples)


def breakdown(preset: Path, w: Workload, scratch: Path) -> dict:
    """One instrumented run of (b): the CPU time per step of each part of the machinery, inside the
    window (from step `warmup` on: the run's start and end are not in it)."""
    clock = clock_cost_ns()
    with attributed() as (spent, window):
        rate, cpu = with_loop(preset, w, scratch, window=window)
    steps = w.steps - w.warmup
    parts = {}
    for label, (ns, n) in sorted(spent.items()):
        net = max(0.0, ns - n * clock)
        parts[label] = {"us_per_step": net / 1e3 / steps, "calls": n, "us_per_call": net / 1e3 / n}
    return {"cpu_us_per_step": cpu["process"] * 1e6, "clock_ns": clock, "parts": parts}


def same_losses(preset: Path, w: Workload, scratch: Path) -> bool:
    """Both variants train identically: the same loss at every step of a short run."""
    import torch

    short = replace(w, warmup=5, steps=60)
    got = {}
    for v, fn in VARIANTS.items():
        record: list = []
        fn(preset, short, scratch, record)
        got[v] = torch.stack(record).tolist()
    return got["a"] == got["b"]


def verdict(interval: tuple[float, float] | None, median: float, n: int) -> str:
    limit = 1 + GOAL
    if interval is None or n < MIN_WINDOWS:
        return f"too few windows ({n}) for a verdict (median {'within' if median <= limit else 'above'} the goal)"
    lo, hi = interval
    if hi <= limit:
        return "met"
    if lo > limit:
        return "MISSED"
    return f"not resolved at this noise (median {'within' if median <= limit else 'above'} the goal)"


def measure(w: Workload, windows: int, device: str, scratch: Path, pairs: int = 0, rounds: int = 1) -> dict:
    preset = w.write(scratch, device=device)
    identical = same_losses(preset, w, scratch)
    parts = breakdown(preset, w, scratch)
    together = paired_rounds(preset, w, scratch, pairs, rounds) if pairs else None
    if together is not None:
        together["verdict"] = {k: verdict(together[f"{k}_ci95"], together[k], together["pairs"]) for k in ("wall", "cpu")}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cost, wall, loads = [], [], []
    for i in range(windows):
        order = list(VARIANTS)[i % 2:] + list(VARIANTS)[:i % 2]
        this = {v: VARIANTS[v](preset, w, scratch) for v in order}
        for v in VARIANTS:
            rates[v].append(this[v][0])
            cpus[v].append(this[v][1]["process"])
        cost.append(this["b"][1]["process"] / this["a"][1]["process"])
        wall.append(this["a"][0] / this["b"][0])
        loads.append(os.getloadavg()[0])
        print(f"  window {i + 1:>2}/{windows}: " + "  ".join(
            f"{v} {this[v][0]:,.1f}/s {this[v][1]['process'] * 1e3:.4g} ms" for v in VARIANTS)
            + f"  b/a CPU {cost[-1]:.4f} wall {wall[-1]:.4f}  (load {loads[-1]:.2f})", flush=True)
    if not windows:
        return {"workload": w.name, "windows": 0, "log_every": w.log_every, "batch_size": w.batch_size, "goal": GOAL,
                "same_losses": identical, "breakdown": parts, "paired": together}
    c_med, w_med = common.median(cost), common.median(wall)
    c_ci, w_ci = bootstrap_median(cost), bootstrap_median(wall)
    return {
        "workload": w.name, "window": [w.warmup, w.steps], "windows": windows, "log_every": w.log_every,
        "batch_size": w.batch_size, "goal": GOAL, "same_losses": identical,
        "steps_per_s": rates, "cpu_s_per_step": cpus,
        "median": {v: common.median(r) for v, r in rates.items()}, "spread": {v: spread(r) for v, r in rates.items()},
        "cpu_ms": {v: common.median(c) * 1e3 for v, c in cpus.items()},
        "cpu_spread": {v: spread(c) for v, c in cpus.items()},
        "cost_per_window": cost, "wall_per_window": wall,
        "cost": {"cpu": c_med, "cpu_spread": spread(cost), "cpu_ci95": c_ci, "verdict": verdict(c_ci, c_med, windows),
                 "wall": w_med, "wall_spread": spread(wall), "wall_ci95": w_ci,
                 "wall_verdict": verdict(w_ci, w_med, windows)},
        "load_1min": {"min": min(loads), "median": common.median(loads), "max": max(loads)},
        "breakdown": parts, "paired": together,
    }


def report(result: dict) -> None:
    if result["windows"]:
        report_windows(result)
    p = result.get("paired")
    if p:
        runs = f"{len(p['rounds'])} runs pooled, " if p.get("rounds") else ""
        print(f"  paired inside a run ({runs}{p['pairs']} pairs of epochs of {p['steps_per_block'][0]} steps, a b b a ...;"
              f" a {p['a_us_per_step']:.1f} us/step, b {p['b_us_per_step']:.1f}):")
        print(f"    b reported {p['reports_per_b_second']:.1f} times a second of its own time (alone, the loop"
              f" reports at most every train.log_min_interval_s = 0.1 s: 10 a second)")
        print(f"    b/a wall {p['wall']:.4f} {_pm(p['wall_spread'])} (95% CI {_ci(p['wall_ci95'])}), totals"
              f" {p['totals']['wall']:.4f}: {p['verdict']['wall']}")
        print(f"    b/a CPU  {p['cpu']:.4f} {_pm(p['cpu_spread'])} (95% CI {_ci(p['cpu_ci95'])}), totals"
              f" {p['totals']['cpu']:.4f}, with the other threads' {p['other_threads_us_per_b_step']:.1f} us a b step:"
              f" {p['verdict']['cpu']}")
    print(f"  per-step losses: {'identical' if result['same_losses'] else 'DIFFERENT'} (a short run of each)")
    b = result["breakdown"]
    print(f"  where b's time goes inside the window (one instrumented run, CPU us per step of"
          f" {b['cpu_us_per_step']:.1f}; the clock's own {b['clock_ns'] / 1e3:.1f} us per timed call taken off):")
    for label, part in b["parts"].items():
        print(f"    {label:<48} {part['us_per_step']:>7.2f} us/step  ({part['calls']} calls,"
              f" {part['us_per_call']:.1f} us each)")


def report_windows(result: dict) -> None:
    print(f"  {'variant':<22} {'steps/s':>9} {'spread':>7}  {'CPU ms/step':>11} {'spread':>7}")
    for v in VARIANTS:
        print(f"  {NAMES[v]:<22} {result['median'][v]:>9,.1f} {_pm(result['spread'][v]):>7}"
              f"  {result['cpu_ms'][v]:>11.4f} {_pm(result['cpu_spread'][v]):>7}")
    c = result["cost"]
    print(f"  b/a per step: CPU {c['cpu']:.4f} {_pm(c['cpu_spread'])} (95% CI {_ci(c['cpu_ci95'])})"
          f"   wall {c['wall']:.4f} {_pm(c['wall_spread'])} (95% CI {_ci(c['wall_ci95'])})")
    print(f"  goal <= {1 + GOAL:.2f}: CPU {c['verdict']}; wall {c['wall_verdict']}")
    load = result["load_1min"]
    print(f"  load average (1 min) after each window: min {load['min']:.2f}, median {load['median']:.2f},"
          f" max {load['max']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=None, help=f"alternating windows (default {DEFAULT_WINDOWS};"
                                                              " 2 with --quick)")
    p.add_argument("--pairs", type=int, default=None, help=f"pairs of epochs in the one-run comparison (default"
                                                          f" {DEFAULT_PAIRS}; 4 with --quick; 0: none)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"runs of the pairs, pooled (default {DEFAULT_ROUNDS}; 1 with --quick)")
    p.add_argument("--window", type=int, default=1000, help="steps measured per window (default 1000); warm-up is"
                                                           " extra (300)")
    p.add_argument("--log-every", type=int, default=TINY.log_every,
                   help=f"the loop's log_every: a report (one loss read, the sinks) every this many steps"
                        f" (default {TINY.log_every}, the tiny workload's)")
    args = p.parse_args(argv)
    threads = common.set_threads(args)
    w = replace(TINY, warmup=300, steps=300 + args.window, log_every=args.log_every)
    if args.quick:
        w = quick(replace(TINY, log_every=args.log_every))
    windows = args.windows if args.windows is not None else (2 if args.quick else DEFAULT_WINDOWS)
    pairs = args.pairs if args.pairs is not None else (4 if args.quick else DEFAULT_PAIRS)
    print(f"loop overhead (tiny, headless): steps {w.warmup}..{w.steps} measured, log_every {w.log_every},"
          f" {args.device}, {threads} thread(s), {windows} windows; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tui-loop-") as tmp:
        rounds = args.rounds if args.rounds is not None else (1 if args.quick else DEFAULT_ROUNDS)
        result = measure(w, windows, args.device, Path(tmp), pairs, max(1, rounds))
    report(result)
    result.update({"versions": common.versions(), "threads": threads, "device": args.device, "quick": args.quick})
    common.write_json(args.json, result)
    return result


def _pm(x: float | None) -> str:
    return "-" if x is None else f"+-{x:.1%}"


def _ci(ci) -> str:
    return "-" if ci is None else f"{ci[0]:.4f}..{ci[1]:.4f}"


if __name__ == "__main__":
    main()
