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
