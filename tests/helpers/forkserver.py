"""A fork server for CLI runs: import torch & co. once, then start each run as a forked child
that executes the real `python -m tui_trainer` entry point (runpy, same argv, same exit path).

Start-up with torch costs ~6 s of CPU; a forked run starts in well under one. Tests that need
dozens of CLI runs (signals, failures, resume) go through this; a few tests still start a fresh
interpreter (`tests.helpers.proc.Cli`) to keep the true entry honest.

Protocol (JSON lines): request {"id", "args", "cwd", "tty": "/dev/pts/N" | null, "ignore_sighup",
"env"} -> {"id", "pid"}; when the child ends -> {"id", "pid", "code"} (code < 0: killed by signal
-code, as in subprocess). The server never runs a torch op, so forking after `import torch` is safe.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import sys
import termios


def _prewarm() -> None:
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use
    import torchvision  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    import examples.models  # noqa: F401
    import tui_trainer.parts  # noqa: F401
    import tui_trainer.cli  # noqa: F401
    import tui_trainer.run.headless  # noqa: F401
    import tui_trainer.run.launch  # noqa: F401


def _child(req: dict) -> None:
    code = 1
    try:
        os.setsid()
        if req.get("tty"):
            fd = os.open(req["tty"], os.O_RDWR)
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)  # our controlling terminal, as in an SSH session
            for target in (0, 1, 2):
                os.dup2(fd, target)
            os.close(fd)
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out = os.open(os.path.join(req["cwd"], req.get("log", "output.txt")),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            if req.get("err_log"):  # stderr to a file of its own
                out = os.open(os.path.join(req["cwd"], req["err_log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 2)
        os.chdir(req["cwd"])
        os.environ.update(req.get("env") or {})
        signal.signal(signal.SIGHUP, signal.SIG_IGN if req.get("ignore_sighup") else signal.SIG_DFL)
        # fresh text streams on the new fds (the server's are pipes to the test)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = ["tui-trainer", *req["args"]]
        import runpy

        try:
            runpy.run_module("tui_trainer", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()  # what interpreter shutdown does (multiprocessing cleans workers)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> int:
    _prewarm()
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    children: dict[int, str] = {}
    buf = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            data = os.read(0, 65536)
            if not data:
                break  # the test process went away
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req)
                children[pid] = req["id"]
                out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
                out.flush()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"id": children.pop(pid), "pid": pid, "code": code}) + "\n")
            out.flush()
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
