"""Run many short CLI runs and SIGKILL them while they write checkpoints.

    python -m tests.helpers.killtrials SPEC.json RESULT.json

Interpreter start-up with torch costs seconds, so this process imports everything once and then
forks one child per trial; the child runs the real `tui_trainer.cli.main(args)` (the same code as
the `tui-trainer` command) and this parent kills it with SIGKILL, as `kill -9` or the OOM killer
would. The parent never runs a torch op, so forking after `import torch` is safe.

A trial's `kill` is one of
  {"mode": "none"}                                  let it finish (calibration, resume)
  {"mode": "time", "after": S}                      SIGKILL S seconds after checkpoints/last.pt
                                                    first appears (random S chosen by the test)
  {"mode": "hook", "point": P, "nth": N}            the child SIGKILLs itself at the N-th call of
                                                    a save step: P = mid_write (half the bytes of
                                                    torch.save written), before_replace,
                                                    after_replace (before the dir fsync), in_alias
                                                    (hard link made, not yet renamed)
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path


def _install_hook(point: str, nth: int) -> None:
    import torch

    from tui_trainer.engine import checkpoint

    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid_write":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not due():
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            die()

        checkpoint.torch.save = save
    elif point in ("before_replace", "after_replace"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if not str(dst).endswith(".pt"):  # only checkpoint renames count (not control.json)
                return real_replace(src, dst, *args, **kwargs)
            if due() and point == "before_replace":
                die()
            real_replace(src, dst, *args, **kwargs)
            if calls[0] == nth and point == "after_replace":
                die()

        checkpoint.os.replace = replace
    elif point == "in_alias":
        real_link = os.link

        def link(src, dst, *args, **kwargs):
            real_link(src, dst, *args, **kwargs)
            if due():
                die()

        checkpoint.os.link = link
    else:
        raise ValueError(point)


def _child(trial: dict) -> None:
    os.chdir(trial["cwd"])
    for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, fd)
        os.close(out)
    code = 99
    try:
        from tui_trainer import cli

        kill = trial.get("kill", {})
        if kill.get("mode") == "hook":
            _install_hook(kill["point"], kill["nth"])
        code = cli.main(trial["args"])
    except BaseException:  # noqa: BLE001 - report as a distinct code, never continue the parent's loop
        import traceback

        traceback.print_exc()
        code = 98
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_trial(trial: dict) -> dict:
    kill = trial.get("kill", {"mode": "none"})
    watch = Path(trial["cwd"]) / trial.get("watch", "run/checkpoints/last.pt")
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(trial)
    first_ckpt = None
    killed_at = None
    deadline = t0 + trial.get("timeout", 120)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if first_ckpt is None and watch.exists():
            first_ckpt = now
        if kill.get("mode") == "time" and first_ckpt is not None and now >= first_ckpt + kill["after"]:
            os.kill(pid, signal.SIGKILL)
            killed_at = now
            _, status = os.waitpid(pid, 0)
            break
        if now > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return {"timeout": True, "signal": 9, "code": None}
        time.sleep(0.001)
    end = time.monotonic()
    return {
        "timeout": False,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "seconds": end - t0,
        "save_phase": (end - first_ckpt) if first_ckpt is not None else None,
        "killed_after_first_ckpt": (killed_at - first_ckpt) if killed_at is not None else None,
    }


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # import what the children need once; no torch op runs here (fork safety)
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use: seconds
    import torchvision  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    import examples.models  # noqa: F401
    import tui_trainer.parts  # noqa: F401
    import tui_trainer.cli  # noqa: F401
    import tui_trainer.run.headless  # noqa: F401
    import tui_trainer.run.launch  # noqa: F401

    results = []
    for trial in spec["trials"]:
        results.append(run_trial(trial))
    Path(sys.argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
