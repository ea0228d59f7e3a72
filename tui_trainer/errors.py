"""User-facing errors: one line, names the file and the key, suggests the fix, exit 2."""

from __future__ import annotations

import difflib
import re
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
        return _printable(": ".join([*parts, self.message]))


def _printable(text: str) -> str:
    """One line whatever a key or value held: control characters are shown escaped (a TOML key
    may be "\\n")."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


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


def describe_load_error(exc: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in a few words."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    refused = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), None)
    if refused:
        return f"it names Python code that would run when loaded ({refused[:120]}); refusing (weights_only=True)"
    detail = next((ln for ln in lines if ln.startswith(("Unsupported operand", "Unpickling error", "invalid load"))),
                  lines[0] if lines else "")
    if detail.startswith("Weights only load failed"):
        detail = lines[-1] if lines else detail
    return f"it is damaged or not a checkpoint ({type(exc).__name__}: {detail[:120]})"


def say_error(err: UserError) -> None:
    """Print bad input's one line on stderr, in one write (ranks that torchrun started share the
    terminal: their lines must not interleave). On a rank other than 0 of such a run, `rank N: `
    comes first (every rank checks the same preset and may say the same), and torchrun's own
    failure summary is told the message (its "Root Cause" then shows it instead of "<N/A>")."""
    import os
    import sys

    rank = os.environ.get("RANK", "0")
    ranks = os.environ.get("WORLD_SIZE", "1") not in ("", "1")
    line = f"tui-trainer: error: {f'rank {rank}: ' if ranks and rank != '0' else ''}{err}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if ranks:  # torchrun's summary prints the "traceback" field: bad input has none, so it says this
        record_for_torchrun(str(err), f"bad input (exit {err.exit_code}), no traceback: {err}")


def record_for_torchrun(message: str, traceback: str = "") -> None:
    """Write `message` where torch's elastic agent (torchrun) reads a failed process's error: the
    file TORCHELASTIC_ERROR_FILE names, in the format of its ErrorHandler.record_exception (a rank
    that leaves with os._exit or an exit code raises nothing the agent could record itself)."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message,
                          "extraInfo": {"py_callstack": traceback, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)
    except OSError:
        pass
