"""Signal dispositions that every face needs: what a forked child inherits, and a terminal that
has gone.

A DataLoader worker is forked from the training process and inherits its Python signal handlers.
Textual installs handlers for the terminal signals (SIGCONT, SIGWINCH, SIGTSTP): after a hang-up
the kernel sends SIGCONT with SIGHUP to the whole session, and a worker running Textual's SIGCONT
handler (which needs the app's event loop) raised and died: "DataLoader worker exited
unexpectedly", a failed run. `reset_inherited_signals` runs in every forked child, before any
inherited handler can, and the worker init function runs it again.
"""

from __future__ import annotations

import os
import signal

# Signals a terminal program handles, and a child must never handle with its parent's code.
TERMINAL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGCONT", "SIGWINCH", "SIGTSTP", "SIGTTIN", "SIGTTOU")
                         if hasattr(signal, name))


def reset_inherited_signals() -> None:
    """Terminal signals back to their defaults (only those a Python handler owns: an ignored one
    stays ignored, as under nohup), and no writes into the parent's event-loop wake-up socket
    (a signal would otherwise wake the parent's loop as if the parent had received it)."""
    for sig in TERMINAL_SIGNALS:
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    try:
        signal.set_wakeup_fd(-1)
    except (OSError, ValueError):  # not the main thread: nothing was inherited there
        pass


_protected = False


def protect_forked_children() -> None:
    """Run `reset_inherited_signals` in every later fork of this process (registered once)."""
    global _protected
    if not _protected and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=reset_inherited_signals)
        _protected = True


def point_at_devnull(fds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Replace what these fds point at (a terminal that has gone) with /dev/null: reads see EOF,
    writes vanish, and the interpreter's flush of stdout at exit cannot fail (exit 120)."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in fds:
        try:
            os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


def terminal_alive(fd: int) -> bool:
    """False once the terminal has hung up (its ioctls fail with EIO) or fd is no terminal."""
    try:
        return os.isatty(fd)
    except OSError:
        return False
