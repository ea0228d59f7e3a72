"""Where the engine's overhead goes, measured in place: CPU time of each part of the loop around the
textbook step, per call and per step, while the real engine (as `--no-ui` runs it: recorder, log
line, control socket) trains the tiny workload.

    python benchmarks/step_costs.py                  # the table
    python benchmarks/step_costs.py --pyinstrument   # the same run under pyinstrument (pip install -e .[bench])

Why this exists next to throughput.py: on a shared machine the end-to-end ratio b/a moves by
several percent from run to run, more than the overhead being hunted. Thread CPU time of the
engine's own methods, summed over a run, is far steadier. It is also the honest number: code that
runs once every 10 steps runs with cold caches (the step in between evicted it), and costs several
times what a warm micro-benchmark of it says. Each wrapped call adds ~1 us of timer overhead,
which inflates the small per-step items (`_between_steps`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import TINY  # noqa: E402

METHODS = ("_between_steps", "_step", "_report", "_end_epoch", "_train_mode", "_save")


def measure(steps: int, log_every: int | None, device: str, scratch: Path, pyinstrument: bool = False) -> dict:
    from tui_trainer.run import rundir, server
    from tui_trainer.run.headless import LineReporter
    from tui_trainer.run.launch import prepare

    clock = time.thread_time_ns
    spent: dict[str, list[int]] = {}

    def timed(name, call):
        def wrapper(*args, **kwargs):
            t0 = clock()
            try:
                return call(*args, **kwargs)
            finally:
                entry = spent.setdefault(name, [0, 0])
                entry[0] += clock() - t0
                entry[1] += 1
        return wrapper

    w = replace(TINY, steps=steps, log_every=log_every or TINY.log_every)
    preset = w.write(scratch, device=device)
    with open(scratch / "log.txt", "w", encoding="utf-8") as log:
        reporter = LineReporter(log)
        patched = [(rundir.Recorder, "__call__", "sink: Recorder"),
                   (server.ControlServer, "__call__", "sink: ControlServer")]
        originals = [(cls, attr, getattr(cls, attr)) for cls, attr, _ in patched]
        for cls, attr, name in patched:  # patched for this run only
            setattr(cls, attr, timed(name, getattr(cls, attr)))
        try:
            session = prepare(str(preset), [], run_dir=scratch / "run", sinks=[timed("sink: LineReporter", reporter)],
                              serve=True)
            trainer = session.trainer
            for name in METHODS:
                setattr(trainer, name, timed(name, getattr(trainer, name)))
            profiler = None
            if pyinstrument:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002)
                profiler.start()
            t0 = clock()
            trainer.run()
            total = clock() - t0
            if profiler is not None:
                profiler.stop()
            session.close()
        finally:
            for cls, attr, original in originals:
                setattr(cls, attr, original)
    done = trainer.step
    rows = {name: {"calls": n, "us_per_call": ns / n / 1e3, "us_per_step": ns / done / 1e3}
            for name, (ns, n) in spent.items()}
    result = {"steps": done, "log_every": w.log_every, "batch_size": w.batch_size,
              "us_per_step_total": total / done / 1e3, "parts": rows}
    if profiler is not None:
        result["pyinstrument"] = profiler.output_text(unicode=False, color=False, show_all=False)
    return result


def report(r: dict) -> None:
    print(f"tiny workload, {r['steps']} steps, log_every {r['log_every']}: {r['us_per_step_total']:.1f} us CPU per step"
          f" in Trainer.run")
    print(f"  {'part':<20} {'calls':>7} {'us/call':>9} {'us/step':>8}  (of which the step itself is `_step`)")
    for name, row in sorted(r["parts"].items(), key=lambda kv: -kv[1]["us_per_step"]):
        print(f"  {name:<20} {row['calls']:>7} {row['us_per_call']:>9.1f} {row['us_per_step']:>8.2f}")
    outside = r["us_per_step_total"] - sum(r["parts"].get(n, {}).get("us_per_step", 0.0) for n in ("_step", "_save"))
    print(f"  (rows nest: _end_epoch includes its _report, _report includes the sinks)\n"
          f"  the loop outside _step and the final save: {outside:.1f} us/step"
          f" = {100 * outside / r['us_per_step_total']:.1f}% (fetching the batch included: the bare loop pays that too)")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps of the run (default 3000; 300 with --quick)")
    p.add_argument("--log-every", type=int, default=None, help=f"override the workload's {TINY.log_every}")
    p.add_argument("--pyinstrument", action="store_true", help="also profile the run with pyinstrument")
    args = p.parse_args(argv)
    threads = common.set_threads(args)
    with tempfile.TemporaryDirectory(prefix="tui-costs-") as tmp:
        result = measure(args.steps or (300 if args.quick else 3000), args.log_every, args.device, Path(tmp),
                         args.pyinstrument)
    result["threads"] = threads
    report(result)
    if args.pyinstrument:
        print(result["pyinstrument"])
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
