"""Layers: a tree of the modules that own parameters, with the engine's confirmed trainable state.

Space/Enter toggles the row's subtree, `f` freezes from the top down to the row (fastai's
freeze_to) and unfreezes the rest, `u` unfreezes all, →/← expand and collapse. Keys send
commands; the marks change only when the engine's TrainableChanged comes back.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui_trainer.build.layers import LayerInfo, matches
from tui_trainer.engine.commands import SetTrainable
from tui_trainer.run.format import human_count
from tui_trainer.ui.messages import SendCommand
from tui_trainer.ui.view import RunView

COLUMNS = (("layer", "name"), ("type", "type"), ("output", "shape"), ("params", "params"), ("train", "train"),
           ("‖grad‖", "grad"), ("Δw/w", "upd"))

MARKS = {True: Text("● on", style="green3"), False: Text("○ off", style="red3"), None: Text("◐ mix", style="yellow")}


def parent_of(rows: tuple[LayerInfo, ...]) -> dict[str, str | None]:
    """Each row's nearest ancestor row (by dotted name), or None at the top."""
    names = {r.name for r in rows}
    out = {}
    for r in rows:
        parts = r.name.split(".")
        out[r.name] = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                            if ".".join(parts[:i]) in names), None)
    return out


class LayerTable(DataTable):
    BINDINGS = [
        Binding("space", "toggle", "Freeze/unfreeze"),
        Binding("enter", "toggle", "Freeze/unfreeze", show=False),
        Binding("f", "freeze_to", "Freeze to here"),
        Binding("u", "unfreeze_all", "Unfreeze all"),
        Binding("right", "expand", "Expand", show=False),
        Binding("left", "collapse", "Collapse", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.rows_info: tuple[LayerInfo, ...] = ()
        self.position: dict[str, int] = {}
        self.parent_row: dict[str, str | None] = {}
        self.has_children: set[str] = set()
        self.expanded: set[str] = set()
        self.trainable: tuple[bool | None, ...] = ()
        self.stats: tuple[tuple[float | None, ...], tuple[float | None, ...]] = ((), ())
        self.shown: list[str] = []
        self.read_only = False

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key, width=8 if key in ("grad", "upd") else None)

    # ------------------------------------------------------------------ data in

    def set_layers(self, layers: tuple[LayerInfo, ...], trainable: tuple[bool | None, ...]) -> None:
        self.rows_info = layers
        self.position = {r.name: i for i, r in enumerate(layers)}
        self.parent_row = parent_of(layers)
        self.has_children = {p for p in self.parent_row.values() if p}
        self.trainable = trainable
        # Small models open fully; big ones show their top-level blocks.
        self.expanded = set(self.has_children) if len(layers) <= 24 else set()
        self.rebuild()

    def set_trainable(self, trainable: tuple[bool | None, ...]) -> None:
        self.trainable = trainable
        for name in self.shown:
            self.update_cell(name, "train", self._mark(name))

    def set_stats(self, grad: tuple[float | None, ...], ratio: tuple[float | None, ...]) -> None:
        self.stats = (grad, ratio)
        for name in self.shown:
            g, u = self._stat_cells(name)
            self.update_cell(name, "grad", g)
            self.update_cell(name, "upd", u)

    def rebuild(self) -> None:
        keep = self.current_name()
        self.clear()
        self.shown = [r.name for r in self.rows_info if self._shown(r.name)]
        for name in self.shown:
            self.add_row(*self._cells(name), key=name)
        if keep in self.shown:
            self.move_cursor(row=self.shown.index(keep))

    def _shown(self, name: str) -> bool:
        parent = self.parent_row.get(name)
        while parent is not None:
            if parent not in self.expanded:
                return False
            parent = self.parent_row.get(parent)
        return True

    def _cells(self, name: str) -> list:
        row = self.rows_info[self.position[name]]
        glyph = ("▾ " if name in self.expanded else "▸ ") if name in self.has_children else "  "
        label = "  " * row.depth + glyph + name.split(".")[-1]
        shape = "×".join(map(str, row.out_shape[1:])) if row.out_shape else "-"
        return [label, row.type, shape, human_count(row.params), self._mark(name), *self._stat_cells(name)]

    def _mark(self, name: str) -> Text:
        i = self.position[name]
        return MARKS[self.trainable[i] if i < len(self.trainable) else True]

    def _stat_cells(self, name: str) -> tuple[Text, Text]:
        i = self.position[name]
        grad, ratio = self.stats
        g = grad[i] if i < len(grad) else None
        u = ratio[i] if i < len(ratio) else None
        g_text = Text("-", style="grey50") if g is None else Text(f"{g:.1e}")
        if u is None:
            u_text = Text("-", style="grey50")
        else:  # ~1e-3 per step is the classic healthy range
            style = "yellow" if u > 1e-2 else ("grey50" if u < 1e-5 else "")
            u_text = Text(f"{u:.1e}", style=style)
        return g_text, u_text

    # ------------------------------------------------------------------ keys

    def current_name(self) -> str | None:
        if not self.shown or self.cursor_row is None or self.cursor_row >= len(self.shown):
            return None
        return self.shown[self.cursor_row]

    def _send(self, command: SetTrainable, note: str) -> None:
        self.app.post_message(SendCommand(command, note))

    def action_toggle(self) -> None:
        name = self.current_name()
        if name is None:
            return
        on = self.trainable[self.position[name]] if self.position[name] < len(self.trainable) else True
        self._send(SetTrainable((name,), trainable=on is not True), f"{'unfreeze' if on is not True else 'freeze'} {name}")

    def action_freeze_to(self) -> None:
        name = self.current_name()
        if name is None:
            return
        # Freeze every row from the top through the selected row's whole subtree; train the rest.
        upto = self.position[name]
        while upto + 1 < len(self.rows_info) and matches(self.rows_info[upto + 1].name, name):
            upto += 1
        tops = []
        for row in self.rows_info[: upto + 1]:
            if not any(matches(row.name, t) for t in tops):
                tops.append(row.name)
        self._send(SetTrainable(tuple(tops), trainable=False, rest=True), f"freeze up to {name}")

    def action_unfreeze_all(self) -> None:
        self._send(SetTrainable(("",), trainable=True), "unfreeze all")

    def action_expand(self) -> None:
        name = self.current_name()
        if name in self.has_children and name not in self.expanded:
            self.expanded.add(name)
            self.rebuild()

    def action_collapse(self) -> None:
        name = self.current_name()
        if name is None:
            return
        if name not in self.expanded:
            name = self.parent_row.get(name)  # on a leaf: fold its parent and land on it
        if name is not None:
            self.expanded.discard(name)
            self.rebuild()
            if name in self.shown:
                self.move_cursor(row=self.shown.index(name))


class LayersPane(Vertical):
    def compose(self):
        yield LayerTable(id="layer-table")
        yield Static(id="layer-totals")

    def on_mount(self) -> None:
        self.border_title = "Layers"
        self.border_subtitle = "space toggle · f freeze to · u unfreeze all · →/← expand"

    def update_from(self, view: RunView, structure: bool) -> None:
        table = self.query_one(LayerTable)
        if structure and view.started is not None:
            table.set_layers(view.started.layers, view.trainable)
        else:
            table.set_trainable(view.trainable)
        total = view.params_total or 1
        self.query_one("#layer-totals", Static).update(
            Text.assemble(("trainable ", "bold"), f"{human_count(view.params_trainable)} / {human_count(total)}"
                          f" params ({100 * view.params_trainable / total:.1f}%)"))

    def update_stats(self, view: RunView) -> None:
        self.query_one(LayerTable).set_stats(view.grad_norm, view.update_ratio)
