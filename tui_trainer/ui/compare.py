"""`tui-trainer compare RUN_DIR RUN_DIR [...]`: 2-6 runs side by side, read-only.

One chart overlays a curve of every run (train loss per step, or a per-epoch value: val loss,
val accuracy, each [[metrics]] entry; `m` cycles them, `x` puts epochs on the x axis, `g` makes
the y axis logarithmic), one colour and one legend entry per run. Below it, each run's state and
best value, and the config.toml keys whose values differ, one column per run. Everything comes
from the runs' events.jsonl (run/history.py): read whole at start, then only what was appended,
once a second, so live runs move and finished ones cost nothing. Nothing is ever sent to a run.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Static

from tui_trainer.run.history import TRAIN_LOSS, RunHistory, config_diff, value_text
from tui_trainer.text.overlay import RUN_COLORS, Line, legend, overlay

POLL_S = 1.0
STATE_STYLE = {"running": "green3", "paused": "yellow", "stopping": "magenta", "starting": "grey70",
               "completed": "dodger_blue1", "early_stopped": "dodger_blue1", "failed": "red3", "dead": "grey50",
               "nonfinite": "red3"}
FIRST_METRICS = ("val_loss", "val_acc")  # then the [[metrics]] in the order first seen, then the epoch train loss
EPOCH_TRAIN = "train_loss (epoch)"


def metric_names(runs: list[RunHistory]) -> list[str]:
    """What `m` cycles through: the train loss per step, then every per-epoch value some run has."""
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run.curves))
    ordered = [m for m in FIRST_METRICS if m in seen]
    ordered += [m for m in seen if m not in FIRST_METRICS and m != EPOCH_TRAIN]
    ordered += [EPOCH_TRAIN] if EPOCH_TRAIN in seen else []
    return [TRAIN_LOSS, *ordered]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


class ChartPlot(Static):
    def on_resize(self) -> None:  # its own new size is known here, after the layout
        self.app.draw_chart()


class CompareApp(App[int]):
    CSS_PATH = "compare.tcss"
    TITLE = "tui-trainer compare"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("m", "metric(1)", "Next metric"),
        Binding("M", "metric(-1)", "Prev metric"),
        Binding("x", "axis", "Step/epoch axis"),
        Binding("g", "log", "Log scale"),  # g as in the Loss pane (l lowers the LR there)
        Binding("q", "quit_compare", "Quit"),
        Binding("ctrl+c", "quit_compare", "Quit", show=False, priority=True),
    ]

    def __init__(self, runs: list[RunHistory], *, poll_s: float = POLL_S) -> None:
        super().__init__()
        self.runs = runs
        self.poll_s = poll_s
        self.metric = TRAIN_LOSS
        self.by_epoch = False  # the x axis: steps (False) or epochs
        self.log_y = False  # a log10 y axis
        self._drawn: tuple | None = None
        self.version = 0  # bumped whenever a poll changed something shown
        self.errors: dict[int, str] = {}  # run index -> why its events.jsonl stopped being readable

    def compose(self) -> ComposeResult:
        yield Static(id="cmp-header")
        with Vertical(id="cmp-chart", classes="pane"):
            yield ChartPlot(id="cmp-plot")
        yield Static(id="cmp-best", classes="pane")
        with VerticalScroll(id="cmp-config", classes="pane"):
            yield Static(id="cmp-diff")
        yield Footer()

    def on_resize(self, event) -> None:
        self._width = event.size.width
        self._draw_tables()  # the table's headers depend on the width

    def on_mount(self) -> None:
        self.query_one("#cmp-best").border_title = "Runs"
        self.query_one("#cmp-config").border_title = "Config: what differs"
        self._draw_tables()
        self._draw_header()
        self.set_interval(self.poll_s, self.poll)
        self.call_after_refresh(self.draw_chart)

    # ------------------------------------------------------------------ reading

    def poll(self) -> None:
        """Read what every run appended since the last poll; redraw only when something changed."""
        changed = False
        for i, run in enumerate(self.runs):
            try:
                changed |= run.poll()
                changed |= self.errors.pop(i, None) is not None  # readable again
            except OSError as exc:  # moved or made unreadable while we watch: keep what we have, say so
                if i not in self.errors:
                    self.errors[i] = f"events.jsonl unreadable ({exc.strerror or exc})"
                    changed = True
        if changed:
            self.version += 1
            self._draw_header()
            self._draw_tables()
            self.draw_chart()

    # ------------------------------------------------------------------ keys

    def action_metric(self, step: int) -> None:
        names = metric_names(self.runs)
        i = names.index(self.metric) if self.metric in names else 0
        self.metric = names[(i + step) % len(names)]
        self._draw_header()
        self._draw_tables()
        self.draw_chart()

    def action_axis(self) -> None:
        self.by_epoch = not self.by_epoch
        self.draw_chart()

    def action_log(self) -> None:
        self.log_y = not self.log_y
        self.draw_chart()

    def action_quit_compare(self) -> None:
        self.exit(0)

    # ------------------------------------------------------------------ drawing

    def _draw_header(self) -> None:
        live = sum(1 for r in self.runs if not r.final and r.state != "dead")
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" tui-trainer compare ", style="bold reverse")
        text.append(f"  {len(self.runs)} runs")
        if live:
            text.append(f" · {live} live", style="green3")
        names = metric_names(self.runs)
        text.append("  ·  metric ")
        for name in names:
            text.append(f" {name} ", style="bold reverse" if name == self.metric else "grey62")
        self.query_one("#cmp-header", Static).update(text)

    def _lines(self) -> list[Line]:
        out = []
        for i, run in enumerate(self.runs):
            curve = run.curve(self.metric)
            xs, ys = (list(curve.xs), list(curve.ys)) if curve is not None else ([], [])
            spe = run.steps_per_epoch or 0
            if self.metric == TRAIN_LOSS and self.by_epoch and spe:
                xs = [x / spe for x in xs]
            elif self.metric != TRAIN_LOSS and not self.by_epoch:
                xs = [x * spe for x in xs] if spe else []  # the epoch's last step
            last = run.last(self.metric)
            note = _num(last) if last is not None else "(none)"
            out.append(Line(run.label, xs, ys, RUN_COLORS[i % len(RUN_COLORS)], note, marks=self.metric != TRAIN_LOSS))
        return out

    def draw_chart(self) -> None:
        plot = self.query_one("#cmp-plot", Static)
        width, height = plot.size.width, plot.size.height
        if width < 10 or height < 4:
            return
        signature = (self.version, self.metric, self.by_epoch, self.log_y, width, height)
        if signature == self._drawn:
            return
        self._drawn = signature
        pane = self.query_one("#cmp-chart")
        what = "per step" if self.metric == TRAIN_LOSS else "per epoch"
        pane.border_title = f"{self.metric} {what}"
        scale = " · log y" if self.log_y else ""
        pane.border_subtitle = f"x: {'epoch' if self.by_epoch else 'step'}{scale} · m metric · x axis · g log"
        empty = f"no run has {self.metric} yet" if self.metric != TRAIN_LOSS else "no steps reported yet"
        lines = self._lines()
        # a short screen: the plot keeps its rows and the Runs table's colour marks are the legend
        with_legend = height - legend(lines, width).plain.count("\n") - 1 >= 6
        plot.update(overlay(lines, width, height, empty=empty, log=self.log_y, with_legend=with_legend))

    def _draw_tables(self) -> None:
        monitors = {run.monitor for run in self.runs}
        one_monitor = len(monitors) == 1 and None not in monitors
        longest = max(len(run.label) for run in self.runs) + 2
        best = Table(box=None, expand=True, pad_edge=False, padding=(0, 1), header_style="bold underline")
        best.add_column("run", ratio=3, no_wrap=True, overflow="ellipsis", min_width=min(longest, 18))
        best.add_column("status", no_wrap=True, overflow="ellipsis")
        best.add_column("steps", justify="right", no_wrap=True)
        if not one_monitor:
            best.add_column("monitor", no_wrap=True, overflow="ellipsis")
        best.add_column(f"best {next(iter(monitors))}" if one_monitor else "best", justify="right", no_wrap=True)
        best.add_column("at epoch", justify="right", no_wrap=True)
        wide = getattr(self, "_width", self.size.width) >= 100
        best.add_column(f"last {self.metric}" if wide else "last", justify="right", no_wrap=True, overflow="ellipsis")
        for i, run in enumerate(self.runs):
            name = Text("━ ", style=RUN_COLORS[i % len(RUN_COLORS)])
            name.append(run.label)
            state = self.errors.get(i) or run.state
            epoch = "-" if run.best_epoch is None else str(run.best_epoch)
            cells = [name, Text(state.replace("_", " "), style=STATE_STYLE.get(run.state, "")), run.steps_text]
            cells += [] if one_monitor else [run.monitor or "-"]
            best.add_row(*cells, _num(run.best), epoch, _num(run.last(self.metric)))
        self.query_one("#cmp-best", Static).update(best)

        rows = config_diff([run.config for run in self.runs])
        parts: list = []
        if rows:
            diff = Table(box=None, expand=True, pad_edge=False, padding=(0, 1), header_style="bold underline")
            diff.add_column("key", no_wrap=True, overflow="ellipsis", ratio=3)
            for i, run in enumerate(self.runs):
                diff.add_column(Text(run.label, style=f"bold {RUN_COLORS[i % len(RUN_COLORS)]}"), ratio=2,
                                no_wrap=True, overflow="ellipsis")
            for key, values in rows:
                diff.add_row(key, *(value_text(v) for v in values))
            parts.append(diff)
        elif all(run.config is not None for run in self.runs):
            parts.append(Text("the runs' config.toml files are the same", style="grey62"))
        parts += [Text(f"{run.label}: {run.config_error}", style="yellow") for run in self.runs if run.config_error]
        self.query_one("#cmp-diff", Static).update(Group(*parts))
        self.query_one("#cmp-config").border_subtitle = f"{len(rows)} key{'s differ' if len(rows) != 1 else ' differs'}"


def run_compare(runs: list[RunHistory]) -> int:
    """The command, once the runs are open (run/history.py open_runs: a bad one was one line, exit 2,
    before the screen opened): show them until q."""
    app = CompareApp(runs)
    app.run(mouse=False)
    return app.return_code or 0
