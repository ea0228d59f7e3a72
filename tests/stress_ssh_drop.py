"""Stress (run by hand, not part of the suite): drop the SSH session under a real run, many times,
at random moments, and count what went wrong.

    .venv/bin/python -m tests.stress_ssh_drop --runs 20 [--json out.json]
    .venv/bin/python -m tests.stress_ssh_drop --runs 8 --set train.devices=2 --set train.device=cpu

Each round starts the shipped preset (presets/resnet18_finetune.toml: resnet18, 2 DataLoader
workers) in the TUI through a real sshd on 127.0.0.1 (tests/helpers/sshd.py), with a checkpoint
every 3 steps so that saves (85 MiB each) take a good share of the time, and kills the ssh client
(SIGKILL):
- "random": at a uniformly random moment 0.5-14 s after the client started (start-up, building
  the model, training, epoch ends and saves all fall in that range);
- "in save": the moment a checkpoint's temp file appears (a save in progress);
- "detach": as "random", with --on-hangup detach; the run must go on, and a SIGTERM 3 s later
  must end it with a save (143).

Counted, over all rounds (all three must be 0):
- failed runs: a Failed event, a run that started but has no Finished event, or an exit status
  other than the expected one (129; 143 for detach; any drop before the run dir exists counts as
  a run that never started and must only leave nothing behind);
- unloadable checkpoints: every *.pt left in the run's checkpoints/ is loaded with
  tui_trainer.engine.checkpoint.load (weights_only), plus temp files left behind;
- processes left: remote processes of the run still alive 30 s after it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers.runs import of_kind, read_events
from tests.integration.test_ssh_drop import _remote

SHIPPED = ROOT / "presets" / "resnet18_finetune.toml"


def one_round(sshd, work: Path, i: int, mode: str, rng: random.Random, sets: tuple[str, ...] = ()) -> dict:
    run, exit_file = work / f"run{i:02d}", work / f"exit{i:02d}"
    args = [SHIPPED, "--run-dir", run, "--set", "checkpoint.every_steps=3"]
    for item in sets:  # e.g. train.devices=2 train.device=cpu: the monitor of two ranks
        args += ["--set", item]
    if mode == "detach":
        args += ["--on-hangup", "detach"]
    result = {"round": i, "mode": mode}
    with sshd.session(_remote(sshd, work, exit_file, *args)) as ssh:
        ssh.client_pid()
        t0 = time.monotonic()
        if mode == "in save":
            ckpts = run / "checkpoints"
            deadline = t0 + 120
            while time.monotonic() < deadline:
                if ckpts.is_dir() and any(p.name.endswith(".tmp") for p in os.scandir(ckpts)):
                    break
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.5, 14.0))
        result["dropped_after_s"] = round(time.monotonic() - t0, 2)
        result["steps_at_drop"] = _steps(run)
        ssh.kill_client()
        result["sigterm"] = False
        if mode == "detach":  # it must go on headless; once it serves its socket, SIGTERM ends it
            deadline = time.monotonic() + 120
            while not (run / "control.json").exists() and not exit_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not exit_file.exists() and (run / "control.json").exists():
                time.sleep(3)
                try:
                    os.kill(json.loads((run / "control.json").read_text())["pid"], signal.SIGTERM)
                    result["sigterm"] = True
                except (OSError, ValueError, KeyError):
                    pass
        deadline = time.monotonic() + 240
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    result["exit"] = int(exit_file.read_text()) if exit_file.exists() else None
    events = read_events(run)
    result["started"] = bool(of_kind(events, "RunStarted"))
    finished = of_kind(events, "Finished")
    result["status"] = finished[-1]["status"] if finished else ("FAILED" if of_kind(events, "Failed") else None)
    result["steps"] = finished[-1]["step"] if finished else _steps(run)
    expected = 143 if result["sigterm"] else 129
    if not run.exists() or not events:  # dropped before the run existed: nothing may be left
        result["failed"] = result["exit"] is None
    else:
        result["failed"] = bool(of_kind(events, "Failed")) or not finished or result["exit"] != expected
    result["expected_exit"] = expected
    result["checkpoints"], result["unloadable"] = _check_checkpoints(run / "checkpoints")
    deadline = time.monotonic() + 30
    while (left := sshd.find_cli_processes(str(run))) and time.monotonic() < deadline:
        time.sleep(0.2)
    result["left"] = len(left)
    for proc in left:  # leave a clean machine for the next round
        try:
            proc.kill()
        except Exception:  # noqa: BLE001
            pass
    return result


def _steps(run: Path) -> int:
    return max((e["step"] for e in of_kind(read_events(run), "StepReport")), default=0)


def _check_checkpoints(ckpts: Path) -> tuple[int, list[str]]:
    from tui_trainer.engine.checkpoint import load
    from tui_trainer.errors import UserError

    bad, n = [], 0
    if not ckpts.is_dir():
        return 0, bad
    for path in sorted(ckpts.iterdir()):
        if path.name.endswith(".tmp"):
            bad.append(f"{path.name} (temp file left)")
            continue
        n += 1
        try:
            load(path)
        except UserError as err:
            bad.append(f"{path.name}: {err}")
    return n, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every round's result here")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a preset override for every round (train.devices=2 --set train.device=cpu: two ranks)")
    opts = ap.parse_args()
    from tests.helpers.sshd import serve

    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="tui-trainer-drop-"))
    modes = ["random", "in save", "random", "detach"]
    results = []
    try:
        with serve() as sshd:
            for i in range(opts.runs):
                r = one_round(sshd, work, i, modes[i % len(modes)], rng, tuple(opts.sets))
                results.append(r)
                print(f"{i:2d} {r['mode']:8s} drop at {r['dropped_after_s']:5.2f}s (step {r['steps_at_drop']:3d})"
                      f" -> exit {r['exit']} (expected {r['expected_exit']}) status {r['status']} step {r['steps']}"
                      f" | {r['checkpoints']} checkpoints, unloadable {len(r['unloadable'])}, left {r['left']}"
                      f"{'  FAILED' if r['failed'] else ''}", flush=True)
    except BaseException as exc:  # pytest.skip from the fixture, or ^C
        if type(exc).__name__ == "Skipped":
            print(f"cannot run: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = sum(r["failed"] for r in results)
    unloadable = sum(len(r["unloadable"]) for r in results)
    left = sum(r["left"] for r in results)
    in_save = sum(1 for r in results if r["mode"] == "in save")
    print(f"\n{len(results)} drops ({in_save} during a checkpoint write): {failed} failed runs,"
          f" {unloadable} unloadable checkpoints (of {sum(r['checkpoints'] for r in results)}),"
          f" {left} processes left")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1))
    return 0 if failed == unloadable == left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
