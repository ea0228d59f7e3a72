"""The UI never slows the trainer, and key latency, measured on the app (`tui_trainer.ui.launch.make_app`).

    python benchmarks/ui_latency.py
    python benchmarks/ui_latency.py --quick

The app runs headless under `App.run_test(size=(120, 40))`, training the tiny workload on a run long
enough to outlast the measurements; steps/s come from the engine's own StepReport time stamps in
the run's events.jsonl, so the measuring never goes through the UI being measured.

1. Blocked UI: `run_test` runs this coroutine on the app's event loop, so a plain `time.sleep(2)`
   here blocks the app (no timer, no message, no redraw) while the trainer thread goes on. The
   trainer's steps/s inside that window is compared with the 2 s before and the 2 s after; the
   design (the engine never waits on a reader) says it stays within a few percent.
2. Key latency: press `l` (LR x factor) and `L` (undo) alternately, delivered as the terminal
   driver delivers a key (a Key message to the app); the latency of a press is the time from just
   before it is posted to the engine's time stamp on the LrChanged event it caused,
   i.e. to the command being applied between two steps. Median and max over N presses.
Then `q` stops the run (the final checkpoint is part of the app's run, not measured).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import TINY  # noqa: E402

LR_DOWN, LR_UP, STOP = "l", "L", "q"  # the app's keys
RECORDER_LAG_S = 0.2  # let the last reports of a window reach events.jsonl
PRESS_GAP_S = 0.3  # > 2 UI ticks at 10 Hz: `L` undoes only once the app has seen the last change


def press(app, key: str) -> None:
    """A key as the terminal driver delivers it (a Key message to the app). Not `pilot.press`: that
    also waits for the app to go idle and for running animations to end, seconds in a busy app."""
    from textual import events

    app.post_message(events.Key(key, key if len(key) == 1 else None))


async def measure(app, pilot, run_dir: Path, *, window_s: float, presses: int, out: dict) -> None:
    tail = common.EventTail(run_dir / "events.jsonl")
    # under way: the first reports are in
    while len(tail.poll().reports) < 5:
        if app.final_event is not None:
            raise RuntimeError(f"the run ended before the measurements: {app.final_event}")
        await asyncio.sleep(PRESS_GAP_S)

    # 1. a blocked event loop must not slow the trainer
    t0 = time.time()
    await asyncio.sleep(window_s)  # the app runs normally
    t1 = time.time()
    time.sleep(window_s)  # the app's loop is blocked: nothing of the UI runs
    t2 = time.time()
    await asyncio.sleep(window_s)
    t3 = time.time()
    await asyncio.sleep(RECORDER_LAG_S)  # every report stamped before t3 is on disk now
    tail.poll()
    before, blocked, after = (tail.rate_between(a, b) for a, b in ((t0, t1), (t1, t2), (t2, t3)))
    out["blocked"] = {"window_s": window_s, "before": before, "blocked": blocked, "after": after,
                      "ratio": blocked / statistics.mean([before, after]) if before and after and blocked else None}

    # 2. key press -> command applied
    latencies = []
    for i in range(presses):
        seen = len(tail.poll().manual_lr)
        t_press = time.time()
        press(app, LR_DOWN if i % 2 == 0 else LR_UP)
        while len(tail.poll().manual_lr) <= seen:
            if time.time() - t_press > 10:
                raise TimeoutError(f"key {i}: no LrChanged within 10 s")
            await asyncio.sleep(0.001)
        latencies.append(tail.manual_lr[seen] - t_press)
        await asyncio.sleep(PRESS_GAP_S)
    out["key_latency_s"] = {"n": presses, "median": statistics.median(latencies), "max": max(latencies),
                            "all": latencies}
    tail.close()
    await pilot.press(STOP)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--presses", type=int, default=None, help="key presses for the latency (default 40; 6 quick)")
    args = p.parse_args(argv)
    threads = common.set_threads(args)
    result: dict = {"versions": common.versions(), "threads": threads, "quick": args.quick}
    from benchmarks.throughput import drive_app
    from tui_trainer.ui.launch import make_app

    window_s = 0.5 if args.quick else 2.0
    presses = args.presses or (6 if args.quick else 40)
    w = replace(TINY, steps=50_000 if args.quick else 200_000)  # outlasts the measurements; `q` ends it
    with tempfile.TemporaryDirectory(prefix="tui-ui-") as tmp:
        preset, run_dir = w.write(Path(tmp), device=args.device), Path(tmp) / "run"

        async def during(app, pilot):
            await measure(app, pilot, run_dir, window_s=window_s, presses=presses, out=result)

        app = asyncio.run(drive_app(make_app, preset, run_dir, timeout=600, on_running=during))
        result["exit_code"] = app.exit_code
    b, k = result["blocked"], result["key_latency_s"]
    fmt = lambda v: f"{v:,.1f}" if v is not None else "n/a"  # noqa: E731
    print(f"blocked UI loop ({window_s:g} s): trainer {fmt(b['blocked'])} steps/s vs {fmt(b['before'])} before,"
          f" {fmt(b['after'])} after -> ratio {b['ratio']:.3f}" if b["ratio"] else "blocked UI loop: too few reports")
    print(f"key -> command applied: median {k['median'] * 1e3:.1f} ms, max {k['max'] * 1e3:.1f} ms ({k['n']} presses)")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
