"""`--detach`: start the run headless in the background, in its own session, logging to the run
directory, and print how to attach. Bad input still fails here, in the foreground, with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tui_trainer import config
from tui_trainer.errors import UserError
from tui_trainer.run.rundir import RunDir
from tui_trainer.run.server import live_socket


def detach(preset_path: str, overrides: list[str], *, resume: str | None, run_dir: str | None,
           wait_s: float = 600.0) -> int:
    from tui_trainer import build

    preset = config.load(preset_path, overrides)
    try:
        build.check(preset)
    except UserError as err:
        err.source = err.source or preset.key_source(err.key or "")
        raise
    path = Path(run_dir) if run_dir else RunDir.unused(preset.name).path
    path.mkdir(parents=True, exist_ok=True)
    log = path / "output.log"
    cmd = [sys.executable, "-m", "tui_trainer", str(preset_path), "--no-ui", "--run-dir", str(path)]
    for item in overrides:
        cmd += ["--set", item]
    if resume:
        cmd += ["--resume", resume]
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        # A new session: no controlling terminal, so closing this SSH session sends it no SIGHUP.
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s  # building data and model can take a while; report a bad start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            print(f"tui-trainer: the background run ended at once (exit {proc.returncode}): {tail[0]}",
                  file=sys.stderr)
            return proc.returncode or 1
        if live_socket(path) is not None:
            break
        time.sleep(0.1)
    print(f"training in the background (pid {proc.pid})\n"
          f"  run dir: {path}\n"
          f"  attach:  tui-trainer attach {path}\n"
          f"  log:     {log}\n"
          f"  list:    tui-trainer ls")
    return 0
