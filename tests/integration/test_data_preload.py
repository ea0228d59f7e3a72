"""data.preload: the same batches as the DataLoader, in the same seeded order, resumable mid-epoch."""

import pytest
import torch

from tui_trainer import config
from tui_trainer.parts.data import make_loaders
from tui_trainer.errors import UserError

DATA = {"dataset": "digits", "image_size": 8, "batch_size": 32, "val_fraction": 0.2, "limit": 400}


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_preloaded_batches_equal_the_loaders():
    plain = make_loaders(config.DataSection(**DATA), 0, torch.device("cpu"))
    pre = make_loaders(config.DataSection(**DATA, preload=True), 0, torch.device("cpu"))
    assert "preloaded to cpu" in pre.note
    for epoch, start in [(0, 0), (1, 0), (1, 3)]:
        plain.train_batches.set_epoch(epoch, start)
        pre.train_batches.set_epoch(epoch, start)
        a, b = batches(plain.train), batches(pre.train)
        assert len(a) == len(b) == len(pre.train) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(batches(plain.val), batches(pre.val)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_preload_refuses_random_augmentation():
    with pytest.raises(UserError, match="data.preload"):
        config.from_dict({"data": {"preload": True, "augment": True}})


def test_the_trainer_moves_only_batches_that_are_not_on_its_device(tmp_path):
    """A preloaded set already lies on the training device: the step takes its batches as they come
    (no to_device call a step); a DataLoader's batches are moved."""
    from tests.helpers.user_code import write_preset
    from tui_trainer.run.launch import prepare

    for preload, moves in [(True, False), (False, True)]:
        preset = write_preset(tmp_path / f"p{preload}.toml", data={"preload": preload, "num_workers": 0})
        session = prepare(preset, [], run_dir=tmp_path / f"run{preload}", sinks=[])
        try:
            assert session.trainer._move is moves
            seen = []
            step = session.trainer.step_fn
            session.trainer.step_fn = lambda model, batch, loss_fn: seen.append(batch) or step(model, batch, loss_fn)
            session.trainer.parts.data.train_batches.set_epoch(0)
            batch = next(iter(session.trainer.parts.data.train))
            session.trainer._step(batch)
            assert (seen[0] is batch) is not moves  # to_device builds a new tuple; a preloaded batch is passed on
        finally:
            session.close()
