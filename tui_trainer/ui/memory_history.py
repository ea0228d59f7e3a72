"""The Memory pane's histories and the header's input-wait figure: a pure-Python model fed by
StepReports (no Textual here), bounded like every history of the view.

One row per memory sample (the engine emits one at most every 0.5 s): the process's RSS and CPU
use, the host's available memory, on a GPU its allocated bytes and utilisation, and the share of
wall time the loop waited for its batches over the reports since the previous row (`data_wait`,
the mean of the reports' figures weighted by their steps). Reports come more often than samples;
without samples (a source that sends none) a row closes every ROW_EVERY_S of event time anyway.
The headline figure (the header's `data 34%`, the pane's number) is the rows' mean over the last
WAIT_WINDOW_S: one row swings between 10% and 40% on a steady run, and the header (2 Hz) and the
pane (1 Hz) would disagree by that much.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tui_trainer.engine.events import MemorySample, StepReport


@dataclass(frozen=True)
class MachineRow:
    time: float
    rss: int | None = None
    cpu: float | None = None  # percent of the cores the process may use (0..100)
    available: int | None = None
    allocated: int | None = None
    utilization: float | None = None
    data_wait: float | None = None  # 0..1
    wait_steps: int = 0  # the steps `data_wait` is the mean of


def cpu_share(m: MemorySample) -> float | None:
    """The process's CPU use as a percent of the cores it may use (psutil counts 100 per core)."""
    if m.cpu_percent is None:
        return None
    return m.cpu_percent / max(1, m.cpu_cores or 1)


class MachineHistory:
    MAX_ROWS = 600  # about 5 minutes at the engine's pace (a row every 0.5 s), longer on slow steps
    ROW_EVERY_S = 2.0
    WAIT_WINDOW_S = 10.0  # the headline input wait: the rows of the last 10 s (one row swings a lot)

    def __init__(self) -> None:
        self.rows: deque[MachineRow] = deque(maxlen=self.MAX_ROWS)
        self.data_wait: float | None = None  # the last WAIT_WINDOW_S's figure (the header's)
        self._wait_sum = 0.0
        self._wait_steps = 0
        self._open_at: float | None = None

    def add(self, e: StepReport) -> bool:
        """Take one report; True when a row was added."""
        if e.data_wait is not None:
            steps = max(1, len(e.losses))
            self._wait_sum += min(1.0, max(0.0, e.data_wait)) * steps
            self._wait_steps += steps
            if self.data_wait is None:  # the very first figure shows at once
                self.data_wait = e.data_wait
        if self._open_at is None:
            self._open_at = e.time
        m = e.memory
        if m is None and (self._wait_steps == 0 or e.time - self._open_at < self.ROW_EVERY_S):
            return False
        steps = self._wait_steps
        wait = self._wait_sum / steps if steps else None
        self._wait_sum, self._wait_steps, self._open_at = 0.0, 0, e.time
        if m is None:
            self.rows.append(MachineRow(e.time, data_wait=wait, wait_steps=steps))
        else:
            self.rows.append(MachineRow(e.time, rss=m.rss, cpu=cpu_share(m), available=m.host_available,
                                        allocated=m.allocated, utilization=m.utilization, data_wait=wait,
                                        wait_steps=steps))
        if wait is not None:
            self.data_wait = self._recent_wait()
        return True

    def _recent_wait(self) -> float | None:
        """The input wait of the rows of the last WAIT_WINDOW_S, weighted by their steps."""
        total = steps = 0.0
        newest = self.rows[-1].time
        for row in reversed(self.rows):
            if newest - row.time > self.WAIT_WINDOW_S:
                break
            if row.data_wait is not None:
                total += row.data_wait * row.wait_steps
                steps += row.wait_steps
        return total / steps if steps else None

    def series(self, name: str) -> list[float | None]:
        return [getattr(r, name) for r in self.rows]

    def known(self, name: str) -> bool:
        return any(getattr(r, name) is not None for r in self.rows)

    def span_s(self) -> float:
        return self.rows[-1].time - self.rows[0].time if len(self.rows) > 1 else 0.0


def columns(values: list[float | None], width: int, keep=max) -> list[float | None]:
    """`values` (oldest first) as at most `width` columns: one value a column while they fit, else
    neighbours merged into `width` buckets by `keep` (max: a spike survives; min for what runs out),
    the newest in the last column. None is a gap; a bucket of gaps stays one."""
    n = len(values)
    if n <= width:
        return list(values)
    out = []
    for c in range(width):
        bucket = [v for v in values[c * n // width:(c + 1) * n // width] if v is not None]
        out.append(keep(bucket) if bucket else None)
    return out
