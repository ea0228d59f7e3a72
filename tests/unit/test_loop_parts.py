"""The pieces of tui_trainer.loop that need no run: the print capture (run/capture.py), the seeded
loader's order, the settings a loop takes, the Printed event."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tui_trainer.engine.events import Printed, from_json
from tui_trainer.errors import UserError
from tui_trainer.run.capture import Capture
from tui_trainer.run.loop import EpochSampler, default_name, loop_settings, seeded_loader
from tui_trainer.text.format import event_line

# --------------------------------------------------------------------------- capture


@pytest.fixture
def captured(monkeypatch):
    """Start a Capture over fresh StringIO streams (in the test's own phase: pytest swaps sys.stdout
    between setup and call); returns (lines, capture, out, err)."""
    started = []

    def start():
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        lines: list[tuple[str, str]] = []
        busy = [False]
        cap = Capture(lambda text, stream: lines.append((text, stream)), lambda: busy[0], outer=(out, err))
        cap.busy_flag = busy
        cap.start()
        started.append(cap)
        return lines, cap, out, err

    yield start
    for cap in started:
        cap.stop()


def test_the_loops_prints_become_whole_clean_lines(captured):
    lines, cap, out, err = captured()
    print("one")
    print("two", "parts", end="")
    print(" joined")
    sys.stdout.write("a\nb\n\n   \nc")
    print("\x1b[1;32mgreen\x1b[0m \x1b]0;title\x07text")
    for i in range(4):
        sys.stderr.write(f"\r{i * 25}%|{'#' * i}")
    sys.stderr.write("\r100%|####\n")
    sys.stderr.write("windows line\r\n")
    sys.stdout.write("tail without newline")
    cap.stop()
    assert lines == [("one", "stdout"), ("two parts joined", "stdout"), ("a", "stdout"), ("b", "stdout"),
                     ("cgreen text", "stdout"), ("100%|####", "stderr"), ("windows line", "stderr"),
                     ("tail without newline", "stdout")]
    assert out.getvalue() == "" and err.getvalue() == ""  # nothing reached the real streams
    assert sys.stdout is out and sys.stderr is err  # given back


def test_other_threads_and_our_own_writes_during_an_event_pass_through(captured):
    lines, cap, out, err = captured()
    t = threading.Thread(target=lambda: print("from another thread"))
    t.start()
    t.join()
    cap.busy_flag[0] = True  # an event is being delivered: a sink (or a signal handler) printing
    print("ours, not the user's", file=sys.stderr)
    cap.busy_flag[0] = False
    assert not sys.stdout.isatty()  # the loop's output is a log
    print("the user's")
    assert lines == [("the user's", "stdout")]
    assert out.getvalue() == "from another thread\n" and err.getvalue() == "ours, not the user's\n"


def test_logging_handlers_made_before_the_loop_are_captured_and_given_back(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    handler = logging.StreamHandler(err)  # basicConfig's handler: it holds the stream object
    file_like = logging.StreamHandler(io.StringIO())  # some other stream: left alone
    log = logging.getLogger("test.loop.capture")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    log.addHandler(file_like)
    lines = []
    cap = Capture(lambda text, stream: lines.append(text), lambda: False, outer=(out, err))
    try:
        cap.start()
        log.info("record one")
        cap.stop()
    finally:
        log.removeHandler(handler)
        log.removeHandler(file_like)
    assert lines == ["record one"] and err.getvalue() == ""
    assert handler.stream is err and "record one" in file_like.stream.getvalue()


def test_a_capture_replaced_by_someone_else_is_put_back(captured):
    lines, cap, out, err = captured()
    other = io.StringIO()
    sys.stdout = other  # the app left and restored "its" stdout while the loop runs on
    print("lost?", file=other)
    cap.ensure()
    print("captured again")
    assert lines == [("captured again", "stdout")]
    cap.stop()
    assert sys.stdout is other


# --------------------------------------------------------------------------- the seeded loader


def test_the_epoch_sampler_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(50, True, 3), EpochSampler(50, True, 3)
    b.set_epoch(2)
    first_b = list(b)
    orders = [list(a) for _ in range(3)]  # no set_epoch: each pass is the next epoch
    assert orders[2] == first_b and orders[0] != orders[1] and sorted(orders[0]) == list(range(50))
    assert list(EpochSampler(50, True, 4)) != orders[0]
    c = EpochSampler(50, True, 3)
    c.set_epoch(1, 20)
    assert list(c) == orders[1][20:]
    assert list(EpochSampler(5, False, 3)) == [0, 1, 2, 3, 4]


def test_seeded_loader_skips_whole_batches_without_loading_them():
    loaded = []

    class Seen(TensorDataset):
        def __getitem__(self, i):
            loaded.append(i)
            return super().__getitem__(i)

    ds = Seen(torch.arange(40).float())
    loader = seeded_loader(ds, batch_size=8, seed=1)
    loader.set_epoch(3)
    whole = [b[0].tolist() for b in loader]
    loaded.clear()
    loader.set_epoch(3, skip_batches=2)
    tail = [b[0].tolist() for b in loader]
    assert tail == whole[2:] and len(loaded) == 24 and len(loader) == 5
    with pytest.raises(TypeError, match="makes its own sampler"):
        seeded_loader(ds, batch_size=8, sampler=None)


# --------------------------------------------------------------------------- settings


def _train(run):
    pass


def test_loop_settings_take_what_a_loop_uses():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=10)
    cfg, interval = loop_settings(_train, None, {"log_every": 5, "keep_last": 1, "lr_reduce_factor": 0.25,
                                                 "checkpoint": {"monitor": "val_iou", "mode": "max"}},
                                  model, opt, sched)
    assert cfg.name == "test_loop_parts" and interval == "step"  # the module's name; OneCycleLR steps per batch
    assert (cfg.train.log_every, cfg.checkpoint.keep_last, cfg.ui.lr_reduce_factor) == (5, 1, 0.25)
    assert cfg.checkpoint.monitor == "val_iou" and cfg.goals == {"val_iou": "max"}
    assert cfg.optimizer.lr == opt.param_groups[0]["lr"] and cfg.model.arch == "python:torch.nn.modules.linear.Linear"
    _, interval = loop_settings(_train, "x", {"interval": "step"}, model, opt, None)
    assert interval == "step"


@pytest.mark.parametrize("settings, says", [
    ({"amp": "bf16"}, "train.amp: is not a setting of loop"),
    ({"train": {"accumulate": 2}}, "train.accumulate: is not a setting of loop"),
    ({"patiense": 2}, 'did you mean "patience"'),
    ({"name": "bad name"}, "is used in file names"),
])
def test_a_setting_a_loop_does_not_use_is_an_error(settings, says):
    name = settings.pop("name", None)
    with pytest.raises(UserError, match=says.replace("(", r"\(")):
        loop_settings(_train, name, settings, nn.Linear(2, 2), None, None)


def test_default_name_is_the_defining_file():
    assert default_name(_train) == "test_loop_parts"
    assert default_name(print) == "loop"


# --------------------------------------------------------------------------- the event


def test_printed_round_trips_and_is_a_log_line():
    event = Printed(12, "hello", "stderr")
    assert from_json(json.loads(event.json_line)) == event
    assert event_line(event) == ("hello", "warn") and event_line(Printed(1, "x")) == ("x", "info")
