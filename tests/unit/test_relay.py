"""The stdio relay's pieces (run/relay.py) and SshLink (ui/remote.py) without an sshd: the URL,
the ssh command line, the hello, the reconnect filter against the server's real replay, and a
whole link that drops and reconnects through a stand-in ssh (tests/helpers/fake_ssh.py) to a
real ControlServer. The same over a real sshd: tests/integration/test_ssh_attach.py."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.runs import wait_until
from tui_trainer import __version__
from tui_trainer.engine.commands import Control, ScaleLr
from tui_trainer.engine.events import LrChanged, Printed, RunWarning, StateChanged, StepReport
from tui_trainer.errors import UserError
from tui_trainer.run.relay import (PROTOCOL, Seen, SshTarget, check_hello, hello_line, parse_ssh_url,
                                   quote_remote_path, serve_stdio, ssh_argv)
from tui_trainer.run.server import ControlServer, Replay

FAKE_SSH = Path(__file__).parents[1] / "helpers" / "fake_ssh.py"


def test_ssh_urls():
    assert parse_ssh_url("ssh://alice@gpu-box:2222/home/alice/runs/r1") == SshTarget(
        "gpu-box", "alice", 2222, "/home/alice/runs/r1")
    assert parse_ssh_url("ssh://gpu-box") == SshTarget("gpu-box")
    assert parse_ssh_url("ssh://gpu-box/").path is None
    assert parse_ssh_url("ssh://gpu-box/~/proj/runs").path == "~/proj/runs"
    assert str(parse_ssh_url("ssh://alice@gpu-box:2222/~/r")) == "ssh://alice@gpu-box:2222/~/r"
    for bad in ("ssh://gpu:port/x", "ssh:///x", "http://gpu/x"):
        with pytest.raises(UserError):
            parse_ssh_url(bad)
    assert quote_remote_path("~/my runs/r") == "~/'my runs/r'"
    assert quote_remote_path("/a b") == "'/a b'"


def test_ssh_argv_uses_the_system_client(monkeypatch):
    monkeypatch.delenv("TUI_TRAINER_SSH", raising=False)
    argv = ssh_argv(SshTarget("gpu", "alice", 2222), "tui-trainer attach --stdio /r")
    assert argv[0] == "ssh" and "-T" in argv and argv[-3:] == ["--", "alice@gpu", "tui-trainer attach --stdio /r"]
    assert argv[argv.index("-p") + 1] == "2222" and "BatchMode=yes" not in argv and "Compression=yes" in argv
    assert "BatchMode=yes" in ssh_argv(SshTarget("gpu"), "x", batch=True)  # a reconnect never prompts
    monkeypatch.setenv("TUI_TRAINER_SSH", "/opt/ssh -F '/my config'")
    assert ssh_argv(SshTarget("gpu"), "x")[:3] == ["/opt/ssh", "-F", "/my config"]


def test_hello_both_ways():
    mine = check_hello(hello_line(live=True), "the remote side")
    assert mine["protocol"] == PROTOCOL and mine["version"] == __version__ and mine["live"] is True
    other = json.dumps({"kind": "Hello", "protocol": PROTOCOL + 1, "version": "9.0.0"}).encode()
    with pytest.raises(UserError) as err:
        check_hello(other, "the remote side (gpu)")
    text = str(err.value)
    assert "version mismatch" in text and "9.0.0" in text and __version__ in text and "\n" not in text
    with pytest.raises(UserError, match="did not answer with a tui-trainer hello"):
        check_hello(b"Welcome to gpu-box!\n", "the remote side (gpu)")


def _stream(n: int) -> list:
    """A run's events as the server sinks them: reports, LR changes, printed lines, warnings."""
    out, t = [], 1000.0
    for step in range(1, n + 1):
        t += 1
        out.append(StepReport(step, 1, step, (1.0,), (0.1,), 100.0, None, time=t))
        if step % 7 == 0:
            out.append(LrChanged(step, (0.05,), 0.5, "manual", time=t + 0.1))
        if step % 5 == 0:
            out.append(Printed(step, f"line {step}", "stdout", time=t + 0.2))
        if step % 11 == 0:
            out.append(RunWarning(step, "w", time=t + 0.3))
    return out


@pytest.mark.parametrize("n, connect, drop, back", [(200, 50, 120, 180), (3000, 10, 2500, 2990), (40, 0, 5, 39)])
def test_a_reconnect_applies_exactly_the_missed_events(n, connect, drop, back):
    """Connect at event `connect` (the replay so far, then live), drop at `drop`, reconnect at
    `back` (a new replay) and go on live: every event from `connect` on arrives once, in order."""
    stream = _stream(n)
    replay, seen, shown = Replay(), Seen(keep=500), []

    def deliver(event):
        if seen.new(json.loads(event.json_line)):
            shown.append(event)

    lines = {}
    for i, event in enumerate(stream):
        if i == connect or i == back:
            if i == back:
                seen.dropped()
            for line in replay.lines().splitlines():
                deliver(lines[line])
        if connect <= i < drop or i >= back:
            deliver(event)
        replay.add(event, event.json_line.encode() + b"\n")
        lines[event.json_line.encode()] = event
    first_replay = [e for e in shown if e not in stream[connect:]]
    assert shown[len(first_replay):] == stream[connect:]  # nothing missed, nothing twice, in order
    assert len(set(map(id, shown))) == len(shown)


def test_serve_stdio_relays_a_live_socket(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("")
    control = Control()
    server = ControlServer(run, control)
    server.start()
    server(StateChanged("running", 3))
    to_relay_r, to_relay_w = os.pipe()
    from_relay_r, from_relay_w = os.pipe()
    code = []
    relay = threading.Thread(target=lambda: code.append(serve_stdio(str(run), stdin=to_relay_r,
                                                                     stdout=from_relay_w)))
    relay.start()
    try:
        out = os.fdopen(from_relay_r, "rb")
        hello = check_hello(out.readline(), "relay")
        assert hello["live"] and hello["run"] == str(run.resolve())
        assert json.loads(out.readline())["state"] == "running"  # the replay
        os.write(to_relay_w, hello_line() + b'{"kind": "ScaleLr", "factor": 0.5}\n')
        assert control.queue.get(timeout=30) == ScaleLr(0.5)
        server(RunWarning(4, "live"))
        assert json.loads(out.readline())["message"] == "live"
        os.close(to_relay_w)  # the viewer leaves
        relay.join(30)
        assert code == [0]
    finally:
        server.close()


def test_serve_stdio_on_a_bad_path_says_so_in_its_hello(tmp_path):
    r, w = os.pipe()
    assert serve_stdio(str(tmp_path / "nope"), stdout=w) == 2
    os.close(w)
    hello = json.loads(os.fdopen(r, "rb").readline())
    assert hello["kind"] == "Hello" and "does not exist" in hello["error"]


def test_ssh_link_reconnects_and_shows_only_what_it_missed(tmp_path, monkeypatch):
    from tui_trainer.ui.remote import SshLink

    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("")
    control = Control()
    server = ControlServer(run, control)
    server.start()
    block = tmp_path / "block"
    monkeypatch.setenv("TUI_TRAINER_SSH", f"{sys.executable} {FAKE_SSH}")
    monkeypatch.setenv("TUI_TRAINER_REMOTE", f"{sys.executable} -m tui_trainer")
    monkeypatch.setenv("FAKE_SSH_BLOCK", str(block))
    monkeypatch.setattr(SshLink, "BACKOFF_S", (0.05, 0.1))
    got: list = []

    def drained(condition, what):
        return wait_until(lambda: got.extend(link.drain()) or condition(), what, 60)

    def report(step):
        server(StepReport(step, 1, step, (1.0,), (0.1,), 100.0, None))

    server(StateChanged("running", 0))
    for step in range(1, 6):
        report(step)
    link = SshLink(parse_ssh_url(f"ssh://box{run}/."))
    assert link.target.path == str(run.resolve())  # pinned to the hello's run: a reconnect comes back to it
    try:
        link.start()
        drained(lambda: any(getattr(e, "step", 0) == 5 for e in got), "the replay")
        link.send(ScaleLr(0.5))
        assert control.queue.get(timeout=30) == ScaleLr(0.5)

        block.touch()
        link._proc.kill()  # the link drops; the run goes on
        drained(lambda: any(isinstance(e, StateChanged) and e.state == "reconnecting… (2)" for e in got),
                "reconnecting… (2)")
        with pytest.raises(ConnectionError, match="not sent"):
            link.send(ScaleLr(0.5))  # refused, not queued
        for step in range(6, 11):
            report(step)
        block.unlink()
        drained(lambda: any(getattr(e, "step", 0) == 10 for e in got), "the missed reports")
        time.sleep(0.2)
        got.extend(link.drain())
    finally:
        link.close()
        server.close()
    shown = [e.first_step + i for e in got if isinstance(e, StepReport) for i in range(len(e.losses))]
    assert shown == list(range(1, 11))  # each step's loss once (the relay may join reports)
    states = [e.state for e in got if isinstance(e, StateChanged)]
    assert states[0] == "running" and states[-1] == "running"  # the last picture's state, restored
    assert control.queue.empty()  # the refused command was never sent
    notes = [e.text for e in got if isinstance(e, Printed)]  # the Log pane says what happened
    assert "dropped at step 5" in notes[0] and "Network is unreachable" in notes[1] and "is back" in notes[-1]


def test_reports_that_follow_each_other_leave_as_one():
    from tui_trainer.run.relay import Coalescer

    sent: list[bytes] = []
    out = Coalescer(sent.append, window_s=0.2)

    def line(event) -> bytes:
        return event.json_line.encode() + b"\n"

    reports = [StepReport(s, 1, s, (float(s),), (0.1,), 100.0 + s, None, time=1000.0 + s) for s in range(1, 4)]
    data = b"".join(map(line, reports))
    out.feed(data[:50], now=0.0)  # a line split across reads
    out.feed(data[50:], now=0.01)
    assert sent == [] and out.timeout(0.1) == pytest.approx(0.11)  # due 0.2 s after the first whole report
    warning = RunWarning(3, "w", time=1003.5)
    out.feed(line(warning) + line(StepReport(9, 1, 7, (7.0, 8.0, 9.0), (0.1,), 1.0, None, time=1009.0)), now=0.02)
    lines = lambda: [json.loads(x) for x in b"".join(sent).splitlines()]  # noqa: E731
    joined, passed = lines()[0], lines()[1]
    assert joined["losses"] == [1.0, 2.0, 3.0] and joined["first_step"] == 1 and joined["step"] == 3
    assert joined["time"] == 1003.0 and joined["samples_per_s"] == 103.0  # the rest from the last one
    assert passed["message"] == "w"  # other events at once, after what was pending
    out.feed(line(StepReport(12, 1, 11, (1.0, 1.0), (0.1,), 1.0, None, time=1012.0)), now=0.03)  # not contiguous
    assert lines()[2]["losses"] == [7.0, 8.0, 9.0]
    out.flush()
    assert lines()[3]["first_step"] == 11 and len(lines()) == 4


def test_the_viewer_never_shows_a_step_twice():
    from tui_trainer.ui.remote import SshLink

    link = SshLink.__new__(SshLink)  # the filter alone
    link._report_step = -1
    first = {"kind": "StepReport", "first_step": 1, "step": 5, "losses": [1, 2, 3, 4, 5]}
    assert link._fresh_losses(first) and first["losses"] == [1, 2, 3, 4, 5]
    across = {"kind": "StepReport", "first_step": 4, "step": 8, "losses": [4, 5, 6, 7, 8]}  # spans the drop
    assert link._fresh_losses(across) and across["first_step"] == 6 and across["losses"] == [6, 7, 8]
    assert not link._fresh_losses({"kind": "StepReport", "first_step": 7, "step": 8, "losses": [7, 8]})
    assert link._fresh_losses({"kind": "EpochEnd", "step": 3})
