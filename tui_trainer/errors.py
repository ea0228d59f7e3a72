"""User-facing errors: one line, names the file and the key, suggests the fix, exit 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input (preset, CLI, paths). The CLI prints `str(err)` on one line and exits 2.

    `key` is the dotted preset key (``optimizer.lr``); `source` the file or ``--set`` that
    supplied it. Both are filled in as the error travels up, so builders only name the key.
    """

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = " ".join(message.split())  # always one line
        self.key = key
        self.source = source

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        if self.key and self.source == f"--set {self.key}":
            parts = [self.source]  # "--set train.epoch: train.epoch: ..." says the key twice
        return ": ".join([*parts, self.message])


class PresetError(UserError):
    """A preset value that validates as a type but cannot be built (unknown name, bad kwarg...)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean "x"?` or an empty string. A difference in case only wins ("Adamw" ->
    "AdamW", not "Adam"), then the closest spelling, ignoring case."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f'; did you mean "{lowered[word.lower()]}"?'
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f'; did you mean "{lowered[close[0]]}"?' if close else ""
