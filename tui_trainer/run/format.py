"""Numbers for people: durations, byte sizes, parameter counts, learning rates."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
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


def human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


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
