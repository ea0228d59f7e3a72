"""What the app's tick calls on a pane: one method, `draw`.

The tick (`TrainerApp._tick`) knows which kinds of data changed (`RunView.dirty`) and paces each
kind (`REDRAW_PERIOD_S` in ui/app.py); a pane only draws what it is asked to, from the view.
"""

from __future__ import annotations

from typing import Protocol

from tui_trainer.ui.view import RunView


class Pane(Protocol):
    display: bool  # Textual's: False while the narrow layout hides the pane (then it is not drawn)

    def draw(self, view: RunView, what: str) -> None:
        """Draw `what` from `view`: a key of REDRAW_PERIOD_S ("header", "loss", "lr", "memory",
        "log", "layer_stats") or "layers" (the layer tree and its trainable marks, drawn at once).
        A pane that draws one thing ignores `what`; the layers pane draws two ("layers" and
        "layer_stats")."""
        ...
