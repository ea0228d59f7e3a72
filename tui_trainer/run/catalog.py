"""The runs under runs/: what state each is in, how far it got, whether a viewer can attach.

Read from each run's events.jsonl (its first line and its tail, so a huge log costs the same as
a small one) and its control socket.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.run.server import live_socket

TAIL_BYTES = 256 * 1024  # how much of the end of events.jsonl a summary reads


@dataclass
class RunSummary:
    path: Path
    name: str
    state: str  # running, paused, stopping, completed, early_stopped, stopped, signal, nonfinite, failed, dead
    step: int
    total_steps: int | None
    epoch: int | None
    epochs: int | None
    monitor: str | None
    best: float | None
    best_epoch: int | None
    attachable: bool
    started: float


def _head_and_tail(path: Path, tail_bytes: int | None = None) -> tuple[dict | None, list[dict]]:
    tail_bytes = tail_bytes or TAIL_BYTES
    try:
        with open(path, "rb") as f:
            first = f.readline()
            size = os.fstat(f.fileno()).st_size
            f.seek(max(len(first), size - tail_bytes))
            chunk = f.read()
    except OSError:
        return None, []
    lines = chunk.split(b"\n")
    if size - tail_bytes > len(first):
        lines = lines[1:]  # a partial first line
    records = []
    for line in [first, *lines]:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed writer
    head = records[0] if records and records[0].get("kind") == "RunStarted" else None
    # a resumed run appends a RunStarted of its own (its epochs and length may be new): the latest
    # one the tail holds; the first line's when the tail holds none
    started = next((r for r in reversed(records) if r.get("kind") == "RunStarted"), head)
    if started is not None and head is not None and started is not head:
        started = {**started, "time": head.get("time", 0.0)}  # listed by when the run first started
    return started, records


def summarize(run_dir: Path) -> RunSummary | None:
    started, records = _head_and_tail(run_dir / "events.jsonl")
    if started is None:
        return None
    state, step, epoch, best, best_epoch = None, started.get("start_step", 0), None, None, None
    monitor = started.get("monitor")
    final = None
    for record in records:
        kind = record.get("kind")
        step = record.get("step", step)
        if kind == "StateChanged":
            state = record["state"]
        elif kind == "RunStarted":
            state, final = None, None  # a resume into this directory: what came before has ended
        elif kind == "EpochEnd":
            epoch, best, best_epoch = record["epoch"], record.get("best"), record.get("best_epoch")
            if record.get("improved") and record.get("monitor"):
                monitor = record["monitor"]  # what the best is: train_loss in an epoch without its monitor
        elif kind == "StepReport":
            epoch = record.get("epoch", epoch)
        elif kind in ("Finished", "Failed"):
            final = record
            monitor = record.get("monitor") or monitor
    sock = live_socket(run_dir) if final is None else None
    if final is not None:
        state = "failed" if final["kind"] == "Failed" else final["status"]
    elif sock is None:
        state = "dead"  # no final event and nobody serving: killed, or the machine went down
    elif state is None:
        state = "running"  # serving, and its last change of state is older than the tail (a long run)
    return RunSummary(run_dir, started["run_name"], state, step, started.get("total_steps"), epoch,
                      started.get("epochs"), monitor, best, best_epoch, sock is not None,
                      started.get("time", 0.0))


def list_runs(base: str | Path = "runs") -> list[RunSummary]:
    base = Path(base)
    if not base.is_dir():
        return []
    runs = [summarize(p) for p in base.iterdir() if (p / "events.jsonl").is_file()]
    return sorted((r for r in runs if r is not None), key=lambda r: r.started)


def newest_attachable(base: str | Path = "runs") -> Path | None:
    live = [r for r in list_runs(base) if r.attachable]
    return live[-1].path if live else None


def check_runs_folder(base: str | Path) -> None:
    """`tui-trainer ls FOLDER` on a path that is not a folder is a typo: say so (exit 2) instead of
    listing nothing."""
    base = Path(base)
    if not base.exists():
        raise UserError(f"{base} does not exist; give a folder of runs (default: runs)", source="ls")
    if not base.is_dir():
        raise UserError(f"{base} is not a folder; give a folder of runs (default: runs)", source="ls")


def format_runs(runs: list[RunSummary], base: str | Path = "runs") -> str:
    if not runs:
        base = Path(base)
        where = f"nothing in {base}/" if base.is_dir() else f"no {base}/ folder here"
        return f"no runs yet ({where}); start one with: tui-trainer PRESET.toml --detach"
    header = f"{'run':<42} {'state':<13} {'epoch':>9} {'step':>13} {'best':>{BEST_WIDTH}}  attach"
    lines = [header]
    for r in runs:
        epoch = f"{r.epoch or '-'}/{r.epochs or '?'}"
        step = f"{r.step}/{r.total_steps or '?'}"
        best = best_text(r.monitor, r.best) if r.best is not None and r.monitor else "-"
        lines.append(f"{str(r.path):<42} {r.state:<13} {epoch:>9} {step:>13} {best:>{BEST_WIDTH}}  {'yes' if r.attachable else '-'}")
    return "\n".join(lines)


BEST_WIDTH = 20


def best_text(monitor: str, best: float, width: int = BEST_WIDTH) -> str:
    """"val_loss 0.1234"; a monitor too long for the column loses its "val_" and then its middle,
    keeping its start and its end, which tells metrics apart ("mult…f1_score 0.8123")."""
    value = f"{best:.4f}"
    room = width - len(value) - 1
    for name in (monitor, monitor.removeprefix("val_")):
        if len(name) <= room:
            return f"{name} {value}"
    if room < 3:
        return value
    head = (room - 1) // 3
    return f"{name[:head]}…{name[len(name) - (room - 1 - head):]} {value}"


def remote_ls(url: str, remote_cmd: str | None = None) -> int:
    """`tui-trainer ls ssh://[user@]host[:port][/runs]`: `tui-trainer ls` run there through the
    system ssh client, its table printed here (remote paths: what `attach ssh://host/PATH` takes)."""
    import subprocess
    import sys

    from tui_trainer.run.relay import parse_ssh_url, quote_remote_path, remote_failure, remote_program, ssh_argv

    target = parse_ssh_url(url)
    program = remote_program(remote_cmd)
    folder = f" {quote_remote_path(target.path)}" if target.path else ""
    argv = ssh_argv(target, f"{program} ls{folder}")
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as exc:
        raise UserError(f"cannot start the ssh client {argv[0]!r}: {exc.strerror or exc}; install openssh-client"
                        " or set TUI_TRAINER_SSH", source="ls") from None
    if out.returncode in (126, 127, 255) or (out.returncode and not out.stderr.startswith("tui-trainer")):
        err = remote_failure(target, program, out.returncode, out.stderr)
        err.source = "ls"
        raise err
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode
