"""Step throughput: (a) a bare PyTorch loop, (b) the tui-trainer engine headless (`--no-ui`), (c) the
Textual app driven headless; steps/s and the ratios b/a and c/a.

    python benchmarks/throughput.py                 # both workloads, 5 alternating repetitions
    python benchmarks/throughput.py --quick         # smoke: a few steps

Each repetition runs every variant once, in a rotating order (a b c, b c a, c a b, ...), so slow
drift of a shared machine hits all of them alike. Steps/s is measured over the window from step
`warmup` to the last step; the ratios are the median of the per-repetition ratios (each pair ran
back to back). See workloads.py for why the three variants do the same work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload, quick  # noqa: E402

GOALS = {"tiny": {"b": 0.99, "c": 0.97}, "resnet18": {"b": 0.99, "c": 0.99}}
NAMES = {"a": "a bare PyTorch loop", "b": "b engine, --no-ui", "c": "c Textual app"}


def bare_loop(preset_path: Path, w: Workload, run_dir: Path) -> float:
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
    step, t0 = 0, 0.0
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
                    t0 = time.perf_counter()
                else:
                    return (w.steps - w.warmup) / (time.perf_counter() - t0)
    raise RuntimeError(f"the data ran out after {step} steps")


def engine_headless(preset_path: Path, w: Workload, run_dir: Path) -> float:
    """(b) What `tui-trainer PRESET --no-ui --run-dir DIR > log` runs: the real Trainer with the run-dir
    recorder (events.jsonl, metrics.csv), the LineReporter writing its lines to a file, and the
    control socket that `tui-trainer attach` connects to."""
    from tui_trainer.run.headless import run_headless

    with open(run_dir.parent / f"{run_dir.name}.log", "w", encoding="utf-8") as log:
        code = run_headless(str(preset_path), [], run_dir=str(run_dir), stream=log, serve=True)
    if code != 0:
        raise RuntimeError(f"engine run failed (exit {code}); see {run_dir}/events.jsonl")
    return common.window_rate(run_dir, w.warmup, w.steps)


def textual_app(preset_path: Path, w: Workload, run_dir: Path, timeout: float = 1800) -> float:
    """(c) The full app, headless under `App.run_test(size=(120, 40))`, until the run finishes; with the
    control socket, as `tui-trainer PRESET` runs it."""
    from tui_trainer.ui.launch import make_app

    app = asyncio.run(drive_app(make_app, preset_path, run_dir, timeout))
    if app.exit_code != 0:
        raise RuntimeError(f"app run failed (exit {app.exit_code}): {app.final_event}")
    return common.window_rate(run_dir, w.warmup, w.steps)


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


def measure(w: Workload, reps: int, variants: str, device: str, amp: str, scratch: Path) -> dict:
    preset = w.write(scratch, device=device, amp=amp)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants if v != "a"}
    for rep in range(reps):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        this: dict[str, float] = {}
        for v in order:
            run_dir = scratch / f"{w.name}-{v}-{rep}"
            rate = VARIANTS[v](preset, w, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            this[v] = rate
            rates[v].append(rate)
        for v in ratios:
            if v in this and "a" in this:
                ratios[v].append(this[v] / this["a"])
        print(f"  rep {rep + 1}/{reps}: " + "  ".join(f"{v} {_num(this[v])}" for v in variants if v in this),
              flush=True)
    return {"workload": w.name, "batch_size": w.batch_size, "window": [w.warmup, w.steps], "log_every": w.log_every,
            "steps_per_s": {v: r for v, r in rates.items() if r}, "median": {v: common.median(r) for v, r in rates.items()},
            "ratio": {v: common.median(r) for v, r in ratios.items()}}


def report(result: dict) -> None:
    goals = GOALS.get(result["workload"], {})
    for v, med in result["median"].items():
        runs = result["steps_per_s"][v]
        line = f"  {NAMES[v]:<22} {_num(med):>10} steps/s  (min {_num(min(runs))}, max {_num(max(runs))})"
        if v != "a" and result["ratio"].get(v) is not None:
            ratio, goal = result["ratio"][v], goals.get(v)
            line += f"  {v}/a = {ratio:.3f}"
            if goal:
                line += f"  goal >= {goal}: {'met' if ratio >= goal else 'MISSED'}"
        print(line)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--reps", type=int, default=None, help="alternating repetitions (default 5; 2 with --quick)")
    p.add_argument("--variants", default="abc", help="which of a, b, c to run (default abc)")
    p.add_argument("--amp", default="off", help='preset train.amp for every variant (default "off")')
    p.add_argument("--log-every", type=int, default=None,
                   help="override the workloads' train.log_every (tiny 10, resnet18 5); a multiple of it is measured")
    args = p.parse_args(argv)
    threads = common.set_threads(args)
    reps = args.reps or (2 if args.quick else 5)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results = {"versions": common.versions(), "threads": threads, "device": args.device, "amp": args.amp,
               "reps": reps, "quick": args.quick, "workloads": []}
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        for name in names:
            w = WORKLOADS[name]
            if args.log_every:
                w = replace(w, log_every=args.log_every, warmup=_round_up(w.warmup, args.log_every),
                            steps=_round_up(w.steps, args.log_every))
            w = quick(w) if args.quick else w
            print(f"{name}: batch {w.batch_size}, steps {w.warmup}..{w.steps} measured, log_every {w.log_every},"
                  f" {args.device}, amp {args.amp}, {threads} thread(s), {reps} reps", flush=True)
            result = measure(w, reps, args.variants, args.device, args.amp, Path(tmp))
            report(result)
            results["workloads"].append(result)
    common.write_json(args.json, results)
    return results


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.3g}"


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


if __name__ == "__main__":
    main()
