"""Signals in forked children and a dead terminal, at unit level (the whole story over a real sshd
is tests/integration/test_ssh_drop.py).

- A DataLoader worker forked from a process whose SIGCONT handler needs the app (Textual's does)
  must survive SIGCONT: the kernel sends it with SIGHUP to a hung-up session, and it killed the
  workers ("DataLoader worker exited unexpectedly", a FAILED run).
- The app's terminal output never raises on a dead terminal: the first failed write points the
  fds at /dev/null and says so once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader

from tests.conftest import cli_env
from tui_trainer.parts.data import _worker_signals
from tui_trainer.signals import TERMINAL_SIGNALS, protect_forked_children


def _caught(pid: int) -> int:
    """The SigCgt mask of a process (signals with a handler of their own)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigCgt")


class _Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(0.005)
        return torch.tensor([float(i)])


def test_workers_survive_sigcont_whatever_handler_the_parent_installed():
    def needs_the_app(signum, frame):  # what Textual's handler amounts to outside the app's loop
        raise RuntimeError("no running event loop")

    before = signal.signal(signal.SIGCONT, needs_the_app)
    try:
        protect_forked_children()
        loader = DataLoader(_Slow(), batch_size=4, num_workers=2, persistent_workers=True, timeout=60,
                            worker_init_fn=_worker_signals)
        for epoch in range(2):
            seen = 0
            for i, batch in enumerate(loader):
                if epoch == 0 and i == 1:
                    workers = [w.pid for w in loader._iterator._workers]
                    for pid in workers:
                        assert not _caught(pid) & (1 << (signal.SIGCONT - 1)), "the worker handles SIGCONT"
                        for sig in (signal.SIGCONT, signal.SIGWINCH, signal.SIGHUP):
                            os.kill(pid, sig)  # what a hang-up sends, and a resize
                seen += len(batch)
            assert seen == 64  # no "DataLoader worker exited unexpectedly"
    finally:
        signal.signal(signal.SIGCONT, before)
        it = getattr(loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()


def test_a_plain_fork_gets_default_terminal_signals():
    """register_at_fork resets them in any child, before the worker init function runs."""
    protect_forked_children()
    before = {sig: signal.signal(sig, lambda *_: None) for sig in TERMINAL_SIGNALS}
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report which terminal signals still have a Python handler
            handled = [sig for sig in TERMINAL_SIGNALS if callable(signal.getsignal(sig))]
            os.write(w, repr(handled).encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 1000).decode()
        os.waitpid(pid, 0)
        os.close(r)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert out == "[]"


def test_the_app_output_goes_quiet_on_a_dead_terminal():
    """A child process with the driver's guarded output on a pipe whose reader is gone (EPIPE,
    as a dead tty gives EIO): writes and the flush at exit never fail, the exit status stays ours."""
    code = r"""
import os, signal, sys
from tui_trainer.ui.terminal import _GuardedOutput
from tui_trainer.signals import point_at_devnull
gone = []
def on_gone():
    gone.append(1)
    point_at_devnull()
signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python starts: EPIPE, not death
out = _GuardedOutput(sys.stderr, on_gone)
for _ in range(50):
    out.write("x" * 10000)
    out.flush()
sys.stdout.write("buffered at exit\n")
assert gone == [1], gone
raise SystemExit(129)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env())
    proc.stdout.close()  # the terminal goes away before anything is written
    proc.stderr.close()
    assert proc.wait(timeout=60) == 129  # not 120 (failed flush at exit), not a traceback's 1
