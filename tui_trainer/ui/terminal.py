"""The app's terminal, which can vanish at any moment (a dropped SSH session).

When the terminal hangs up, the kernel sends SIGHUP *and* SIGCONT to every process of the session,
then fails every write to it with EIO. Textual's Linux driver answers SIGCONT by drawing the screen
again (`resume_application_mode`): to a dead terminal that fails over and over, and Python then
exits 120 on the failed flush of stdout at exit instead of our 129. Its output thread dies on the
first EIO, after which the driver's bounded write queue can block the app for good.

`HangupSafeDriver` never writes to a terminal that has gone. Its output catches the first failed
write, points fds 0-2 at /dev/null (every later write, and the flush at exit, then succeed
silently) and raises `app.terminal_gone`; its SIGCONT handler draws only on a terminal that still
answers (`os.isatty` is false on a hung-up tty). What children inherit: `tui_trainer.signals`.
"""

from __future__ import annotations

import sys

from textual.drivers.linux_driver import LinuxDriver

from tui_trainer.signals import point_at_devnull, terminal_alive


class _GuardedOutput:
    """The driver's output stream. The first failed write means the terminal is gone: from then on
    the fds point at /dev/null and the app is told (once)."""

    def __init__(self, stream, on_gone):
        self._stream = stream
        self._on_gone = on_gone

    def write(self, text: str) -> None:
        try:
            self._stream.write(text)
        except (OSError, ValueError):
            self._on_gone()

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._on_gone()
            try:  # the buffer still holds what failed; it now goes to /dev/null
                self._stream.flush()
            except (OSError, ValueError):
                pass

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


class HangupSafeDriver(LinuxDriver):
    """Textual's Linux driver, made safe for a terminal that hangs up (see the module docstring).
    It relies on two names inside LinuxDriver (`_file`, the output stream, and
    `_sigcont_application`); textual is pinned below 9, and the real-sshd tests exercise both."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.terminal_gone = False
        self._file = _GuardedOutput(self._file, self._gone)

    def _gone(self) -> None:
        """Any thread may call this (the output thread, a signal handler): it only redirects fds
        and sets a flag; the app acts on `app.terminal_gone` at its next tick."""
        if self.terminal_gone:
            return
        self.terminal_gone = True
        point_at_devnull()
        self._app.terminal_gone = True

    def _sigcont_application(self, *args) -> None:
        if self.terminal_gone or not terminal_alive(self.fileno):
            self._gone()  # SIGCONT of a hang-up: nothing to redraw on
            return
        super()._sigcont_application(*args)


def driver_class():
    """The driver the app runs with in a real terminal (Textual picks its own elsewhere)."""
    return HangupSafeDriver if sys.platform != "win32" else None
