"""Waiting in Pilot tests."""

from __future__ import annotations


async def until(pilot, condition, what: str, limit: int = 1200):
    """Let the app run until `condition()` holds (a hang guard, not a timing assertion)."""
    for _ in range(limit):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"never happened: {what}")
