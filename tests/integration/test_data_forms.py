"""Dict samples and a custom collate through real DataLoader worker processes: the same batches,
in the same seeded order, as in the main process."""

from __future__ import annotations

import torch

from tests.unit.test_user_data import _same
from tui_trainer import config
from tui_trainer.parts.data import make_loaders

FIX = "tests.fixtures.user_data"


def _epochs(parts, plan=((0, 0), (1, 1))):
    out = []
    for epoch, start in plan:
        parts.train_batches.set_epoch(epoch, start)
        out.append(list(parts.train))
    out.append(list(parts.val))
    return out


def test_dict_samples_with_workers_equal_the_main_process():
    cfg = dict(dataset=f"{FIX}:dicts", batch_size=8, kwargs={"n": 64})
    main = make_loaders(config.DataSection(**cfg), 0, torch.device("cpu"))
    workers = make_loaders(config.DataSection(**cfg, num_workers=2), 0, torch.device("cpu"))
    try:
        a, b = _epochs(main), _epochs(workers)
        assert [len(e) for e in a] == [len(e) for e in b] == [6, 5, 2]
        assert all(_same(x, y) for ea, eb in zip(a, b) for x, y in zip(ea, eb))
    finally:
        workers.close()


def test_a_custom_collate_runs_in_the_workers():
    cfg = dict(dataset=f"{FIX}:ragged", batch_size=2, val_fraction=0.0, collate=f"{FIX}:pad_collate")
    main = make_loaders(config.DataSection(**cfg), 0, torch.device("cpu"))
    workers = make_loaders(config.DataSection(**cfg, num_workers=2), 0, torch.device("cpu"))
    try:
        a, b = list(main.train), list(workers.train)
        assert len(a) == len(b) == 3 and all(batch[2] == "padded" for batch in b)
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    finally:
        workers.close()
