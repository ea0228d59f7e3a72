"""Step throughput: (a) a bare PyTorch loop, (b) the tui-trainer engine headless (`--no-ui`), (c) the
Textual app driven headless; steps/s and CPU time per step, and the ratios b/a and c/a of both.

    python benchmarks/throughput.py                        # both workloads, many short alternating windows
    python benchmarks/throughput.py --workload tiny --hog  # the same quiet, then next to a CPU hog; compared
    python benchmarks/throughput.py --quick                # smoke: a few steps

A window is one short run of each variant, in a rotating order (a b c, b c a, c a b, ...); steps/s
and CPU time are measured from step `warmup` to the last step, so start-up and warm-up stay out.
The ratios are the medians of the per-window ratios (adjacent runs see the same machine), with
their spread. The CPU-time ratio is (a's process CPU per step) / (the variant's process CPU per
step): it reads like the steps/s ratio, but steal and other tenants inflate it far less. Every
report carries a noise verdict: the spread of the bare loop's windows; above +-10% the wall-clock
ratios are marked NOISY. See workloads.py for why the three variants do the same work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload, quick  # noqa: E402

GOALS = {"tiny": {"b": 0.99, "c": 0.97}, "resnet18": {"b": 0.99, "c": 0.99}}
NAMES = {"a": "a bare PyTorch loop", "b": "b engine, --no-ui", "c": "c Textual app"}
# One window per variant: steps warmup..steps of a short run. Shorter than the old 5 long reps, so
# that many windows alternate within the same minutes (tiny: 1,000 steps, about 1 s).
WINDOWS = {"tiny": {"warmup": 300, "steps": 1300, "windows": 15},
           "resnet18": {"warmup": 5, "steps": 25, "windows": 5}}
NOISE_LIMIT = 0.10  # the bare loop's windows spread more than +-10%: wall-clock ratios mean nothing
NOISY = "NOISY: wall-clock ratios are not meaningful here; use the CPU-time ratios"
PARTS = ("process", "engine", "ui", "other")  # CPU time: the whole process, training thread, UI thread, the rest
STABLE_WITHIN = 0.02  # the goal for the CPU-time ratios, quiet against loaded


@dataclass(frozen=True)
class Clocks:
    """One end of a window, read in the training thread: wall, the whole process's CPU time, the
    training thread's CPU time, and the main thread's when that is another thread (the app's UI)."""
    wall: float
    process: float
    engine: float
    ui: float | None

    @staticmethod
    def now() -> Clocks:
        main = threading.main_thread()
        ui = None
        if main.ident != threading.get_ident():
            ui = time.clock_gettime(time.pthread_getcpuclockid(main.ident))
        return Clocks(time.perf_counter(), time.process_time(), time.thread_time(), ui)


def cpu_split(start: Clocks, end: Clocks, steps: int) -> dict:
    """CPU seconds per step over a window: the process, the training thread, the UI thread (None
    when training runs on the main thread) and every other thread together."""
    process = (end.process - start.process) / steps
    engine = (end.engine - start.engine) / steps
    ui = None if start.ui is None or end.ui is None else (end.ui - start.ui) / steps
    # the UI's work is paced by time (redraws at 1-2 Hz, a 10 Hz drain), not by steps: its share of a core
    ui_core = None if ui is None else ui * steps / (end.wall - start.wall)
    return {"process": process, "engine": engine, "ui": ui, "other": process - engine - (ui or 0.0),
            "ui_core": ui_core}


def bare_loop(preset_path: Path, w: Workload, run_dir: Path) -> tuple[float, dict]:
    """(a) The textbook loop over the same model, optimizer, loss, AMP dtype and batches, all built
    from the same preset by the same builders. Nothing but zero_grad / forward / loss / backward / step."""
    import torch

    from tui_trainer import config
    from tui_trainer.parts import build

    parts = build(config.load(preset_path))
    model, optimizer, loss_fn, device = parts.model, parts.optimizer, parts.loss_fn, parts.device
    amp = parts.amp_dtype
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None
    cuda = device.type == "cuda"
    model.train()
    step, start = 0, None
    for epoch in range(parts.preset.train.epochs):
        parts.data.train_batches.set_epoch(epoch)  # like DistributedSampler.set_epoch: the seeded order
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
            if step == w.warmup or step == w.steps:
                if cuda:
                    torch.cuda.synchronize()  # only at the two ends of the window
                if step == w.warmup:
                    start = Clocks.now()
                else:
                    end = Clocks.now()
                    n = w.steps - w.warmup
                    return n / (end.wall - start.wall), cpu_split(start, end, n)
    raise RuntimeError(f"the data ran out after {step} steps")


@contextlib.contextmanager
def clocks_at_reports(steps: tuple[int, int]):
    """Read the Clocks in the training thread when a StepReport of a step in `steps` = (first, last)
    reaches the run-dir Recorder (the sink that writes events.jsonl, whose time stamps give the
    wall-clock window). Reports are paced (train.log_min_interval_s), so the window is from the first
    report at or after `first` to the last one at or before `last` (`_window`). Patched on the class
    for one run only; costs nothing measurable on the other reports."""
    from tui_trainer.engine.events import StepReport
    from tui_trainer.run import rundir

    taken: dict[int, Clocks] = {}
    original = rundir.Recorder.__call__

    def call(self, event):
        if isinstance(event, StepReport) and steps[0] <= event.step <= steps[1] and event.step not in taken:
            taken[event.step] = Clocks.now()
        return original(self, event)

    rundir.Recorder.__call__ = call
    try:
        yield taken
    finally:
        rundir.Recorder.__call__ = original


def _window(run_dir: Path, w: Workload, taken: dict[int, Clocks]) -> tuple[float, dict]:
    if len(taken) < 2:
        raise RuntimeError(f"{run_dir}: fewer than 2 StepReports reached the recorder in steps {w.warmup}..{w.steps}")
    first, last = min(taken), max(taken)
    return common.window_rate(run_dir, first, last), cpu_split(taken[first], taken[last], last - first)


def engine_headless(preset_path: Path, w: Workload, run_dir: Path) -> tuple[float, dict]:
    """(b) What `tui-trainer PRESET --no-ui --run-dir DIR > log` runs: the real Trainer with the run-dir
    recorder (events.jsonl, metrics.csv), the LineReporter writing its lines to a file, and the
    control socket that `tui-trainer attach` connects to. It trains on the main thread."""
    from tui_trainer.run.headless import run_headless

    with open(run_dir.parent / f"{run_dir.name}.log", "w", encoding="utf-8") as log, \
            clocks_at_reports((w.warmup, w.steps)) as taken:
        code = run_headless(str(preset_path), [], run_dir=str(run_dir), stream=log, serve=True)
    if code != 0:
        raise RuntimeError(f"engine run failed (exit {code}); see {run_dir}/events.jsonl")
    return _window(run_dir, w, taken)


def textual_app(preset_path: Path, w: Workload, run_dir: Path, timeout: float = 1800) -> tuple[float, dict]:
    """(c) The full app, headless under `App.run_test(size=(120, 40))`, until the run finishes; with the
    control socket, as `tui-trainer PRESET` runs it. The UI runs on the main thread, training on a
    worker thread."""
    from tui_trainer.ui.launch import make_app

    with clocks_at_reports((w.warmup, w.steps)) as taken:
        app = asyncio.run(drive_app(make_app, preset_path, run_dir, timeout))
    if app.exit_code != 0:
        raise RuntimeError(f"app run failed (exit {app.exit_code}): {app.final_event}")
    return _window(run_dir, w, taken)


async def drive_app(make_app, preset_path: Path, run_dir: Path, timeout: float, on_running=None):
    """Run the app until the engine's final event; `on_running(app, pilot)` (optional) runs once
    while it trains. Returns the app."""
    app = make_app(str(preset_path), [], run_dir=str(run_dir), paused=False, serve=True)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + timeout
            if on_running is not None:
                await on_running(app, pilot)
            while app.final_event is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the app did not finish the run in {timeout:.0f} s")
                # asyncio.sleep, not pilot.pause: pilot.pause first waits for every widget to
                # process a posted callback and then forces a screen update, 20 times a second,
                # which is work the app does not do in a terminal (it cost c/a about 0.06).
                await asyncio.sleep(0.05)
    except Exception as exc:
        if app.final_event is None:
            raise
        # the run is complete and on disk: measure it, and say loudly that the app broke afterwards
        print(f"  WARNING: the app raised after its run ended: {type(exc).__name__}: {exc}", flush=True)
    return app


VARIANTS = {"a": bare_loop, "b": engine_headless, "c": textual_app}


class Hog:
    """One busy-loop process per CPU this process may run on, for as long as the context lasts."""

    def __init__(self, n: int | None = None):
        self.n = n or common.cpu_count()
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Hog:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.2)  # they are spinning before the first window starts
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)


def spread(values: list[float]) -> float | None:
    """Half the width of the central 80% of the values (p10..p90), relative to their median: "+-x"."""
    if not values:
        return None
    med = common.median(values)
    return (_percentile(values, 90) - _percentile(values, 10)) / 2 / med if med else None


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(w: Workload, windows: int, variants: str, device: str, amp: str, scratch: Path, load: str) -> dict:
    preset = w.write(scratch, device=device, amp=amp)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[dict]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants if v != "a"}
    cpu_ratios: dict[str, list[float]] = {v: [] for v in variants if v != "a"}
    log = []
    for i in range(windows):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        this: dict[str, tuple[float, dict]] = {}
        for v in order:
            run_dir = scratch / f"{w.name}-{load}-{v}-{i}"
            this[v] = VARIANTS[v](preset, w, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            rates[v].append(this[v][0])
            cpus[v].append(this[v][1])
        if "a" in this:
            for v in ratios:
                ratios[v].append(this[v][0] / this["a"][0])
                cpu_ratios[v].append(this["a"][1]["process"] / this[v][1]["process"])
        log.append({v: {"steps_per_s": r, "cpu_s_per_step": c} for v, (r, c) in this.items()})
        print(f"  window {i + 1:>2}/{windows}: " + "  ".join(
            f"{v} {_num(this[v][0])}/s {this[v][1]['process'] * 1e3:.3g} ms" for v in variants), flush=True)
    return {
        "workload": w.name, "load": load, "batch_size": w.batch_size, "window": [w.warmup, w.steps],
        "windows": windows, "log_every": w.log_every,
        "steps_per_s": rates, "median": {v: common.median(r) for v, r in rates.items()},
        "spread": {v: spread(r) for v, r in rates.items()},
        "cpu_ms_per_step": {v: {part: _median_ms([c[part] for c in cs]) for part in PARTS} for v, cs in cpus.items()},
        "cpu_spread": {v: spread([c["process"] for c in cs]) for v, cs in cpus.items()},
        "ui_core_share": {v: common.median([c["ui_core"] for c in cs if c["ui_core"] is not None])
                          for v, cs in cpus.items()},
        "ratio": {v: common.median(r) for v, r in ratios.items()},
        "ratio_spread": {v: spread(r) for v, r in ratios.items()},
        "cpu_ratio": {v: common.median(r) for v, r in cpu_ratios.items()},
        "cpu_ratio_spread": {v: spread(r) for v, r in cpu_ratios.items()},
        "ratios_per_window": ratios, "cpu_ratios_per_window": cpu_ratios,
        "noise": noise(rates.get("a", [])),
        "per_window": log,
    }


def noise(bare_rates: list[float]) -> dict:
    """The verdict on the machine: how far the bare loop's windows spread (see `spread`)."""
    s = spread(bare_rates)
    noisy = s is not None and s > NOISE_LIMIT
    verdict = NOISY if noisy else "quiet enough: wall-clock ratios usable" if s is not None else "no bare loop measured"
    return {"bare_spread": s, "limit": NOISE_LIMIT, "noisy": noisy, "verdict": verdict}


def _median_ms(values):
    values = [v for v in values if v is not None]
    return common.median(values) * 1e3 if values else None


def report(result: dict) -> None:
    goals = GOALS.get(result["workload"], {})
    print(f"  {'variant':<22} {'steps/s':>9} {'spread':>7}  {'CPU ms/step':>11} {'spread':>7}"
          f"  split: training thread / UI thread / other threads")
    for v, med in result["median"].items():
        cpu = result["cpu_ms_per_step"][v]
        ui = "-" if cpu["ui"] is None else f"{cpu['ui']:.3f}"
        print(f"  {NAMES[v]:<22} {_num(med):>9} {_pm(result['spread'][v]):>7}  {cpu['process']:>11.3f}"
              f" {_pm(result['cpu_spread'][v]):>7}  {cpu['engine']:.3f} / {ui} / {max(cpu['other'], 0.0):.3f}"
              + (f"  (UI: {result['ui_core_share'][v]:.1%} of a core)" if result["ui_core_share"][v] else ""))
    for v, ratio in result["ratio"].items():
        cpu_ratio, goal = result["cpu_ratio"][v], goals.get(v)
        line = (f"  {v}/a  wall {ratio:.3f} {_pm(result['ratio_spread'][v])}   "
                f"CPU {cpu_ratio:.3f} {_pm(result['cpu_ratio_spread'][v])}")
        if goal:
            line += (f"   goal >= {goal}: wall {'met' if ratio >= goal else 'MISSED'},"
                     f" CPU {'met' if cpu_ratio >= goal else 'MISSED'}")
        print(line)
    noise = result["noise"]
    print(f"  noise: the bare loop's windows spread {_pm(noise['bare_spread'])} (limit +-{noise['limit']:.0%}): "
          f"{noise['verdict']}")


def compare(quiet: dict, loaded: dict) -> dict:
    """The CPU-time ratios (and for contrast the wall-clock ones), quiet against loaded."""
    rows = {}
    for v in quiet["cpu_ratio"]:
        q, h = quiet["cpu_ratio"][v], loaded["cpu_ratio"][v]
        qw, hw = quiet["ratio"][v], loaded["ratio"][v]
        rows[v] = {"cpu_quiet": q, "cpu_loaded": h, "cpu_change": h / q - 1, "wall_quiet": qw, "wall_loaded": hw,
                   "wall_change": hw / qw - 1, "cpu_within": abs(h / q - 1) <= STABLE_WITHIN}
    out = {"workload": quiet["workload"], "goal": STABLE_WITHIN, "ratios": rows,
           "held": all(r["cpu_within"] for r in rows.values())}
    print(f"{quiet['workload']}: quiet against loaded (goal: CPU-time ratios agree within +-{STABLE_WITHIN:.0%})")
    for v, r in rows.items():
        print(f"  {v}/a  CPU {r['cpu_quiet']:.3f} -> {r['cpu_loaded']:.3f} ({r['cpu_change']:+.1%}:"
              f" {'within' if r['cpu_within'] else 'OUTSIDE'})   wall {r['wall_quiet']:.3f} -> {r['wall_loaded']:.3f}"
              f" ({r['wall_change']:+.1%})")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--windows", "--reps", dest="windows", type=int, default=None,
                   help="alternating windows per variant (default: tiny 15, resnet18 5; 2 with --quick)")
    p.add_argument("--window", type=int, default=None,
                   help="steps measured per window (default: tiny 1000, resnet18 20); warm-up is extra")
    p.add_argument("--variants", default="abc", help="which of a, b, c to run (default abc)")
    p.add_argument("--amp", default="off", help='preset train.amp for every variant (default "off")')
    p.add_argument("--log-every", type=int, default=None,
                   help="override the workloads' train.log_every (tiny 10, resnet18 5); a multiple of it is measured")
    p.add_argument("--hog", action="store_true",
                   help="measure quiet, then again next to one busy-loop process per CPU, and compare the ratios")
    args = p.parse_args(argv)
    threads = common.set_threads(args)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    loads = ["quiet", "hog"] if args.hog else ["quiet"]
    results = {"versions": common.versions(), "threads": threads, "device": args.device, "amp": args.amp,
               "quick": args.quick, "hog": args.hog, "workloads": [], "quiet_vs_loaded": []}
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        for name in names:
            w = WORKLOADS[name]
            shape = WINDOWS.get(name, {"warmup": w.warmup, "steps": w.steps, "windows": 5})
            steps = shape["warmup"] + args.window if args.window else shape["steps"]
            w = replace(w, warmup=shape["warmup"], steps=steps)
            if args.log_every:
                w = replace(w, log_every=args.log_every, warmup=_round_up(w.warmup, args.log_every),
                            steps=_round_up(w.steps, args.log_every))
            w = quick(w) if args.quick else w
            windows = args.windows or (2 if args.quick else shape["windows"])
            by_load = {}
            for load in loads:
                print(f"{name} ({load}{f', {common.cpu_count()} busy-loop processes' if load == 'hog' else ''}):"
                      f" batch {w.batch_size}, steps {w.warmup}..{w.steps} measured, log_every {w.log_every},"
                      f" {args.device}, amp {args.amp}, {threads} thread(s), {windows} windows", flush=True)
                with Hog() if load == "hog" else contextlib.nullcontext():
                    result = measure(w, windows, args.variants, args.device, args.amp, Path(tmp), load)
                report(result)
                results["workloads"].append(result)
                by_load[load] = result
            if args.hog and "a" in args.variants and len(args.variants) > 1:
                results["quiet_vs_loaded"].append(compare(by_load["quiet"], by_load["hog"]))
    results["noisy"] = any(r["noise"]["noisy"] for r in results["workloads"])
    common.write_json(args.json, results)
    return results


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.3g}"


def _pm(x: float | None) -> str:
    return "-" if x is None else f"+-{x:.1%}"


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


if __name__ == "__main__":
    main()
