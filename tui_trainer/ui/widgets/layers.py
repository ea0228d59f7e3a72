"""Layers: a tree of the modules that own parameters, with the engine's confirmed trainable state.

Space/Enter toggles the row's subtree, `f` freezes from the top down to the row (fastai's
freeze_to) and unfreezes the rest, `u` unfreezes all, →/← expand and collapse. Keys send
commands; the marks change only when the engine's TrainableChanged comes back.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from tui_trainer.parts.layers import LayerInfo, matches
from tui_trainer.engine.commands import SetTrainable
from tui_trainer.text.format import human_count
from tui_trainer.ui.messages import SendCommand
from tui_trainer.ui.view import RunView

TYPE_WIDTH = 12  # "ConvTranspose2d" -> "ConvTranspo…": the statistics columns stay in a 120-column pane
COLUMNS = (("layer", "name"), ("type", "type"), ("output", "shape"), ("params", "params"), ("train", "train"),
           ("‖grad‖", "grad"), ("Δw/w", "upd"))  # (label, key)

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


class LayerTable(ScrollView, can_focus=True):
    """A tree table on Textual's line API: one cached strip per row, and only rows whose cells
    changed are drawn again. (A DataTable re-renders every row for any cell update, which at a
    statistics refresh cost ~50 ms of the GIL the training thread needs.)"""

    # The footer has room at 80 columns for one of these next to the app's keys: the rest are on
    # the pane's border (LayersPane) and in the help screen.
    BINDINGS = [
        Binding("space", "toggle", "Freeze", tooltip="Freeze / unfreeze the selected row's subtree"),
        Binding("enter", "toggle", "Freeze/unfreeze", show=False),
        Binding("f", "freeze_to", "Freeze to here", show=False),
        Binding("u", "unfreeze_all", "Unfreeze all", show=False),
        Binding("right", "expand", "Expand", show=False),
        Binding("left", "collapse", "Collapse", show=False),
        Binding("up", "cursor(-1)", show=False),
        Binding("down", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "cursor(-1000000)", show=False),
        Binding("end", "cursor(1000000)", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows_info: tuple[LayerInfo, ...] = ()
        self.position: dict[str, int] = {}
        self.parent_row: dict[str, str | None] = {}
        self.has_children: set[str] = set()
        self.expanded: set[str] = set()
        self.trainable: tuple[bool | None, ...] = ()
        self.stats: tuple[tuple[float | None, ...], tuple[float | None, ...]] = ((), ())
        self.shown: list[str] = []
        self.cursor_row = 0
        self._widths: tuple[int, ...] = ()
        self._cells: dict[str, tuple] = {}  # name -> the cells last drawn
        self._strips: dict[str | None, tuple[tuple, Strip]] = {}  # row (None: header) -> (shown, strip)

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

    def set_shapes(self, layers: tuple[LayerInfo, ...]) -> None:
        """The same rows with their output shapes: redrawn, the expanded blocks and the cursor kept."""
        self.rows_info = layers
        self.rebuild()

    def set_trainable(self, trainable: tuple[bool | None, ...]) -> None:
        self.trainable = trainable
        self._redraw_changed()

    def set_stats(self, grad: tuple[float | None, ...], ratio: tuple[float | None, ...]) -> None:
        self.stats = (grad, ratio)
        self._redraw_changed()

    def rebuild(self) -> None:
        keep = self.current_name()
        self.shown = [r.name for r in self.rows_info if self._is_shown(r.name)]
        # Columns fit the rows shown, so a deep model's collapsed names do not push the statistics
        # off a 120-column screen; they widen when a block is expanded.
        self._widths = self._measure([self.rows_info[self.position[n]] for n in self.shown])
        self._cells.clear()
        self._strips.clear()
        self.virtual_size = Size(sum(self._widths) + 2 * (len(self._widths) - 1) + 2, len(self.shown) + 1)
        self.move_cursor(row=self.shown.index(keep) if keep in self.shown else min(self.cursor_row, len(self.shown) - 1))
        self.refresh()

    def _redraw_changed(self) -> None:
        for i, name in enumerate(self.shown):
            if self._cells.get(name) != self._row_cells(name):
                self.refresh_line(i + 1)

    def _is_shown(self, name: str) -> bool:
        parent = self.parent_row.get(name)
        while parent is not None:
            if parent not in self.expanded:
                return False
            parent = self.parent_row.get(parent)
        return True

    # ------------------------------------------------------------------ drawing

    def _label(self, name: str) -> str:
        row = self.rows_info[self.position[name]]
        glyph = ("▾ " if name in self.expanded else "▸ ") if name in self.has_children else "  "
        return "  " * row.depth + glyph + name.split(".")[-1]

    def _measure(self, rows) -> tuple[int, ...]:
        label = max([len("  " * r.depth + "▸ " + r.name.split(".")[-1]) for r in rows] + [5])
        kind = min(TYPE_WIDTH, max([len(r.type) for r in rows] + [4]))
        shape = max([len(_shape(r)) for r in rows] + [6])
        params = max([len(human_count(r.params)) for r in rows] + [6])
        return (label, kind, shape, params, 5, 8, 8)

    def _row_cells(self, name: str) -> tuple:
        i = self.position[name]
        row = self.rows_info[i]
        on = self.trainable[i] if i < len(self.trainable) else True
        grad, ratio = self.stats
        g = grad[i] if i < len(grad) else None
        u = ratio[i] if i < len(ratio) else None
        kind = row.type if len(row.type) <= TYPE_WIDTH else row.type[: TYPE_WIDTH - 1] + "…"
        return (self._label(name), kind, _shape(row), human_count(row.params), on,
                "-" if g is None else f"{g:.1e}", "-" if u is None else f"{u:.1e}", u)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            key: tuple = (None, self._widths)  # None: no layer can be named so
            text = None
        else:
            index = scroll_y + y - 1
            if index >= len(self.shown):
                return Strip.blank(width, self.rich_style)
            name = self.shown[index]
            cells = self._row_cells(name)
            self._cells[name] = cells
            key = (name, cells, index == self.cursor_row, self.has_focus, self._widths)
            text = cells
        # One strip per row, the last one drawn: a row is rebuilt only when what it shows changed,
        # and the cache cannot grow with the run (keying by content kept every old statistic).
        cached = self._strips.get(key[0])
        if cached is not None and cached[0] == key:
            strip = cached[1]
        else:
            line = self._header_text() if text is None else self._row_text(*key[:4])
            strip = Strip(list(line.render(self.app.console)), line.cell_len)
            self._strips[key[0]] = (key, strip)
        return strip.crop(scroll_x, scroll_x + width).adjust_cell_length(width, self.rich_style)

    def _header_text(self) -> Text:
        text = Text(style="bold")
        for (label, _), w in zip(COLUMNS, self._widths):
            text.append(label.ljust(w) + "  ")
        return text

    def _row_text(self, name: str, cells: tuple, selected: bool, focused: bool) -> Text:
        label, kind, shape, params, on, grad, ratio, u = cells
        w = self._widths
        text = Text()
        text.append(label.ljust(w[0]) + "  ")
        text.append(kind.ljust(w[1]) + "  ")
        text.append(shape.ljust(w[2]) + "  ")
        text.append(params.rjust(w[3]) + "  ")
        text.append_text(MARKS[on])
        text.append(" " * (w[4] - MARKS[on].cell_len) + "  ")
        text.append(grad.ljust(w[5]) + "  ", style="grey50" if grad == "-" else "")
        # ~1e-3 per step is the classic healthy range
        style = "grey50" if u is None or u < 1e-5 else ("yellow" if u > 1e-2 else "")
        text.append(ratio.ljust(w[6]), style=style)
        if selected:
            text.stylize("reverse" if focused else "on grey27")
        return text

    # ------------------------------------------------------------------ cursor

    def current_name(self) -> str | None:
        if not self.shown or not 0 <= self.cursor_row < len(self.shown):
            return None
        return self.shown[self.cursor_row]

    def move_cursor(self, row: int) -> None:
        old = self.cursor_row
        self.cursor_row = max(0, min(row, len(self.shown) - 1))
        self.refresh_line(old + 1)
        self.refresh_line(self.cursor_row + 1)
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor_row + direction * max(1, self.size.height - 2))

    def on_focus(self) -> None:
        self.refresh_line(self.cursor_row + 1)

    def on_blur(self) -> None:
        self.refresh_line(self.cursor_row + 1)

    # ------------------------------------------------------------------ keys

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


def _shape(row: LayerInfo) -> str:
    return "×".join(map(str, row.out_shape[1:])) if row.out_shape else "-"


class LayersPane(Vertical):
    def compose(self):
        yield LayerTable(id="layer-table")
        yield Static(id="layer-totals")

    def on_mount(self) -> None:
        self.border_title = "Layers"
        self.border_subtitle = "space toggle · f freeze to · u unfreeze all · →/← expand"
        self._layers_for = None  # the RunStarted whose layers the table holds

    def draw(self, view: RunView, what: str) -> None:
        """The statistics columns ("layer_stats", paced), or ("layers") the trainable marks and the
        totals, with the whole tree first when the run (its RunStarted) is new."""
        table = self.query_one(LayerTable)
        if what == "layer_stats":
            table.set_stats(view.grad_norm, view.update_ratio)
            return
        if view.started is not None and view.started is not self._layers_for:
            same_rows = self._layers_for is not None and [r.name for r in self._layers_for.layers] == [
                r.name for r in view.started.layers]
            self._layers_for = view.started
            if same_rows:  # the output shapes came (LayerShapes): the tree stays as the user opened it
                table.set_shapes(view.started.layers)
                table.set_trainable(view.trainable)
            else:
                table.set_layers(view.started.layers, view.trainable)
        else:
            table.set_trainable(view.trainable)
        total = view.params_total or 1
        self.query_one("#layer-totals", Static).update(
            Text.assemble(("trainable ", "bold"), f"{human_count(view.params_trainable)} / {human_count(total)}"
                          f" params ({100 * view.params_trainable / total:.1f}%)"))
