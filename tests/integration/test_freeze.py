"""Freezing and unfreezing mid-run through the command queue, and `model.freeze` in the preset.

The optimizer is built once with every parameter; a frozen parameter must not move by a single
bit (no stale gradient, no momentum, no weight decay, no quasi-Newton history), and must train
again after unfreezing. The tiny model is small_cnn: blocks "0", "1", "2" (conv + BatchNorm)
and the head "6".
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import TINY_OPTIMIZER, At, Snapshots, edit, run
from tui_trainer.engine.commands import SetTrainable
from tui_trainer.engine.events import RunWarning, TrainableChanged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FROZEN = ("0.0.weight", "0.1.weight", "0.1.bias")  # block 0: conv and BatchNorm
HEAD = "6.weight"
FREEZE_AT, UNFREEZE_AT = 3, 7  # sent after these steps, applied before the next one

OPTIMIZERS = {
    "sgd-momentum-wd": TINY_OPTIMIZER + "weight_decay = 0.01\n",
    "adamw": 'name = "AdamW"\nlr = 0.01\nweight_decay = 0.1\n',
    "lbfgs": 'name = "LBFGS"\nlr = 0.2\nmax_iter = 2\nhistory_size = 4\n',
}


class GradsAtFreeze:
    """What the trainer thread sees the moment it reports the freeze."""

    def __init__(self, model):
        self.model, self.seen = model, {}

    def on_event(self, event, control) -> None:
        if isinstance(event, TrainableChanged) and not event.trainable:
            params = dict(self.model.named_parameters())
            self.seen = {n: (params[n].grad, params[n].requires_grad) for n in FROZEN}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_freeze_then_unfreeze_mid_run(opt, tiny_preset):
    preset = edit(tiny_preset(), (TINY_OPTIMIZER, OPTIMIZERS[opt]))
    parts = {}

    def callbacks(session):
        model = session.trainer.model
        parts.update(snaps=Snapshots(model, (*FROZEN, HEAD)), grads=GradsAtFreeze(model))
        return [parts["snaps"], parts["grads"],
                At({FREEZE_AT: SetTrainable(("0",), False), UNFREEZE_AT: SetTrainable(("0",), True)})]

    out = run(preset, "train.log_every=1", callbacks=callbacks)
    assert out.final.status == "completed", out.final
    at = parts["snaps"].at
    last = max(at)
    assert last == 14

    # Frozen from the command on: bit-identical at every step until the unfreeze; the head trains.
    for step in range(FREEZE_AT + 1, UNFREEZE_AT + 1):
        for name in FROZEN:
            assert torch.equal(at[step][name], at[FREEZE_AT][name]), f"{name} moved at step {step} while frozen"
        assert not torch.equal(at[step][HEAD], at[step - 1][HEAD]), "the head must keep training"
    # Before the freeze and after the unfreeze, block 0 trains at every step.
    for step in [*range(2, FREEZE_AT + 1), *range(UNFREEZE_AT + 1, last + 1)]:
        assert not torch.equal(at[step][FROZEN[0]], at[step - 1][FROZEN[0]]), f"block 0 did not train at step {step}"

    # Right after the freeze: requires_grad off and no gradient left that a later step could apply.
    seen = parts["grads"].seen
    assert seen and all(grad is None and not requires_grad for grad, requires_grad in seen.values())

    changes = out.of(TrainableChanged)
    assert [(e.step, e.prefixes, e.trainable) for e in changes] == [(FREEZE_AT, ("0",), False),
                                                                     (UNFREEZE_AT, ("0",), True)]
    frozen, unfrozen = changes
    rows = [row.name for row in out.session.trainer.parts.layers]
    for name, state in zip(rows, frozen.state):
        assert state is (False if name == "0" or name.startswith("0.") else True), name
    block0 = sum(p.numel() for n, p in out.model.named_parameters() if n.startswith("0."))
    assert (frozen.params_total - frozen.params_trainable) == block0
    assert unfrozen.params_trainable == unfrozen.params_total
    assert all(state is True for state in unfrozen.state)


def test_unknown_prefix_warns_and_changes_nothing(tiny_preset):
    out = run(tiny_preset(), "train.log_every=1", "train.epochs=1",
              callbacks=[At({2: SetTrainable(("layer9",), False)})])
    assert not out.of(TrainableChanged)
    assert [e.message for e in out.of(RunWarning)] == ["no layer named layer9; nothing changed"]
    assert all(p.requires_grad for p in out.model.parameters())


PRESET_FROZEN = ["0.0.weight", "0.1.weight", "0.1.bias", "1.0.weight"]


def test_preset_freeze_is_frozen_from_the_start(tiny_preset):
    before = {}

    def callbacks(session):
        before.update({n: p.detach().clone() for n, p in session.trainer.model.named_parameters()})
        assert [n for n, p in session.trainer.model.named_parameters() if not p.requires_grad] == PRESET_FROZEN
        return []

    out = run(tiny_preset(), 'model.freeze=["0", "1.0"]', callbacks=callbacks)
    assert out.final.status == "completed"
    after = dict(out.model.named_parameters())
    for name in PRESET_FROZEN:
        assert torch.equal(after[name], before[name]), name
    for name in ("1.1.weight", "2.0.weight", HEAD):
        assert not torch.equal(after[name], before[name]), name


@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_batchnorm_statistics_of_frozen_layers(freeze_bn_stats, tiny_preset):
    """Frozen BatchNorm keeps its affine weights; its running statistics follow the data unless
    train.freeze_bn_stats = true (then a fully frozen BatchNorm runs in eval mode)."""
    before = {}

    def callbacks(session):
        before["mean"] = session.trainer.model[0][1].running_mean.clone()
        return []

    out = run(tiny_preset(), 'model.freeze=["0"]', f"train.freeze_bn_stats={str(freeze_bn_stats).lower()}",
              callbacks=callbacks)
    assert torch.equal(out.model[0][1].running_mean, before["mean"]) is freeze_bn_stats
    assert not torch.equal(out.model[1][1].running_mean, torch.zeros_like(before["mean"][:8]))  # trainable BN moves
