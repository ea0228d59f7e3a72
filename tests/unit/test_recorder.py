"""run/rundir.Recorder: reports and epoch ends written in batches by the recorder's thread, within
WRITE_WITHIN_S; every other event at once, after those still waiting (the file keeps the order).
The headless LineReporter with `within` does the same with its lines (both use run/batched.py)."""

from __future__ import annotations

import io
import json
import time

from tui_trainer.engine import events as ev
from tui_trainer.run import rundir
from tui_trainer.run.headless import LineReporter
from tui_trainer.run.rundir import Recorder, RunDir


def report(step: int) -> ev.StepReport:
    return ev.StepReport(step=step, epoch=1, first_step=step, losses=(0.5,), lrs=(0.1,), samples_per_s=320.0,
                         eta_s=1.0)


def kinds(rd: RunDir) -> list[tuple[str, int]]:
    return [(d["kind"], d["step"]) for d in map(json.loads, rd.events_path.read_text().splitlines())]


def test_reports_reach_the_file_within_the_interval_without_a_flush(tmp_path):
    rd = RunDir(tmp_path)
    rec = Recorder(rd)
    try:
        t0 = time.monotonic()
        for step in (1, 2, 3):
            rec(report(step))
        assert kinds(rd) == [], "a report is not written on the training thread"
        while not kinds(rd) and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        waited = time.monotonic() - t0
        assert kinds(rd) == [("StepReport", 1), ("StepReport", 2), ("StepReport", 3)]
        assert waited >= rundir.WRITE_WITHIN_S * 0.9  # gathered, not one write each
        rows = (tmp_path / "metrics.csv").read_text().splitlines()
        assert len(rows) == 4 and rows[1].split(",")[3] == "1"  # the header, then a row per report in order
    finally:
        rec.close()


def test_any_other_event_is_written_at_once_after_the_reports_waiting(tmp_path):
    rd = RunDir(tmp_path)
    rec = Recorder(rd)
    try:
        rec(report(1))
        rec(ev.RunWarning(1, "after the report"))
        assert kinds(rd) == [("StepReport", 1), ("RunWarning", 1)]
        rec(report(2))
        rec.flush()
        assert kinds(rd)[-1] == ("StepReport", 2)
    finally:
        rec.close()


def test_close_writes_what_is_waiting_and_stops_the_thread(tmp_path):
    rd = RunDir(tmp_path)
    rec = Recorder(rd)
    for step in range(1, 101):
        rec(report(step))
    t0 = time.monotonic()
    rec.close()
    assert time.monotonic() - t0 < rundir.WRITE_WITHIN_S  # the writer's wait ends at once
    assert [step for _, step in kinds(rd)] == list(range(1, 101))
    assert not rec._batched.alive


# ---------------------------------------------------------------- the headless lines, the same way


class Counted(io.StringIO):
    """A text stream that counts its writes (one per batch of lines, not one per line)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_headless_lines_of_reports_come_from_a_thread_in_one_write_and_keep_their_order(tmp_path):
    out = Counted()
    lines = LineReporter(out, tty=False, within=0.2)
    try:
        t0 = time.monotonic()
        for step in (1, 2, 3):
            lines(report(step))
        assert out.getvalue() == "", "a report's line is not written on the training thread"
        while out.getvalue().count("\n") < 3 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert time.monotonic() - t0 >= 0.2 * 0.9
        got = out.getvalue().splitlines()
        assert [line.split(" step ")[1].split()[0] for line in got] == ["1", "2", "3"]  # (no RunStarted: no total)
        assert out.writes == 1  # the three lines in one write
        lines(report(4))
        lines(ev.RunWarning(step=4, message="look out"))  # not batched: at once, after report 4
        got = out.getvalue().splitlines()
        assert "step 4 " in got[3] and "look out" in got[4]
    finally:
        lines.close()
    assert not lines._batched.alive


def test_headless_close_writes_the_lines_waiting(tmp_path):
    out = io.StringIO()
    lines = LineReporter(out, tty=False, within=30)
    for step in range(1, 51):
        lines(report(step))
    t0 = time.monotonic()
    lines.close()
    assert time.monotonic() - t0 < 5  # the thread's 30 s wait is cut short
    assert out.getvalue().count("\n") == 50
