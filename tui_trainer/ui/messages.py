"""The app's few Textual messages. Widgets ask the app to send a command; the app owns the link."""

from __future__ import annotations

from textual.message import Message

from tui_trainer.engine.commands import Command


class SendCommand(Message, bubble=False):
    """A pane wants this command sent to the engine (posted straight to the app)."""

    def __init__(self, command: Command, note: str = "") -> None:
        super().__init__()
        self.command = command
        self.note = note
