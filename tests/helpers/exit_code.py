"""`python -m tests.helpers.exit_code FILE CMD...`: run CMD and write its exit status to FILE,
even when the terminal goes away.

Over SSH, a dropped session ends the login shell too, so `cmd; echo $? > file` never writes.
This wrapper starts CMD in its own foreground process group and session position unchanged (same
terminal, same signals as if the shell had started it), and only then ignores SIGHUP itself, so
it outlives the hang-up and records what CMD returned (128+N for a death by signal N).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main() -> int:
    path, cmd = sys.argv[1], sys.argv[2:]
    proc = subprocess.Popen(cmd)  # returns once CMD has exec'd: it starts with default handlers
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is CMD's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = proc.wait()
    code = 128 - code if code < 0 else code
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{code}\n")
    os.replace(tmp, path)
    try:
        return code
    finally:
        try:
            sys.stdout.flush()
        except OSError:
            pass


if __name__ == "__main__":
    raise SystemExit(main())
