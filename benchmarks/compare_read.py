"""What `tui-trainer compare` pays to read a run: opening a long run's events.jsonl once, and each
one-second poll of a live run afterwards, against reading the whole file again (what a viewer that
re-reads would pay every second). Also the memory a long run's curves keep (bounded).

    python benchmarks/compare_read.py [--steps 1000000] [--log-every 10] [--polls 200]

The run is synthetic but written in the recorder's own format (Event.json_line of real event
classes): `steps` steps reported every `log_every`, an EpochEnd every 1,000 steps.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui_trainer.engine.events import EpochEnd, StepReport  # noqa: E402
from tui_trainer.run.history import RunHistory, open_runs  # noqa: E402
from tui_trainer.run.rundir import read_events  # noqa: E402


def write_run(path: Path, steps: int, log_every: int, spe: int = 1000) -> None:
    from tests.helpers.history import history  # the fixed UI history: a real RunStarted

    started = next(e for e in history() if type(e).__name__ == "RunStarted")
    path.mkdir(parents=True)
    (path / "config.toml").write_text('name = "bench"\n[optimizer]\nlr = 0.1\n')
    with open(path / "events.jsonl", "w") as f:
        f.write(started.json_line + "\n")
        for last in range(log_every, steps + 1, log_every):
            first = last - log_every + 1
            losses = tuple(2.0 / (1 + s / 1e4) for s in range(first, last + 1))
            epoch = (last - 1) // spe + 1
            f.write(StepReport(last, epoch, first, losses, (0.1,), 1000.0, 1.0).json_line + "\n")
            if last % spe == 0:
                f.write(EpochEnd(epoch, last, 1.0, 1.0, 0.5, 1.0, "val_loss", 1.0, 1.0, epoch, True, 0, None,
                                 metrics={"val_f1": 0.5}).json_line + "\n")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--polls", type=int, default=200)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        write_run(a, args.steps, args.log_every)
        write_run(b, 1000, args.log_every)
        size = (a / "events.jsonl").stat().st_size
        rss0 = rss_mib()
        t0 = time.perf_counter()
        runs = open_runs([a, b])
        opened = time.perf_counter() - t0
        rss1 = rss_mib()
        run = runs[0]
        # a live run: one report appended per poll, then the poll
        line = StepReport(args.steps + 10, 1, args.steps + 1, (1.0,) * 10, (0.1,), 1000.0, 1.0).json_line + "\n"
        polls = []
        for _ in range(args.polls):
            with open(a / "events.jsonl", "a") as f:
                f.write(line)
            t = time.perf_counter()
            run.poll()
            polls.append(time.perf_counter() - t)
        idle = []
        for _ in range(args.polls):
            t = time.perf_counter()
            run.poll()
            idle.append(time.perf_counter() - t)
        t = time.perf_counter()
        events = read_events(a / "events.jsonl")
        reread = time.perf_counter() - t
        fresh = RunHistory(a)
        t = time.perf_counter()
        while True:
            fresh.poll()
            if not fresh._tail.behind:
                break
        reread_history = time.perf_counter() - t
    out = {
        "steps": args.steps, "events_mib": size / 2**20, "lines": len(events),
        "open_s": opened, "rss_after_open_mib": rss1, "rss_growth_mib": rss1 - rss0,
        "curve_points": len(run.train), "curve_stride": run.train.stride,
        "poll_one_report_us": statistics.median(polls) * 1e6, "poll_nothing_new_us": statistics.median(idle) * 1e6,
        "reread_whole_file_s (read_events)": reread, "reread_whole_file_s (RunHistory)": reread_history,
    }
    for k, v in out.items():
        print(f"{k:36} {v:.4g}" if isinstance(v, float) else f"{k:36} {v}")
    return out


if __name__ == "__main__":
    main()
