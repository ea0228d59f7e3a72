"""Numbers for people: durations, byte sizes, parameter counts, learning rates, metric values."""

from __future__ import annotations

import math
import os

from tui_trainer.engine.events import (
    CheckpointSaved,
    EpochEnd,
    Failed,
    Finished,
    LrChanged,
    LrPlanned,
    Printed,
    RunWarning,
    StateChanged,
    TrainableChanged,
)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def short_bytes(n: int | None) -> str:
    """At most 5 characters, for table columns: 512B, 98.1K, 1.23G, 12.3G, 123G (powers of 1024)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1000 or unit == "T":
            break
        value /= 1024
    if unit == "B":
        return f"{value:.0f}B"
    text = f"{value:.0f}"
    for digits in (2, 1):
        if len(f"{value:.{digits}f}") <= 4:
            text = f"{value:.{digits}f}"
            break
    return text + unit


def human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def metric_text(value: float | None, width: int | None = None) -> str:
    """A metric's value with 4 significant digits (0.8123, 0.5000, 12.35, 1234, 1.235e+05); "-" for
    None. `width`: fewer digits, and a short exponent, until it fits (1.2e-5), for table columns."""
    if value is None:
        return "-"
    text = _digits(value, 4)
    if width is None:
        return text
    for digits in (4, 3, 2, 1):
        text = _short_exponent(_digits(value, digits))
        if len(text) <= width:
            return text
    return text


def _digits(value: float, digits: int) -> str:
    """`digits` significant digits, trailing zeros kept (0.5000), no bare trailing point (1234)."""
    mantissa, e, exponent = f"{value:#.{digits}g}".partition("e")
    return mantissa.rstrip(".") + e + exponent


def _short_exponent(text: str) -> str:
    """1.235e+05 -> 1.235e5, 1.2e-05 -> 1.2e-5."""
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def lr_text(lr: float) -> str:
    return f"{lr:.2e}"


def lrs_text(lrs) -> str:
    """One LR, or the distinct ones of the groups ("1.00e-02,1.00e-01")."""
    seen = []
    for lr in lrs:
        text = lr_text(lr)
        if text not in seen:
            seen.append(text)
    return ",".join(seen)


def event_line(event, started=None) -> tuple[str, str] | None:
    """A log line for a rare event, and its level (info, good, warn, error), or None.

    Shared by the headless reporter and the app's log pane so both say the same thing. Checkpoint
    lines show paths relative to the run directory (printed at start); the final line the full path.
    """
    monitor = started.monitor if started is not None else ""

    def short(path: str | None) -> str:
        if not path or started is None:
            return path or ""
        rel = os.path.relpath(path, started.run_dir)
        return path if rel.startswith("..") else rel

    match event:
        case EpochEnd():
            parts = [f"epoch {event.epoch} done:"]
            for key in ("train_loss", "val_loss", "val_acc"):
                value = getattr(event, key)
                if value is not None:
                    parts.append(f"{key} {value:.4f}")
            for key, value in event.metrics.items():  # the [[metrics]], in preset order: val_dice 0.8123
                if value is not None and key not in ("train_loss", "val_loss", "val_acc"):
                    parts.append(f"{key} {metric_text(value)}")
            if event.best is not None:
                parts.append(f"| best {event.monitor} {event.best:.4f} @ epoch {event.best_epoch}")
            if event.patience:
                parts.append(f"| no improvement {event.bad_epochs}/{event.patience}")
            if event.val_loss is not None:  # the validation's time; a run without validation has none
                parts.append(f"| {event.seconds:.1f}s val")
            return " ".join(parts), "good" if event.improved else "info"
        case CheckpointSaved():
            return (f"checkpoint {short(event.path)} [{', '.join(event.tags)}] {human_bytes(event.bytes)}"
                    f" in {event.seconds:.2f}s", "info")
        case LrPlanned():
            return (f"LR plan made for {event.plan.total_steps} steps, each epoch as long as the first"
                    f" ({event.steps_per_epoch} batches)", "info")
        case LrChanged():
            return (f"LR changed ({event.reason}): {lrs_text(event.lrs)} (manual factor x{event.manual_factor:g})",
                    "warn")
        case TrainableChanged():
            verb = "unfroze" if event.trainable else "froze"
            what = ", ".join(p or "(all)" for p in event.prefixes)
            if len(what) > 80:
                what = f"{len(event.prefixes)} layers"
            return (f"{verb} {what}: trainable {human_count(event.params_trainable)} / "
                    f"{human_count(event.params_total)} params", "info")
        case RunWarning():
            return f"WARNING {event.message}", "warn"
        case Printed():
            return event.text, "warn" if event.stream == "stderr" else "info"
        case StateChanged(state="paused" | "stopping"):
            return f"{event.state} at step {event.step}", "info"
        case Finished():
            best = (f"; best {event.monitor or monitor} {event.best:.4f} @ epoch {event.best_epoch}"
                    f" -> {event.best_path}"
                    if event.best is not None and event.best_path else "")
            return (f"{event.status}: {event.message} ({event.step} steps, {duration(event.seconds)}){best}",
                    "good" if event.exit_code == 0 else "error")
        case Failed():
            saved = f"; emergency checkpoint {event.emergency_path}" if event.emergency_path else ""
            return f"FAILED at step {event.step}: {event.error}{saved}", "error"
    return None
