"""Step forms: what a custom `[step] fn` and dict batches cost per step, next to the default
classifier step on (x, y) batches, in the headless engine on the tiny workload.

    python benchmarks/step_forms.py                   # 30 alternating windows of 1,000 steps each
    python benchmarks/step_forms.py --forms default,dict,dict_loss,acc2   # + accumulation (see below)
    python benchmarks/step_forms.py --quick           # smoke: a few steps

Every form is the engine headless, exactly as throughput.py's variant (b) runs it
(`run_headless(..., serve=True)`: the real Trainer, the run-dir recorder, the LineReporter, the
control socket), with the same model, seed, optimizer and digits, preloaded (workloads.py):

  default    the built-in digits as (x, y) batches, the default step
  dict       the same digits as dict samples {"image": x, "label": y} (a dataset factory), and a
             user step returning {"loss", "outputs", "targets"}
  dict_loss  the same dict batches, a user step returning the loss alone
  acc2       (opt-in) the default step at batch 16 with train.accumulate = 2: two forward/backward
             passes per optimizer step. NOT the same work as `default` (two half batches cost
             more than one whole one on any hardware), so its ratio is the price of accumulation
             plus that, never a verdict on the engine; it is reported apart.

A window is one short run of every form, in a rotating order; CPU time and wall time are taken per
step from step `warmup` to the last step (throughput.py's clocks), and the ratio of each form to
`default` is taken within the window (adjacent runs see the same machine). The cost ratio is
(form's process CPU per step) / (default's): 1.0 is the same, 1.01 is 1% dearer; the wall ratio is
(default's steps/s) / (form's). Reported: the median over the windows, the spread (half the p10..p90
range, relative), and a bootstrap 95% interval of the median, which the verdict on the 1% goal uses:
met when the whole interval is <= 1.01, MISSED when all of it is above, else not resolved at this
noise (and no verdict from fewer than 10 windows). The first window also checks that the forms train identically: same per-step losses.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.throughput import WINDOWS, engine_headless, spread  # noqa: E402
from benchmarks.workloads import TINY, TINY_ACC2, TINY_DICT, TINY_DICT_LOSS, quick  # noqa: E402

FORMS = {"default": TINY, "dict": TINY_DICT, "dict_loss": TINY_DICT_LOSS, "acc2": TINY_ACC2}
NAMES = {"default": "default step, (x, y) batches", "dict": "dict_step, dict batches",
         "dict_loss": "dict_step_loss, dict batches", "acc2": "default step, batch 16, accumulate 2"}
BASE = "default"
SAME_WORK = ("dict", "dict_loss")  # the forms that do the same work as `default`: the 1% goal is theirs
GOAL = 0.01  # a custom step and dict batches cost <= 1% more per step
DEFAULT_WINDOWS = 30
MIN_WINDOWS = 10  # fewer windows give no verdict: their interval says little about a 1% difference


def bootstrap_median(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """A 95% interval of the median: medians of `n` resamples (seeded, so a report repeats)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    meds = sorted(common.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def bootstrap_pooled(rounds: list[list[float]], n: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """A 95% interval of the median of every round's values pooled, where a round is one run and the
    runs differ by more than their own values say (the host's state changes between runs): each
    resample draws the rounds with replacement, then each drawn round's values with replacement."""
    rounds = [r for r in rounds if r]
    if len(rounds) < 2:
        return bootstrap_median(rounds[0], n, seed) if rounds else None
    rng = random.Random(seed)
    meds = []
    for _ in range(n):
        pool: list[float] = []
        for r in rng.choices(rounds, k=len(rounds)):
            pool += rng.choices(r, k=len(r))
        meds.append(common.median(pool))
    meds.sort()
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


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


def _losses(run_dir: Path) -> list[float]:
    return [loss for r in common.step_reports(run_dir) for loss in r.losses]


def measure(forms: list[str], windows: int, device: str, scratch: Path, warmup: int, steps: int) -> dict:
    presets = {}
    works = {}
    for f in forms:
        w = replace(FORMS[f], warmup=warmup, steps=steps)
        works[f] = w
        presets[f] = w.write(scratch, device=device)
    rates: dict[str, list[float]] = {f: [] for f in forms}
    cpus: dict[str, list[float]] = {f: [] for f in forms}
    cost: dict[str, list[float]] = {f: [] for f in forms if f != BASE}
    wall: dict[str, list[float]] = {f: [] for f in forms if f != BASE}
    same_losses: dict[str, bool] = {}
    loads = []
    for i in range(windows):
        order = forms[i % len(forms):] + forms[:i % len(forms)]
        this = {}
        losses = {}
        for f in order:
            run_dir = scratch / f"{f}-{i}"
            this[f] = engine_headless(presets[f], works[f], run_dir)
            if i == 0:
                losses[f] = _losses(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            rates[f].append(this[f][0])
            cpus[f].append(this[f][1]["process"])
        for f in cost:
            cost[f].append(this[f][1]["process"] / this[BASE][1]["process"])
            wall[f].append(this[BASE][0] / this[f][0])
        if i == 0:
            same_losses = {f: losses[f] == losses[BASE] for f in SAME_WORK if f in losses}
        loads.append(os.getloadavg()[0])
        print(f"  window {i + 1:>2}/{windows}: " + "  ".join(
            f"{f} {this[f][0]:,.1f}/s {this[f][1]['process'] * 1e3:.4g} ms" for f in forms)
            + f"  (load {loads[-1]:.2f})", flush=True)
    result = {
        "forms": forms, "windows": windows, "window": [warmup, steps], "batch_size": {f: works[f].batch_size for f in forms},
        "accumulate": {f: works[f].accumulate for f in forms}, "goal": GOAL,
        "steps_per_s": rates, "cpu_s_per_step": cpus,
        "median": {f: common.median(r) for f, r in rates.items()}, "spread": {f: spread(r) for f, r in rates.items()},
        "cpu_ms": {f: common.median(c) * 1e3 for f, c in cpus.items()},
        "cpu_spread": {f: spread(c) for f, c in cpus.items()},
        "cost_per_window": cost, "wall_per_window": wall,
        "cost": {}, "load_1min": {"min": min(loads), "median": common.median(loads), "max": max(loads)},
        "same_losses": same_losses,
    }
    for f in cost:
        c_med, w_med = common.median(cost[f]), common.median(wall[f])
        c_ci = bootstrap_median(cost[f])
        w_ci = bootstrap_median(wall[f])
        result["cost"][f] = {
            "cpu": c_med, "cpu_spread": spread(cost[f]), "cpu_ci95": c_ci,
            "wall": w_med, "wall_spread": spread(wall[f]), "wall_ci95": w_ci,
            "same_work": f in SAME_WORK,
            "verdict": verdict(c_ci, c_med, len(cost[f])) if f in SAME_WORK else "not the same work: no verdict",
            "wall_verdict": verdict(w_ci, w_med, len(wall[f])) if f in SAME_WORK else "not the same work: no verdict",
        }
    return result


def report(result: dict) -> None:
    print(f"  {'form':<38} {'steps/s':>9} {'spread':>7}  {'CPU ms/step':>11} {'spread':>7}")
    for f in result["forms"]:
        print(f"  {NAMES[f]:<38} {result['median'][f]:>9,.1f} {_pm(result['spread'][f]):>7}"
              f"  {result['cpu_ms'][f]:>11.4f} {_pm(result['cpu_spread'][f]):>7}")
    for f, c in result["cost"].items():
        print(f"  {f}/default per step: CPU {c['cpu']:.4f} {_pm(c['cpu_spread'])} (95% CI {_ci(c['cpu_ci95'])})"
              f"   wall {c['wall']:.4f} {_pm(c['wall_spread'])} (95% CI {_ci(c['wall_ci95'])})")
        if c["same_work"]:
            print(f"    goal <= {1 + GOAL:.2f}: CPU {c['verdict']}; wall {c['wall_verdict']}")
        else:
            print("    not the same work as default (two half batches per optimizer step): no verdict")
    for f, same in result["same_losses"].items():
        print(f"  {f}: per-step losses {'identical to' if same else 'DIFFERENT from'} default's (first window)")
    load = result["load_1min"]
    print(f"  load average (1 min) after each window: min {load['min']:.2f}, median {load['median']:.2f},"
          f" max {load['max']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--forms", default="default,dict,dict_loss",
                   help="comma-separated, default first: default, dict, dict_loss, acc2 (default: the first three)")
    p.add_argument("--windows", type=int, default=None, help=f"alternating windows (default {DEFAULT_WINDOWS}; 2 with --quick)")
    p.add_argument("--window", type=int, default=None, help="steps measured per window (default 1000); warm-up is extra")
    args = p.parse_args(argv)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    unknown = [f for f in forms if f not in FORMS]
    if unknown or not forms or forms[0] != BASE or len(set(forms)) != len(forms):
        p.error(f"--forms: {BASE} first, then any of {', '.join(f for f in FORMS if f != BASE)}")
    threads = common.set_threads(args)
    shape = WINDOWS["tiny"]
    warmup = shape["warmup"]
    steps = warmup + (args.window or shape["steps"] - shape["warmup"])
    if args.quick:
        q = quick(TINY)
        warmup, steps = q.warmup, q.steps
    windows = args.windows or (2 if args.quick else DEFAULT_WINDOWS)
    print(f"step forms (tiny, engine --no-ui): steps {warmup}..{steps} measured, log_every {TINY.log_every},"
          f" {args.device}, {threads} thread(s), {windows} windows; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tui-forms-") as tmp:
        result = measure(forms, windows, args.device, Path(tmp), warmup, steps)
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
