"""--no-ui: the same engine, one readable line per report; a rich progress bar only on a TTY.

Signals: SIGINT stops after the current step with a checkpoint (exit 0, as a user stop), a second
SIGINT aborts at once (130). SIGTERM and SIGHUP save and exit 128+signal. SIGUSR1 saves and goes
on. Under nohup SIGHUP is already ignored when we start, and we leave it ignored.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import TextIO

from tui_trainer.engine.commands import Control, SaveCheckpoint, Stop
from tui_trainer.engine.events import Event, Failed, Finished, RunStarted, StepReport
from tui_trainer.run.batched import Batched
from tui_trainer.text.format import duration, event_line, human_count, lrs_text, short_bytes
from tui_trainer.signals import point_at_devnull

# the reports' and epoch ends' lines are written by a thread within this (LineReporter `within`)
LINES_WITHIN_S = 0.5

_STYLES = {"info": "", "good": "green", "warn": "yellow", "error": "bold red"}


class LineReporter:
    """A sink that turns events into log lines (plain text; rich colours and a bar on a TTY).

    `within` (seconds): the reports' and epoch ends' lines are written by a thread, in batches,
    within that time of their coming (run/batched.py), not on the training thread; every other
    event's line at once, after those still waiting. `close()` writes what is waiting."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, within: float | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started: RunStarted | None = None
        self.dead = False  # output failed once: the terminal is gone
        self._progress = None
        self._task = None
        self._gathered: list[str] | None = None  # plain lines of a batch, written together
        self._batched = None
        if within is not None:
            self._batched = Batched(self._lines, "tui-trainer-lines", lambda: within)
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._console = Console(file=self.stream, highlight=False)
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                      console=self._console, transient=True)

    def line(self, text: str, style: str = "") -> None:
        stamp = time.strftime("%H:%M:%S")
        self._write(lambda: self._console.print(f"{stamp} {text}", style=style or None, markup=False)
                    if self._progress is not None else self._plain(f"{stamp} {text}\n"))

    def _plain(self, text: str) -> None:
        if self._gathered is not None:
            self._gathered.append(text)
            return
        self.stream.write(text)
        self.stream.flush()

    def _lines(self, events: list[Event]) -> None:
        """A batch of events (Batched): their plain lines in one write."""
        self._gathered = []
        try:
            for event in events:
                if not self.dead:
                    self._event(event)
        finally:
            text, self._gathered = "".join(self._gathered), None
            if text:
                self._write(lambda: self._plain(text))

    def _write(self, write) -> None:
        """Output is best effort: a dropped SSH session (EIO), a closed pipe or a full log disk must
        not end the training, least of all while it saves after SIGHUP. On the first failure we
        stop printing and point the process's stdout/stderr at /dev/null, so later writes (and the
        interpreter's flush at exit) cannot fail either; events.jsonl keeps the full record."""
        if self.dead:
            return
        try:
            write()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.dead = True
            self._progress = None
            try:
                ours = self.stream.fileno() in (1, 2)
            except (OSError, ValueError, AttributeError):
                ours = False
            if ours:
                detach_from_terminal()

    def __call__(self, event: Event) -> None:
        if self.dead:
            return
        if self._batched is not None:
            self._batched(event)
        else:
            self._event(event)

    def _event(self, event: Event) -> None:
        match event:
            case StepReport():
                total = f"/{self.started.total_steps}" if self.started and self.started.total_steps else ""
                epochs = f"/{self.started.epochs}" if self.started and self.started.epochs else ""
                eta = f" ETA {duration(event.eta_s)}" if event.eta_s is not None else ""
                text = (f"epoch {event.epoch}{epochs} step {event.step}{total} loss {event.loss:.4f}"
                        f" lr {lrs_text(event.lrs)} {event.samples_per_s:,.0f} samples/s{data_text(event)}{eta}"
                        f"{fullest_rank(event)}")
                if self._progress is not None:
                    self._write(lambda: self._progress.update(self._task, completed=event.step,
                                                              status=f"loss {event.loss:.4f}"))
                else:
                    self.line(text)
            case RunStarted():
                self.started = event
                frozen = event.params_total - event.params_trainable
                ranks = ""
                if event.world > 1:
                    ranks = f" | {event.world} ranks" + (f" on {event.nodes} nodes" if event.nodes > 1 else "")
                self.line(f"{event.run_name} | {event.device_name}{ranks} | amp {event.amp} | weights {event.weights}"
                          f" | {event.data}")
                self.line(f"model: {human_count(event.params_total)} params, {human_count(event.params_trainable)}"
                          f" trainable, {human_count(frozen)} frozen | {length_text(event)} | run dir {event.run_dir}")
                if event.resumed_from:
                    self.line(f"resumed from {event.resumed_from} at step {event.start_step}"
                              f" (epoch {event.start_epoch})")
                if self._progress is not None:
                    self._write(self._progress.start)
                if self._progress is not None:
                    self._task = self._progress.add_task(event.run_name, total=event.total_steps,
                                                         completed=event.start_step, status="")
            case Failed():
                self._stop_progress()
                # One line: what failed and where; the full traceback is in events.jsonl (Failed).
                where = innermost_frame(event.traceback)
                saved = f"; emergency checkpoint {event.emergency_path}" if event.emergency_path else ""
                record = (f"; traceback in {self.started.run_dir}/events.jsonl"
                          if self.started and event.traceback else "")
                self.line(f"FAILED at step {event.step}: {event.error}{f' ({where})' if where else ''}{saved}"
                          f"{record}", "red")
            case Finished():
                self._stop_progress()
                self._say(event)
            case _:
                self._say(event)

    def _say(self, event: Event) -> None:
        said = event_line(event, self.started)
        if said is not None:
            text, level = said
            self.line(text, _STYLES[level])

    def close(self) -> None:
        if self._batched is not None:
            self._batched.close()
        self._stop_progress()

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._write(self._progress.stop)
            self._progress = None


def data_text(event: StepReport) -> str:
    """` data 34%`: the share of the report's wall time spent waiting for batches (input-bound above ~20%)."""
    return f" data {event.data_wait:.0%}" if event.data_wait is not None else ""


def fullest_rank(event: StepReport) -> str:
    """Many ranks, at a memory sample: " | mem max 12.3G/79.6G (rank 3)", the rank with the most
    allocated on its GPU (or the largest RSS); "" otherwise."""
    if not event.ranks:
        return ""
    rank, m = max(enumerate(event.ranks), key=lambda rm: rm[1].allocated if rm[1].allocated is not None else rm[1].rss)
    if m.allocated is not None and m.total:
        return f" | mem max {short_bytes(m.allocated)}/{short_bytes(m.total)} (rank {rank})"
    return f" | RSS max {short_bytes(m.rss)} (rank {rank})"


def innermost_frame(traceback_text: str) -> str:
    """'path/to/file.py:12 in forward' of the last frame of a formatted traceback, or ''."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', traceback_text or "")
    if not frames:
        return ""
    path, line, func = frames[-1]
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:
        pass
    return f"{path}:{line} in {func}"


def detach_from_terminal() -> None:
    """Point fds 1 and 2 at /dev/null (the terminal is gone, or the log cannot be written)."""
    point_at_devnull((1, 2))


class SignalHandlers:
    """Turn signals into engine commands (the handler only puts a command on a queue)."""

    def __init__(self, control: Control, on_abort=None):
        self.control = control
        self.on_abort = on_abort  # called before a second SIGINT raises KeyboardInterrupt
        self.saved: dict[int, object] = {}
        self.interrupts = 0

    def install(self) -> None:
        self._set(signal.SIGINT, self._on_int)
        self._set(signal.SIGTERM, self._on_term)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: keep ignoring it
            self._set(signal.SIGHUP, self._on_term)
        self._set(signal.SIGUSR1, self._on_usr1)

    def _set(self, signum: int, handler) -> None:
        self.saved[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        self.saved.clear()

    def _on_int(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            if self.on_abort is not None:
                self.on_abort()
            raise KeyboardInterrupt  # second Ctrl+C: abort now
        self.control.send(Stop(reason="user"))
        try:  # a signal handler must not raise into the training step (EIO: terminal gone)
            sys.stderr.write("\nstopping after this step (Ctrl+C again aborts without saving)\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _on_term(self, signum, frame) -> None:
        self.control.send(Stop(reason="signal", signum=signum))

    def _on_usr1(self, signum, frame) -> None:
        self.control.send(SaveCheckpoint(tag="manual"))


def run_headless(preset_path, overrides=(), *, resume=None, run_dir=None, stream=None, serve=False,
                 opener=None) -> int:
    """`serve`: open the control socket so `tui-trainer attach` can steer this run. `opener`: what
    opens the run instead of a preset file (see ui/launch.make_app)."""
    import functools

    from tui_trainer.run.launch import prepare

    reporter = LineReporter(stream, within=LINES_WITHIN_S)
    opener = opener or functools.partial(prepare, preset_path, list(overrides), resume=resume, run_dir=run_dir)
    session = opener(sinks=[reporter], serve=serve)
    handlers = SignalHandlers(session.control, on_abort=session.abort)
    if session.trainer.dist.writer:  # many ranks: rank 0 stops them all; the others keep ignoring signals
        handlers.install()
    try:
        final = session.trainer.run()
    finally:
        handlers.restore()
        reporter.close()  # also on the abort path (second Ctrl+C): give the terminal its cursor back
        session.close()
    return final.exit_code


def length_text(event: RunStarted) -> str:
    """How long the run is: "1400 steps (10 epochs x 140)", or what is not known (a loader with no
    len, a loop without run.epochs)."""
    if event.total_steps:
        return f"{event.total_steps} steps ({epochs_text(event.epochs)} x {event.steps_per_epoch})"
    if event.epochs:
        return f"{epochs_text(event.epochs)} of a length not known ahead (the loader has no len)"
    return "epochs not counted (run.epochs(n) not used)"


def epochs_text(n: int) -> str:
    return "1 epoch" if n == 1 else f"{n} epochs"
