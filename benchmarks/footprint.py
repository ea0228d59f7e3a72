"""Footprint: resident memory over a million steps, `tui-trainer --help` time, time to first step.

    python benchmarks/footprint.py             # 10k / 100k / 1M steps (minutes), help x10, first step x3
    python benchmarks/footprint.py --quick     # a smoke run: seconds

1. Memory: the real CLI (`python -m tui_trainer PRESET --no-ui`, log lines to a file) trains the
   micro workload; this process tails the run's events.jsonl for the step count and reads the
   child's RSS (psutil) as the run passes each milestone. Growth between milestones must stay
   bounded: the engine keeps no per-step history (losses since the last report only), the
   recorder writes through to disk. The app's RSS is measured the same way with the app
   (`tui_trainer.ui.launch.make_app`) in a child process.
2. `tui-trainer --help`: wall time of the console script (torch must not be imported), against
   `python -c pass` and `python -c "import torch"` for scale; median of N.
3. Time to first step: wall time from just before the process is spawned to the engine's
   timestamp on the first StepReport of `presets/resnet18_finetune.toml` run with
   `--no-ui --set train.log_every=1` (so the first report is step 1's). That covers interpreter
   start, imports, building the data, the model and its weights (or the offline fallback), the
   LR plan, the DataLoader workers' start and the first optimizer step; also shown: the time to
   RunStarted (everything but the step). The process is then killed; median of N.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import MICRO  # noqa: E402

ROOT = common.ROOT
MIB = 1024 * 1024


THREADS: int | None = None  # torch threads of the children (--threads)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)  # torch's intra-op threads in the child
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def memory_run(cmd: list[str], run_dir: Path, milestones: list[int], timeout: float) -> dict:
    """Start `cmd`, record the child's RSS as the run passes each milestone (step counts)."""
    import psutil

    log = open(run_dir.parent / f"{run_dir.name}.log", "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    child = psutil.Process(proc.pid)
    tail = common.EventTail(run_dir / "events.jsonl")
    rows, todo, peak, t0 = [], list(milestones), 0, time.monotonic()
    try:
        while proc.poll() is None and todo:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{cmd}: not at step {todo[0]} after {timeout:.0f} s (at {tail.step})")
            time.sleep(0.1)
            tail.poll()
            try:
                rss = child.memory_info().rss
            except psutil.NoSuchProcess:
                break
            peak = max(peak, rss)
            while todo and tail.step >= todo[0]:
                size = sum(f.stat().st_size for f in run_dir.glob("*") if f.is_file())
                rows.append({"milestone": todo.pop(0), "step": tail.step, "rss": rss, "run_dir_bytes": size,
                             "seconds": time.monotonic() - t0})
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # past the last milestone: stop (it saves, exits 143)
        code = proc.wait(timeout=max(60.0, timeout - (time.monotonic() - t0)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tail.close()
        log.close()
    return {"rows": rows, "peak_rss": peak, "exit_code": code, "missing": todo}


def app_child(preset: str, run_dir: str) -> int:
    """`footprint.py --app-child PRESET RUN_DIR`: the app, headless, in this process, until the run ends."""
    import asyncio

    from benchmarks.throughput import drive_app
    from tui_trainer.ui.launch import make_app

    app = asyncio.run(drive_app(make_app, Path(preset), Path(run_dir), timeout=24 * 3600))
    return app.exit_code


def memory(milestones: list[int], scratch: Path, with_app: bool, timeout: float, device: str = "cpu",
           with_engine: bool = True) -> dict:
    steps = milestones[-1]
    # the run goes on past the last milestone (it is stopped there), so no milestone races its exit
    preset = MICRO.write(scratch, steps=steps + steps // 10 + 1000, device=device)
    out = {"workload": "micro", "steps": steps, "log_every": MICRO.log_every, "batch_size": MICRO.batch_size}
    if with_engine:
        run_dir = scratch / "mem-engine"
        out["engine"] = memory_run([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir",
                                    str(run_dir)], run_dir, milestones, timeout)
    if with_app:
        run_dir = scratch / "mem-app"
        out["app"] = memory_run([sys.executable, str(Path(__file__).resolve()), "--app-child", str(preset),
                                 str(run_dir)], run_dir, milestones, timeout)
    return out


def timed(cmd: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def help_time(n: int) -> dict:
    script = Path(sys.executable).parent / "tui-trainer"
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "tui_trainer", "--help"]
    probe = subprocess.run([sys.executable, "-c", "import sys, tui_trainer.cli; print('torch' in sys.modules)"],
                           cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True)
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
            "help_s": timed(cmd, n), "python_pass_s": timed([sys.executable, "-c", "pass"], n),
            "import_torch_s": timed([sys.executable, "-c", "import torch"], max(1, n // 3)) if n > 1 else None,
            "cli_imports_torch": probe.stdout.strip() == "True", "n": n}


def first_step(preset: Path, n: int, scratch: Path, timeout: float = 600) -> dict:
    runs = []
    for i in range(n):
        run_dir = scratch / f"first-{i}"
        cmd = [sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir", str(run_dir),
               "--set", "train.log_every=1"]
        tail = common.EventTail(run_dir / "events.jsonl")
        t0 = time.time()  # wall clock: the engine stamps events with time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        try:
            while "StepReport" not in tail.first:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited {proc.returncode} before its first step: {proc.stderr.read()[-2000:]}")
                if time.time() - t0 > timeout:
                    raise TimeoutError(f"no first step after {timeout:.0f} s")
                time.sleep(0.02)
                tail.poll()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # measured; no need for its checkpoint
            proc.wait()
            proc.stderr.close()
            tail.close()
        runs.append({"run_started_s": tail.first["RunStarted"] - t0, "first_step_s": tail.first["StepReport"] - t0})
    return {"preset": str(preset.relative_to(ROOT) if preset.is_relative_to(ROOT) else preset), "n": n,
            "weights": tail.weights, "run_started_s": statistics.median(r["run_started_s"] for r in runs),
            "first_step_s": statistics.median(r["first_step_s"] for r in runs), "runs": runs}


def report(result: dict) -> None:
    mem = result["memory"]
    print(f"memory ({mem['workload']} workload, batch {mem['batch_size']}, log_every {mem['log_every']}):")
    for who in ("engine", "app"):
        if who not in mem:
            continue
        run = mem[who]
        base = run["rows"][0]["rss"] if run["rows"] else 0
        for row in run["rows"]:
            print(f"  {who:<6} after {row['milestone']:>9,} steps (at {row['step']:,}): RSS {row['rss'] / MIB:7.1f} MiB"
                  f"  (+{(row['rss'] - base) / MIB:5.1f})  run dir {row['run_dir_bytes'] / MIB:6.1f} MiB"
                  f"  {row['seconds']:6.0f} s")
        if len(run["rows"]) >= 2:
            growth = (run["rows"][-1]["rss"] - base) / MIB
            prev, last = run["rows"][-2], run["rows"][-1]
            rate = (last["rss"] - prev["rss"]) / MIB / max(1, last["step"] - prev["step"]) * 100_000
            print(f"  {who:<6} growth first->last milestone: {growth:+.1f} MiB; over the last interval"
                  f" {rate:+.2f} MiB per 100k steps; peak {run['peak_rss'] / MIB:.1f} MiB ->"
                  f" {'flat' if rate < 1.0 else 'STILL GROWING (run longer, or look)'}")
        if run["missing"]:
            print(f"  {who:<6} ended (exit {run['exit_code']}) before steps {run['missing']}")
    h = result["help"]
    print(f"help: `{h['command']}` {h['help_s'] * 1e3:.0f} ms (median of {h['n']}); python -c pass"
          f" {h['python_pass_s'] * 1e3:.0f} ms;"
          + (f" python -c 'import torch' {h['import_torch_s'] * 1e3:.0f} ms;" if h["import_torch_s"] else "")
          + f" cli imports torch: {h['cli_imports_torch']}")
    f = result["first_step"]
    print(f"first step of {f['preset']}: {f['first_step_s']:.2f} s from spawn (RunStarted at {f['run_started_s']:.2f} s;"
          f" weights: {f['weights']}; median of {f['n']})")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", default=None, help="memory milestones, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--preset", default=str(ROOT / "presets" / "resnet18_finetune.toml"),
                   help="preset for the time to first step (default presets/resnet18_finetune.toml)")
    p.add_argument("--memory-of", default="engine,app", help="whose RSS to follow: engine, app or both (default)")
    p.add_argument("--runs", type=int, default=None, help="repetitions of the timings (default 10 help, 3 first step)")
    p.add_argument("--app-child", nargs=2, metavar=("PRESET", "RUN_DIR"), help=argparse_hidden())
    args = p.parse_args(argv)
    if args.app_child:
        sys.exit(app_child(*args.app_child))
    global THREADS
    THREADS = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    milestones = [int(s) for s in (args.steps or ("200,1000,2000" if args.quick else "10000,100000,1000000")).split(",")]
    runs = args.runs or (1 if args.quick else None)
    result = {"versions": common.versions(), "quick": args.quick, "threads": THREADS or "torch default"}
    with tempfile.TemporaryDirectory(prefix="tui-footprint-") as tmp:
        scratch = Path(tmp)
        whose = args.memory_of.split(",")
        result["memory"] = memory(milestones, scratch, with_app="app" in whose, timeout=6 * 3600, device=args.device,
                                  with_engine="engine" in whose)
        result["help"] = help_time(runs or 10)
        result["first_step"] = first_step(Path(args.preset).resolve(), runs or 3, scratch)
    report(result)
    common.write_json(args.json, result)
    return result


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
