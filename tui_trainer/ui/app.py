"""The Textual app: compose the panes, drain the engine link on a timer, turn keys into commands.

Data flow (see DESIGN.md): the engine never waits on us. Its events land in the link's deque; a
`set_interval(1 / refresh_hz)` tick drains them into a RunView and redraws what changed; plots
redraw at most 4 times a second. Keys become engine commands; panes show only what the engine
confirmed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from tui_trainer.engine.commands import Command, Pause, Resume, SaveCheckpoint, ScaleLr, Stop
from tui_trainer.engine.events import Failed, Finished
from tui_trainer.text.format import duration
from tui_trainer.signals import point_at_devnull, terminal_alive
from tui_trainer.ui.link import EngineLink
from tui_trainer.ui.messages import SendCommand
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.header import RunHeader
from tui_trainer.ui.widgets.help import HelpScreen, SummaryScreen
from tui_trainer.ui.widgets.layers import LayersPane
from tui_trainer.ui.widgets.log import EventLog
from tui_trainer.ui.widgets.losses import LossPane
from tui_trainer.ui.widgets.lr_preview import LrPane
from tui_trainer.ui.widgets.memory import MemoryPane
from tui_trainer.ui.widgets.pane import Pane

PANES = ("layers", "lr", "loss", "memory", "log")
# How often a pane may redraw at most (s). The UI thread and the trainer share the GIL: on a small
# model every millisecond of drawing is a millisecond of training lost (measured: the process never
# uses more than one core between the two threads). So panes redraw about as often as a person can
# read them (nvitop and htop refresh every 1.5-2 s): header, loss and log twice a second (log lines
# keep their event's time), memory, layer statistics and the LR plot once a second. Halving the
# header and loss rates (from 4 Hz) took the app from about 0.85 to about 0.9 of a bare loop on the
# tiny benchmark (benchmarks/RESULTS.md). Events are still drained every 1 / refresh_hz and keys
# are handled at once: only drawing is paced.
REDRAW_PERIOD_S = {"header": 0.5, "loss": 0.5, "memory": 1.0, "log": 0.5, "lr": 1.0, "layer_stats": 1.0}


class TrainerApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tui-trainer"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [  # the footer shows them in this order, after the focused pane's: what matters first
        Binding("p", "pause", "Pause"),
        Binding("q", "stop", "Stop"),
        Binding("d", "detach", "Detach"),  # shown only when attached (check_action)
        Binding("s", "save", "Save"),
        Binding("l", "lr_down", "LR lower"),
        Binding("L", "lr_up", "LR undo"),
        Binding("question_mark", "help", "Help"),
        # the Loss pane's chart (its border says so; the footer has no room for them at 80 columns)
        Binding("m", "chart_metric", "Metric", show=False),
        Binding("g", "chart_log", "Log scale", show=False),
        Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True),
        Binding("ctrl+q", "interrupt", "Stop", show=False, priority=True),
        *[Binding(str(i + 1), f"show_pane('{name}')", show=False) for i, name in enumerate(PANES)],
    ]

    def __init__(self, link: EngineLink, *, refresh_hz: float = 10.0, lr_reduce_factor: float = 0.5,
                 paused: bool = False, handle_signals: bool = False) -> None:
        super().__init__()
        self.link = link
        self.view = RunView()
        self.refresh_hz = refresh_hz
        self.lr_factor = lr_reduce_factor
        self.start_paused = paused
        self.handle_signals = handle_signals
        self.aborted = False
        self.remote = bool(getattr(link, "remote", False))  # a viewer of a run in another process
        self.hangup_detached = False  # the terminal went away and the run goes on headless
        # a viewer that is the monitor of ranks this process started: passes a hang-up on to them at
        # once (ui/launch.run_ranks_app; they are in process groups of their own, so it reaches them
        # only so), not after the app has wound down
        self.pass_hangup: Callable[[], None] | None = None
        self.detach_on_hangup = False
        self.terminal_gone = False  # set by the driver (any thread) when a write to the terminal failed
        self._hung_up = False
        self._sighup_ignored = False
        self.early_hangup: list[int] = []  # SIGHUPs caught before the app could handle them
        self.active_pane = "layers"
        self._interrupts = 0
        self._exit_on_final = False
        self._redraw: set[str] = set()
        self._drawn_at: dict[str, float] = {}
        self._signals: list[int] = []
        self._widgets: dict[str, object] = {}

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="top"):
            yield LayersPane(id="layers", classes="pane")
            with Vertical(id="right"):
                yield LrPane(id="lr", classes="pane")
                yield LossPane(id="loss", classes="pane")
        with Horizontal(id="bottom"):
            yield MemoryPane(id="memory", classes="pane")
            yield EventLog(id="log", classes="pane")
        yield Static(id="tabs")
        yield Footer()

    def get_driver_class(self):
        from tui_trainer.ui.terminal import driver_class

        return driver_class() or super().get_driver_class()

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "detach":
            return self.remote  # only a viewer can leave a run behind
        return True

    def w(self, selector: str):
        """A widget of the main screen. (App.query_one searches the active screen, which is the
        help or summary screen while one is open.)"""
        widget = self._widgets.get(selector)
        if widget is None:
            widget = self._widgets[selector] = self.screen_stack[0].query_one(selector)
        return widget

    def on_mount(self) -> None:
        self.set_interval(1 / self.refresh_hz, self._tick)
        if self.handle_signals:
            self._install_signals()
            if self.early_hangup:
                self._on_hangup()
        if self.start_paused and not self.link.read_only:
            self.link.send(Pause())  # before the first step: freeze layers first
        self.link.start()
        self.w("#layer-table").focus()
        self._layout()
        self._tick()

    def on_resize(self) -> None:
        self._layout()

    def _layout(self) -> None:
        """Wide: every pane at once. Narrow (under 100x30): one pane at a time, keys 1-5."""
        narrow = self.size.width < 100 or self.size.height < 30
        for name in PANES:
            self.w(f"#{name}").display = not narrow or name == self.active_pane
        self.w("#right").display = not narrow or self.active_pane in ("lr", "loss")
        self.w("#top").display = not narrow or self.active_pane in ("layers", "lr", "loss")
        self.w("#bottom").display = not narrow or self.active_pane in ("memory", "log")
        tabs = self.w("#tabs")
        tabs.display = narrow
        if narrow:
            text = Text()
            for i, name in enumerate(PANES):
                style = "bold reverse" if name == self.active_pane else "grey62"
                text.append(f" {i + 1} {name} ", style=style)
            tabs.update(text)
        self._redraw |= {"lr", "loss", "memory"}
        self.view.dirty.add("header")

    def action_show_pane(self, name: str) -> None:
        self.active_pane = name
        self._layout()
        if name == "layers":
            self.w("#layer-table").focus()
        elif name == "log":
            self.w("#log").focus()

    # ------------------------------------------------------------------ the tick

    def _tick(self) -> None:
        if self.terminal_gone and not self._hung_up:
            self._on_hangup()
        for event in self.link.drain():
            self.view.apply(event)
        view = self.view
        dirty = view.take_dirty()
        if "layers" in dirty and view.started is not None:  # the tree and its marks: at once, not paced
            self._pane("layers").draw(view, "layers")
        self._redraw |= dirty & set(REDRAW_PERIOD_S)
        now = time.monotonic()
        final = "final" in dirty  # the last picture is drawn whole, at once
        for name in list(self._redraw):
            if not final and now - self._drawn_at.get(name, 0.0) < REDRAW_PERIOD_S[name]:
                continue
            pane = self._pane(name)
            if pane.display or name == "log":  # the log keeps its lines even while hidden
                pane.draw(view, name)
                self._drawn_at[name] = now
                self._redraw.discard(name)
        if final:
            self._on_final()

    def _on_final(self) -> None:
        final = self.view.final
        if self._exit_on_final:  # a signal ended it: nobody is there to read a summary
            self.exit(final.exit_code)
            return
        if isinstance(self.screen, SummaryScreen):
            return

        def leave(go: bool | None) -> None:
            if go:
                self.exit(self.exit_code)

        self.push_screen(SummaryScreen(summary_text(final, self.view)), leave)

    # ------------------------------------------------------------------ keys -> commands

    def _send(self, command: Command, note: str = "") -> bool:
        if self.link.read_only:
            self.notify("read-only: this run is not live", severity="warning")
            return False
        if self.view.final is not None:
            self.notify("the run has ended", severity="warning")
            return False
        try:
            self.link.send(command)
        except ConnectionError as exc:
            self.notify(str(exc), severity="error")
            return False
        if note:
            self.notify(note, timeout=2)
        return True

    def on_send_command(self, message: SendCommand) -> None:
        self._send(message.command, message.note)

    def action_save(self) -> None:
        self._send(SaveCheckpoint(), "saving a checkpoint…")

    def action_lr_down(self) -> None:
        self._send(ScaleLr(self.lr_factor), f"LR ×{self.lr_factor:g}")

    def action_lr_up(self) -> None:
        if self.view.manual_factor >= 1.0 - 1e-9:
            self.notify("nothing to undo: the LR follows its schedule", severity="warning")
            return
        self._send(ScaleLr(1 / self.lr_factor), f"LR ×{1 / self.lr_factor:g} (undo)")

    def action_pause(self) -> None:
        if self.view.state == "paused":
            self._send(Resume(), "resuming")
        else:
            self._send(Pause(), "pausing after this step")

    def action_stop(self) -> None:
        if self.view.final is not None or self.link.read_only:
            self.exit(self.exit_code)
        elif self.view.state == "stopping":
            self.notify("stopping: saving the last checkpoint…")
        else:
            self._send(Stop(reason="user"), "stopping after this step (saves a checkpoint)")

    def action_detach(self) -> None:
        """Leave the viewer; the run goes on (attach again with `tui-trainer attach`)."""
        self.exit(0)

    def action_interrupt(self) -> None:
        self._interrupts += 1
        if self.remote:  # ctrl+c leaves a viewer; stopping a shared run is `q`
            self.action_detach()
        elif self.view.final is not None or self.link.read_only:
            self.exit(self.exit_code)
        elif self._interrupts >= 2:
            self.aborted = True  # second ctrl+c: leave now, no save
            self.exit(130)
        else:
            self._send(Stop(reason="user"), "stopping after this step; ctrl+c again aborts without saving")

    def action_chart_metric(self) -> None:
        """The Loss chart shows the next metric the run reports (drawn at once, not paced)."""
        pane = self._pane("loss")
        pane.next_metric(self.view)
        self._chart_changed(pane)

    def action_chart_log(self) -> None:
        """A log scale for the Loss chart's losses, on / off."""
        pane = self._pane("loss")
        pane.toggle_log()
        self._chart_changed(pane)

    def _chart_changed(self, pane) -> None:
        if pane.display:
            pane.draw(self.view, "loss")
            self._drawn_at["loss"] = time.monotonic()
            self._redraw.discard("loss")
        else:  # a small terminal showing another pane: say it, and draw when the pane is shown
            self._redraw.add("loss")
            self.notify(pane.title, timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # ------------------------------------------------------------------ signals and exit

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        self._sighup_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
            if sig == signal.SIGHUP and self._sighup_ignored:
                continue  # started under nohup: keep ignoring it (a dead terminal then means: go on headless)
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGUSR1:
            self._send(SaveCheckpoint())
        elif sig == signal.SIGINT:
            self.action_interrupt()
        elif sig == signal.SIGHUP:
            self._on_hangup()
        else:
            self._stop_for_signal(sig)

    def _on_hangup(self) -> None:
        """SIGHUP, or a write to the terminal failed: the terminal (the SSH session) is gone."""
        if self._hung_up:
            return
        self._hung_up = True
        if not terminal_alive(0):  # nothing may write to a dead terminal, not even Textual's goodbye
            point_at_devnull()
        if self.remote:  # a viewer's terminal went away: the run itself goes on (unless it passes it on)
            if self.pass_hangup is not None:
                self.pass_hangup()
            self.exit(0)
        elif (self.detach_on_hangup or self._sighup_ignored) and self.view.final is None:
            self.hangup_detached = True  # --on-hangup detach (or nohup): keep training headless, socket open
            self.exit(0)
        else:
            self._stop_for_signal(signal.SIGHUP)

    def _stop_for_signal(self, sig: int) -> None:
        """SIGTERM, SIGHUP: save, then leave with 128+signal."""
        self._exit_on_final = True
        if self.view.final is not None:
            self.exit(self.exit_code)
        else:
            self.link.send(Stop(reason="signal", signum=int(sig)))

    def on_unmount(self) -> None:
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)

    @property
    def hung_up(self) -> bool:
        """The terminal went away (SIGHUP, or a write to it failed)."""
        return self._hung_up or self.terminal_gone

    @property
    def redraw_pending(self) -> bool:
        """Shown panes with new data waiting for their redraw period (tests settle on this)."""
        if self.view.dirty:
            return True
        return any(name == "log" or self._pane(name).display for name in self._redraw)

    def _pane(self, name: str) -> Pane:
        """The widget that draws `name` (layer statistics live in the layers pane)."""
        return self.w("#layers" if name == "layer_stats" else f"#{name}")

    @property
    def final_event(self) -> Finished | Failed | None:
        return self.link.final

    @property
    def exit_code(self) -> int:
        if self.aborted:
            return 130
        final = self.link.final
        if self.remote and final is None:
            return 0  # detached: the run goes on
        return final.exit_code if final is not None else 0


def summary_text(final: Finished | Failed, view: RunView) -> Text:
    text = Text()
    if isinstance(final, Failed):
        text.append("FAILED\n", style="bold red")
        text.append(f"{final.error}\n")
        if final.emergency_path:
            text.append(f"emergency checkpoint: {final.emergency_path}\n")
        text.append("the traceback is in the log pane and events.jsonl\n", style="grey50")
        return text
    style = "bold green" if final.exit_code == 0 else "bold red"
    text.append(f"{final.status.replace('_', ' ').upper()}\n", style=style)
    text.append(f"{final.message}\n")
    text.append(f"{final.step} steps in {duration(final.seconds)}\n")
    if final.best is not None and view.started is not None:
        text.append(f"best {final.monitor or view.started.monitor} {final.best:.4f} at epoch {final.best_epoch}\n",
                    style="green3")
    if final.best_path:
        text.append(f"best: {final.best_path}\n")
    if final.last_path:
        text.append(f"last: {final.last_path}\n")
    if view.started is not None:
        text.append(f"run dir: {view.started.run_dir}\n", style="grey50")
    return text
