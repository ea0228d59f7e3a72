"""How the app meets the process: the one app factory the CLI, tests and benchmarks use
(`make_app`, `make_attach_app`), and running it (`run_app`, `run_attach`) with everything around
it that is about the process, not the screen: signal handling before and after the app, a
terminal that hung up (`_go_headless`, the fd `dup2`), an abort, a crash of the app itself, and
waiting for the engine's last save. `app.py` keeps the App itself."""

from __future__ import annotations

import os
import signal
import sys
import traceback

from tui_trainer.engine.events import Failed, Finished, RunWarning, StateChanged
from tui_trainer.signals import TERMINAL_SIGNALS, point_at_devnull
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.link import LocalLink


def make_app(preset_path, overrides=(), *, resume=None, run_dir=None, paused=False,
             handle_signals: bool = False, serve: bool = False, opener=None) -> TrainerApp:
    """The one app factory, used by the CLI, tests and benchmarks: prepares the run (bad input
    raises UserError here, before any screen appears) and wires it to the app. `opener`: instead of
    a preset file, what opens the run (`tui_trainer.fit`, `tui_trainer.loop`): called with prepare's
    wiring (sinks, should_stop, layer_stats, serve), it returns the Session."""
    import functools

    from tui_trainer.run.launch import prepare

    link = LocalLink()
    opener = opener or functools.partial(prepare, preset_path, list(overrides), resume=resume, run_dir=run_dir)
    session = opener(sinks=[link.sink], should_stop=link.should_stop, layer_stats=True, serve=serve)
    link.bind(session)
    ui = session.preset.ui
    return TrainerApp(link, refresh_hz=ui.refresh_hz, lr_reduce_factor=ui.lr_reduce_factor, paused=paused,
                      handle_signals=handle_signals)


def run_app(preset_path, overrides=(), *, resume=None, run_dir=None, paused=False,
            on_hangup: str = "stop", opener=None) -> int:
    early: list[int] = []  # a hang-up while the model and data are built: acted on once the app runs
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda signum, frame: early.append(signum))
    app = make_app(preset_path, overrides, resume=resume, run_dir=run_dir, paused=paused, handle_signals=True,
                   serve=True, opener=opener)
    app.detach_on_hangup = on_hangup == "detach"
    app.early_hangup = early
    link = app.link
    raised: Exception | None = None
    crash: BaseException | None = None
    try:
        app.run(mouse=False)
    except Exception as exc:  # noqa: BLE001 - a crash Textual did not catch; judged below
        raised = exc
    finally:
        if app.aborted:  # second ctrl+c: the terminal is restored; skip the engine's save on purpose
            link.session.abort()
            os._exit(130)
        crash = ui_crash(app, raised)
        if crash is not None:  # recorded before the stop, so it lands before the final event
            _report_crash(link, crash, shown=raised is None)
        if not app.hangup_detached:
            link.close()  # however the app ended, the engine stops after its step and saves
    if app.hangup_detached:
        _go_headless(link, app.view.started)
    _wait_for_engine(link)
    if crash is not None:
        _tell(_crash_ending(link))
        return 1  # whatever the engine's ending: the process failed
    return app.exit_code


def ui_crash(app: TrainerApp, raised: Exception | None = None) -> BaseException | None:
    """The exception that ended the app, when the app itself crashed; None when it ended as
    planned, or when the terminal went away (then the hang-up decides the ending, and a failure on
    the way out is its symptom: the old behaviour, kept).

    Textual 8 catches an exception in a handler, a timer or a worker itself: `_handle_exception`
    sets `return_code` 1 and `_exception`, exits the app, and after the terminal is restored prints
    a traceback to stderr; `App.run()` then returns normally. `return_code` alone cannot tell a
    crash from our own `exit(1)` (a failed run), so `_exception` is read (textual is pinned < 9; a
    test fails if this stops working). Anything that escapes `App.run()` is the other way."""
    if app.hung_up:
        return None
    return raised if raised is not None else getattr(app, "_exception", None)


def _report_crash(link: LocalLink, crash: BaseException, shown: bool) -> None:
    """Say it on the terminal (now restored) and record it in events.jsonl (and to viewers) as a
    RunWarning carrying the traceback: the engine itself did not fail, so the run still ends with
    its own Finished or Failed."""
    text = "".join(traceback.format_exception(crash))
    what = f"{type(crash).__name__}: {crash}"
    if not shown:  # Textual printed nothing: it never saw this exception
        _tell(text.rstrip())
    _tell(f"tui-trainer: the monitor crashed ({what}); stopping the training after its step and a save…")
    link.session.note(RunWarning(link.session.trainer.step, f"the monitor crashed ({what}); the training stops"
                                 f" after its step and a save, and the process exits 1; the app's traceback:\n{text}"))


def _crash_ending(link: LocalLink) -> str:
    match link.final:
        case Finished(step=step, last_path=last):
            ended = f"the training stopped at step {step}" + (f" and saved {last}" if last else "")
        case Failed(error=error):
            ended = f"the training failed as well: {error}"
        case _:
            ended = "the training did not report its end"
    where = link.session.run_dir.events_path
    return f"tui-trainer: the monitor crashed; {ended}; the traceback is above and in {where}; exit code 1"


def _tell(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the terminal is gone after all
        pass


def _go_headless(link: LocalLink, started=None) -> None:
    """The terminal is gone (--on-hangup detach): log lines to the run's output.log as --no-ui
    would, stop feeding the app's queue (nobody drains it now), and let the engine and its control
    socket go on for `tui-trainer attach`. Signals from now on are handled as --no-ui handles them:
    the app's handlers went with the app, and a default SIGTERM or SIGUSR1 would kill the process
    with no save."""
    from tui_trainer.run.headless import LineReporter

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal is gone; later hangups mean nothing
    for sig in TERMINAL_SIGNALS:  # Textual's handlers outlive its app; they would draw on nothing
        signal.signal(sig, signal.SIG_DFL)
    session = link.session
    log = os.open(os.path.join(session.run_dir.path, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    reporter = LineReporter(os.fdopen(log, "w", buffering=1), tty=False)
    reporter.started = started  # for "epoch 3/10 step 120/400" in the lines that follow
    reporter.line("the terminal went away (SIGHUP): training goes on headless; `tui-trainer attach` to watch")
    session.sinks.append(reporter)
    link.buffering = False  # keep only the final event


def _wait_for_engine(link: LocalLink) -> None:
    """Wait for the engine (stopping after its save, or going on headless) with the --no-ui signal
    handlers, since the app's went with the app: SIGTERM saves and exits 143, SIGUSR1 saves, SIGINT
    stops, a second SIGINT aborts (socket removed, workers ended, exit 130). A SIGHUP now (the
    session dropped during the last save) no longer kills the process mid-save: the first stop
    decides the ending."""
    from tui_trainer.run.headless import SignalHandlers

    handlers = SignalHandlers(link.session.control, on_abort=link.session.abort)
    handlers.install()
    try:
        link.wait()
    except KeyboardInterrupt:
        os._exit(130)  # the engine thread is mid-step; on_abort already cleaned up


def run_ranks_app(preset_path, overrides=(), *, resume=None, run_dir=None, on_hangup: str = "stop") -> int:
    """`train.devices > 1` in a terminal: the ranks train in processes of their own (started by the
    launcher in a thread here; their output goes to files), and this process is the monitor of rank
    0, exactly as `attach` is: every pane and key, the keys shared with every rank at a step.

    The terminal going away (SIGHUP; the SSH session dropped) ends the monitor and then, as
    `--on-hangup` says: "stop" passes the hang-up to the ranks (rank 0 saves once and every rank
    ends: exit 129); "detach" leaves them training (rank 0 ignores the hang-up too) and this
    process waits for them without a terminal, so `tui-trainer attach` can steer them later."""
    import threading
    import time

    from tui_trainer.run.ranks import Launch, ignore_in_resource_tracker, signal_ranks

    launch = Launch.check(preset_path, list(overrides), resume=resume, run_dir=run_dir)  # bad input: exit 2 here
    launch.on_hangup = on_hangup
    ignore_in_resource_tracker()  # on this (the main) thread: the launcher's runs in the ranks thread
    early: list[int] = []  # a hang-up while the ranks build their data and model
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda signum, frame: early.append(signum))
    ranks = threading.Thread(target=launch.run, kwargs={"quiet": True}, name="ranks", daemon=True)
    ranks.start()
    sock = launch.run_dir / "control.sock"
    while ranks.is_alive() and not sock.exists() and not early:
        time.sleep(0.1)
    hung_up = bool(early)
    code = 0
    passed: list[int] = []  # the hang-up, passed on to the ranks by the monitor as it came
    if ranks.is_alive() and not hung_up:
        app = make_attach_app(launch.run_dir)
        if on_hangup == "stop":
            app.pass_hangup = lambda: (passed.append(1), signal_ranks(signal.SIGHUP))
        try:
            app.run(mouse=False)
        finally:
            app.link.close()  # a viewer leaving never stops the run by itself
        hung_up = app.hung_up
        crash = None if hung_up else ui_crash(app)
        if crash is not None:
            _tell(f"tui-trainer: the viewer crashed ({type(crash).__name__}: {crash}); the run goes on without it")
        code = 1 if crash is not None else app.exit_code
        if ranks.is_alive() and not hung_up:
            _tell(f"tui-trainer: the run goes on ({launch.n} ranks); `tui-trainer attach {launch.run_dir}` to watch"
                  " it, Ctrl+C to stop it after a save")
    # From here this process only waits for the ranks: a Ctrl+C, SIGTERM or SIGUSR1 is passed on to
    # them (rank 0 stops them all after a save), and a hang-up now is what --on-hangup says, as it was
    # for the monitor.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: signal_ranks(signum))
    signal.signal(signal.SIGHUP, signal.SIG_IGN if on_hangup == "detach" else lambda signum, frame: signal_ranks(signum))
    if hung_up:
        point_at_devnull()  # nothing may write to the terminal that went away
        if on_hangup == "stop" and not passed:
            signal_ranks(signal.SIGHUP)  # rank 0 saves once and stops them all (the others ignore it)
    while ranks.is_alive():
        ranks.join(0.2)  # a timed join: the signal handlers above run between waits
    return launch.code if launch.code is not None else code


def run_attach(run_dir=None, base="runs", remote_cmd=None) -> int:
    """`tui-trainer attach`: the same app on a run in another process (or, finished, read-only);
    `ssh://host/run`: on another machine, drawn here (ui/remote.SshLink)."""
    app = make_attach_app(run_dir, base, remote_cmd=remote_cmd)
    try:
        app.run(mouse=False)
    finally:
        app.link.close()  # a viewer leaving never stops the run
    crash = ui_crash(app)
    if crash is not None:  # Textual printed the traceback; the run itself goes on
        _tell(f"tui-trainer: the viewer crashed ({type(crash).__name__}: {crash}); the run goes on without it")
        return 1
    return app.exit_code


def make_attach_app(run_dir=None, base="runs", *, handle_signals: bool = True, remote_cmd=None) -> TrainerApp:
    from pathlib import Path

    from tui_trainer import config
    from tui_trainer.errors import UserError
    from tui_trainer.run.catalog import newest_attachable
    from tui_trainer.run.relay import is_ssh_url, parse_ssh_url
    from tui_trainer.run.rundir import read_events
    from tui_trainer.run.server import live_socket
    from tui_trainer.ui.link import ReplayLink
    from tui_trainer.ui.remote import SocketLink, SshLink

    if is_ssh_url(run_dir):  # the run is on another machine: events come over ssh, the screen is drawn here
        link = SshLink(parse_ssh_url(run_dir), remote_cmd)
        app = TrainerApp(link, refresh_hz=float(link.hello.get("refresh_hz", 10.0)),
                         lr_reduce_factor=float(link.hello.get("lr_reduce_factor", 0.5)), handle_signals=handle_signals)
        app.remote = True
        return app
    if run_dir is None:
        run_dir = newest_attachable(base)
        if run_dir is None:
            raise UserError(f"no running run under {base}/ to attach to; `tui-trainer ls` lists the runs,"
                            " `tui-trainer attach RUN_DIR` shows a finished one", source="attach")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist; `tui-trainer ls` lists runs", source="attach")
    if not (run_dir / "events.jsonl").is_file():
        raise UserError(f"{run_dir} is not a run directory (no events.jsonl); `tui-trainer ls` lists runs",
                        source="attach")
    try:
        ui = config.load(run_dir / "config.toml").ui
    except UserError:
        ui = config.UiSection()
    sock = live_socket(run_dir)
    if sock is not None:
        link = SocketLink(sock)
    else:  # finished, or killed: show what it recorded, read-only
        events = read_events(run_dir / "events.jsonl")
        if not any(isinstance(e, (Finished, Failed)) for e in events):
            last = max((getattr(e, "step", 0) or 0 for e in events), default=0)
            events.append(StateChanged("dead", last))  # no final event and nobody serving it: killed
        link = ReplayLink(events)
    app = TrainerApp(link, refresh_hz=ui.refresh_hz, lr_reduce_factor=ui.lr_reduce_factor,
                     handle_signals=handle_signals)
    app.remote = True
    return app
