"""`epoch` means one thing in every event (engine/events.py): the 1-based epoch of the event's
`step`, so (step, epoch) name one moment; at an epoch boundary that is the epoch just completed,
and 0 before the first step. Runs that end every way there is: completion, max_steps, a stop in
the middle of an epoch or at its end, a failure mid-epoch, at an epoch boundary or in the first
batch, and a non-finite loss. 7 steps per epoch."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.helpers.engine import At, run
from tests.helpers.runs import write_preset
from tui_trainer.engine.commands import Stop
from tui_trainer.engine.events import CheckpointSaved, EpochEnd, Failed, Finished, RunStarted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 7  # steps per epoch of the tiny preset (120 training images, batches of 16)


class StopAfterEpoch:
    """Send Stop when EpochEnd of `epoch` arrives (applied before the next epoch's first step)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_event(self, event, control) -> None:
        if isinstance(event, EpochEnd) and event.epoch == self.epoch:
            control.send(Stop())


def _misbehaving(plan: dict) -> dict:
    return {"arch": "tests.helpers.models:misbehaving_cnn", "kwargs": {"plan": plan}}


CASES = {
    # name: (preset sections, overrides, callbacks, (final kind, status, step, epoch))
    "completed": ({}, (), [], (Finished, "completed", 2 * S, 2)),
    "max_steps mid-epoch 2": ({}, ("train.max_steps=10",), [], (Finished, "completed", 10, 2)),
    "stop mid-epoch 2": ({}, (), [At({10: Stop()})], (Finished, "stopped", 10, 2)),
    "stop after the last batch of epoch 1, before its validation": ({}, (), [At({S: Stop()})],
                                                                    (Finished, "stopped", S, 1)),
    "stop after EpochEnd 1": ({}, (), [StopAfterEpoch(1)], (Finished, "stopped", S, 1)),
    "failure mid-epoch 2": ({"model": _misbehaving({"10": "raise"})}, (), [], (Failed, None, 9, 2)),
    "failure in the first batch of epoch 2": ({"model": _misbehaving({str(S + 1): "raise"})}, (), [],
                                              (Failed, None, S, 1)),
    "failure in the first batch of the run": ({"model": _misbehaving({"1": "raise"})}, (), [],
                                              (Failed, None, 0, 0)),
    "non-finite loss mid-epoch 2": ({"model": _misbehaving({"10": "nan"})}, (), [], (Finished, "nonfinite", 10, 2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_event_names_the_epoch_of_its_step(tmp_path, name):
    sections, overrides, callbacks, (kind, status, step, epoch) = CASES[name]
    preset = write_preset(tmp_path / "p.toml", **sections)
    out = run(preset, *overrides, callbacks=callbacks, run_dir=tmp_path / "run")
    assert out.of(RunStarted)[0].steps_per_epoch == S

    final = out.final
    assert isinstance(final, kind), getattr(final, "traceback", final)
    assert (getattr(final, "status", None), final.step, final.epoch) == (status, step, epoch)

    # the rule, for every event that carries both
    for event in out.events:
        fields = {f.name for f in dataclasses.fields(event)}
        if {"step", "epoch"} <= fields:
            assert event.epoch == math.ceil(event.step / S), event

    if isinstance(final, Failed):  # the emergency checkpoint holds the moment Failed names
        [emergency] = [s for s in out.of(CheckpointSaved) if "emergency" in s.tags]
        assert (emergency.step, emergency.epoch) == (final.step, final.epoch)
