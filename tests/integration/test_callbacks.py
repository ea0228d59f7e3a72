"""User callbacks from the preset ([[callbacks]] target = "pkg.mod:Class" + kwargs): they see the
events the UI sees and steer the run with the same commands. The shipped examples run for real."""

from __future__ import annotations

import json

import pytest
import torch

from examples.callbacks import ReduceLrOnSpike, UnfreezeAt
from tests.conftest import ONE_THREAD_ENV, run_cli
from tests.helpers.engine import At, run
from tui_trainer.engine.commands import Control, ScaleLr, SetTrainable, Stop
from tui_trainer.engine.events import RunWarning, StepReport, TrainableChanged

UNFREEZE = """
[[callbacks]]
target = "examples.callbacks:UnfreezeAt"
epoch = 2
prefixes = ["0"]
"""


def test_unfreeze_at_from_the_preset_through_the_cli(tiny_preset, tmp_path):
    preset = tiny_preset(UNFREEZE)
    proc = run_cli(str(preset), "--no-ui", "--set", 'model.freeze=["0", "1"]', "--set", "train.epochs=3",
                   cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "unfroze 0: trainable" in proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["kind"] == "TrainableChanged"]
    assert [(e["step"], e["prefixes"], e["trainable"]) for e in changes] == [(7, ["0"], True)]

    ckpt = run_dir / "checkpoints"
    epoch2, epoch3 = (torch.load(ckpt / f"epoch-000{i}.pt", weights_only=True) for i in (2, 3))
    assert epoch3["trainable"] == {n: not n.startswith("1.") for n in epoch3["trainable"]}
    for name in epoch3["model"]:
        if name.startswith("0.") and name.endswith(("weight", "bias")):
            assert not torch.equal(epoch2["model"][name], epoch3["model"][name]), f"{name} trains from epoch 2"
        if name.startswith("1.") and name.endswith(("weight", "bias")):
            assert torch.equal(epoch2["model"][name], epoch3["model"][name]), f"{name} stays frozen"


@pytest.mark.usefixtures("one_torch_thread")
class TestUnfreezeAtAcrossResume:
    def test_resumed_before_the_epoch_it_still_unfreezes(self, tiny_preset, tmp_path):
        preset = tiny_preset(UNFREEZE)
        run(preset, 'model.freeze=["0"]', "train.log_every=1", callbacks=[At({3: Stop()})], run_dir=tmp_path / "a")
        out = run(preset, 'model.freeze=["0"]', "train.log_every=1", resume=str(tmp_path / "a/checkpoints/last.pt"))
        assert [(e.step, e.trainable) for e in out.of(TrainableChanged)] == [(7, True)]

    def test_resumed_at_the_start_of_that_epoch_it_unfreezes_at_once(self, tiny_preset, tmp_path):
        # The epoch-1 checkpoint is written after EpochEnd, before the queued unfreeze is applied.
        preset = tiny_preset(UNFREEZE)
        run(preset, 'model.freeze=["0"]', "train.epochs=1", run_dir=tmp_path / "a")
        out = run(preset, 'model.freeze=["0"]', resume=str(tmp_path / "a/checkpoints/last.pt"))
        assert [(e.step, e.trainable) for e in out.of(TrainableChanged)] == [(7, True)]

    def test_resumed_later_it_leaves_a_hand_refrozen_layer_alone(self, tiny_preset, tmp_path):
        preset = tiny_preset(UNFREEZE)
        run(preset, 'model.freeze=["0"]', "train.log_every=1", "train.epochs=3",
            callbacks=[At({9: [SetTrainable(("0",), False)], 10: Stop()})], run_dir=tmp_path / "a")
        out = run(preset, 'model.freeze=["0"]', "train.log_every=1", "train.epochs=3",
                  resume=str(tmp_path / "a/checkpoints/last.pt"))
        assert not out.of(TrainableChanged)
        assert not any(p.requires_grad for n, p in out.model.named_parameters() if n.startswith("0."))


def report(step: int, loss: float) -> StepReport:
    return StepReport(step=step, epoch=1, first_step=step, losses=(loss,), lrs=(0.1,), samples_per_s=1.0, eta_s=None)


def test_reduce_lr_on_spike():
    control = Control()
    callback = ReduceLrOnSpike(factor=0.5, ratio=2.0, window=3, cooldown=2)
    losses = [1.0, 1.1, 0.9, 1.0, 2.5, 9.0, 9.0, 1.0, 4.0, 1.0, 4.5]
    sent = []
    for step, loss in enumerate(losses, 1):
        callback.on_event(report(step, loss), control)
        while not control.queue.empty():
            sent.append((step, control.queue.get()))
    # 2.5 > 2 x mean(1.1, 0.9, 1.0) fires. The next two reports are quiet (9.0 is no new spike) but
    # start a new window; 4.0 is not above 2 x mean(9, 9, 1); 4.5 is above 2 x mean(1, 4, 1) = 4.
    assert sent == [(5, ScaleLr(0.5)), (11, ScaleLr(0.5))]
    assert callback.recent.maxlen == 3


def test_the_example_callbacks_take_documented_kwargs():
    with pytest.raises(ValueError, match="1-based"):
        UnfreezeAt(0, ["layer4"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        ReduceLrOnSpike(factor=2.0)


class Broken:
    def __init__(self):
        self.calls = 0

    def on_event(self, event, control):
        self.calls += 1
        if isinstance(event, StepReport):
            raise KeyError("oops")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_broken_callback_is_disabled_with_a_warning_and_the_run_goes_on(tiny_preset):
    broken = Broken()
    out = run(tiny_preset(), "train.epochs=1", callbacks=[broken])
    assert out.final.status == "completed"
    warnings = [e.message for e in out.of(RunWarning)]
    assert warnings == ["callback Broken raised KeyError: 'oops'; it is disabled for the rest of the run"]
    assert broken.calls == 3, "RunStarted, StateChanged, then the StepReport that raised; nothing after"
