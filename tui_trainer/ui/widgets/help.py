"""Help (?) and the end-of-run summary: small modal screens."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("s", "save a checkpoint now (path in the log)"),
    ("l / L", "lower the LR of all groups by ui.lr_reduce_factor / undo one step"),
    ("p", "pause / resume (between steps; the UI stays live)"),
    ("q", "stop: finish the step, save, show a summary (q or Enter again leaves)"),
    ("ctrl+c", "same as q; a second ctrl+c aborts at once without saving"),
    ("space / enter", "layers: freeze / unfreeze the selected row's subtree"),
    ("f", "layers: freeze from the top down to the selected row, train the rest"),
    ("u", "layers: unfreeze everything"),
    ("→ / ←", "layers: expand / collapse a block"),
    ("m", "loss chart: the next metric (train loss, val loss, val acc, each [[metrics]] entry)"),
    ("g", "loss chart: log scale for losses, on / off"),
    ("tab", "move focus between panes (scroll the log)"),
    ("1-5", "small terminals: show layers, LR, loss, memory, log"),
    ("?", "this help (any key closes it)"),
)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q,enter", "dismiss", "Close")]

    def compose(self):
        table = Table(box=None, padding=(0, 2), show_header=False)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="help-box"):
            yield Static(Text("tui-trainer keys", style="bold"))
            yield Static(table)

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


class SummaryScreen(ModalScreen[bool]):
    """Shown when the run ends; q / Enter leave the app (d too: a viewer pressing `d` just as the
    run ends still gets out), Escape closes it to look around first."""

    BINDINGS = [Binding("q,enter,d", "leave", "Leave"), Binding("escape", "look", "Look around")]

    def __init__(self, text: Text) -> None:
        super().__init__()
        self.text = text

    def compose(self):
        with Vertical(id="summary-box"):
            yield Static(self.text)
            yield Static(Text("q or Enter to leave · Esc to look around first (then q leaves)", style="grey50"))

    def action_leave(self) -> None:
        self.dismiss(True)

    def action_look(self) -> None:
        self.dismiss(False)
