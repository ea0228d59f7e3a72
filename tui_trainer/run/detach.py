"""`--detach`: start the run headless in the background, in its own session, logging to the run
directory, and print how to attach. Everything that can fail on bad input fails here, in the
foreground, with exit 2, before the fork: the preset, the resume checkpoint, a run directory in
use by a live run, one that cannot be written. A background run that still dies while it starts
is reported here too, with its own error line and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tui_trainer import config
from tui_trainer.errors import UserError
from tui_trainer.run.rundir import RunDir, choose_run_dir, refuse_if_live, resume_checkpoint, writing
from tui_trainer.run.server import INFO, live_socket


def detach(preset_path: str, overrides: list[str], *, resume: str | None, run_dir: str | None,
           wait_s: float = 600.0) -> int:
    from tui_trainer.parts import check
    from tui_trainer.engine import checkpoint

    preset = config.load(preset_path, overrides)
    try:
        check(preset)
    except UserError as err:
        err.source = err.source or preset.key_source(err.key or "")
        raise
    resume_path = resume_checkpoint(preset.name, resume)
    if resume_path is not None:
        # missing, damaged, a loop's, or another global batch: exit 2 here, not in the background (nor
        # into the resumed run's output.log)
        state = checkpoint.load(resume_path, mmap=True)
        checkpoint.check_kind(state, resume_path, loop=False)
        world = 1
        if preset.train.devices != 1:
            from tui_trainer.run.ranks import device_count

            world = device_count(preset)[0]
        checkpoint.resume_fit(state, preset, world, resume_path)
    rd, fresh = choose_run_dir(preset.name, run_dir, resume_path)  # the same rule as the foreground run
    if not fresh:  # before output.log is opened: a refused run must not write into a live run's log
        refuse_if_live(rd, "--run-dir" if run_dir is not None else "--resume")
    log = rd.path / "output.log"
    with writing(rd):
        rd.path.mkdir(parents=True, exist_ok=not fresh)
        out = open(log, "ab")
    cmd = [sys.executable, "-m", "tui_trainer", str(preset_path), "--no-ui", "--run-dir", str(rd.path)]
    for item in overrides:  # in order: "-KEY" items are --unset KEY (config.unset_override)
        if item.startswith(config.UNSET):
            cmd += ["--unset", item[len(config.UNSET):]]
        else:
            cmd += ["--set", item]
    if resume_path is not None:
        cmd += ["--resume", str(resume_path)]  # the checkpoint found now, whatever `auto` finds later
    with out, open(os.devnull, "rb") as devnull:
        start = out.tell()  # a resumed run appends: its own error is what comes after this
        # A new session: no controlling terminal, so closing this SSH session sends it no SIGHUP.
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s  # building data and model can take a while; report a bad start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return _ended(proc.returncode, rd, fresh, log, start)
        if _serving(rd.path, proc.pid):
            break
        time.sleep(0.1)
    print(f"training in the background (pid {proc.pid})\n"
          f"  run dir: {rd.path}\n"
          f"  attach:  tui-trainer attach {rd.path}\n"
          f"  log:     {log}\n"
          f"  list:    tui-trainer ls")
    return 0


def _serving(path: Path, pid: int) -> bool:
    """The control socket in `path` is up and is this child's (not another run's)."""
    try:
        info = json.loads((path / INFO).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or live_socket(path) is None:
        return False
    if info.get("pid") == pid:
        return True
    try:  # devices > 1: rank 0, a process under the child, serves
        import psutil

        return info.get("pid") in {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # noqa: BLE001 - the child is gone: not serving
        return False


def _ended(code: int, rd: RunDir, fresh: bool, log: Path, start: int) -> int:
    """The background run is over before its socket was seen: say so on one line, with its exit code."""
    exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as the CLI itself exits
    if code == 0:  # a short run can finish before it is seen serving
        print(f"the background run already finished (exit 0)\n  run dir: {rd.path}\n  log:     {log}")
        return 0
    with open(log, "rb") as f:
        f.seek(start)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no output)"
    if exit_code == UserError.exit_code and last.startswith("tui-trainer: error:"):
        print(last, file=sys.stderr)  # bad input the foreground could not see: the run's own line
        _remove_if_empty(rd, fresh, log)
    else:
        print(f"tui-trainer: error: the background run ended at once (exit {exit_code}): {last}; see {log}",
              file=sys.stderr)
    return exit_code


def _remove_if_empty(rd: RunDir, fresh: bool, log: Path) -> None:
    """A new run directory that holds only the log of a refused start goes, as a refused foreground
    run leaves none (its error was printed)."""
    try:
        if fresh and [p.name for p in rd.path.iterdir()] == [log.name]:
            log.unlink()
            rd.path.rmdir()
    except OSError:
        pass
