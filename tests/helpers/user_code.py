"""A user's own code, as presets name it ("tests.helpers.user_code:..."): tiny models, dataset
factories, steps, metric functions, tutorial-style callbacks and deliberately broken versions of
each. Used by tests/integration/test_user_code.py, test_accumulate.py, test_hooks.py and the
bad presets in tests/fixtures/bad_presets/. Everything is small enough to train in well under a
second on one CPU core."""

from __future__ import annotations

import os
import time

import torch
from torch import nn
from torch.utils.data import Dataset

# --------------------------------------------------------------------------- models


def mlp(inputs: int = 4, classes: int = 3, hidden: int = 16) -> nn.Module:
    """No BatchNorm and no dropout: the same data gives the same update however it is batched."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def slow_mlp(delay: float = 30.0) -> nn.Module:
    """`mlp`, built after `delay` seconds: a rank still building its parts (its signal handlers not yet
    installed) for as long as a test needs."""
    time.sleep(delay)
    return mlp()


def mlp784(num_classes: int = 10) -> nn.Module:
    """An MNIST-style MLP: it takes flat (N, 784) inputs, not images."""
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))


class TwoInputs(nn.Module):
    """model(a, b): for dict batches with two inputs."""

    def __init__(self, a: int = 3, b: int = 2, classes: int = 3, dropout: float = 0.0):
        super().__init__()
        self.a, self.b = nn.Linear(a, 8), nn.Linear(b, 8)
        self.drop = nn.Dropout(dropout)  # draws from the global RNG: what an exact resume must restore
        self.head = nn.Linear(8, classes)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.a(a) + self.b(b))))


def two_inputs(classes: int = 3, dropout: float = 0.0) -> nn.Module:
    return TwoInputs(classes=classes, dropout=dropout)


def seg_net(channels: int = 3, classes: int = 2) -> nn.Module:
    """A tiny fully convolutional net: (N, C, H, W) -> (N, classes, H, W) logits."""
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))


# --------------------------------------------------------------------------- datasets


class Blobs(Dataset):
    """Three Gaussian blobs in 4-d: x (4,) float32, y int (0..2). Deterministic in (n, seed);
    `.classes` names the classes. A Dataset class is a factory too (dataset = "...:Blobs")."""

    def __init__(self, n: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(1000 + seed)
        self.y = torch.arange(n) % 3
        centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
        self.x = centres[self.y] + torch.randn(n, 4, generator=g)
        self.classes = ["a", "b", "c"]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class SlowBlobs(Blobs):
    """Blobs that take 20 ms per sample (a slow disk or decoder): a loop on them waits for its data."""

    def __getitem__(self, i: int):
        time.sleep(0.02)
        return super().__getitem__(i)


def slow(n: int = 32, n_val: int = 4):
    """(train, val) of SlowBlobs."""
    return SlowBlobs(n), SlowBlobs(n_val, seed=1)


def slow_val(n: int = 96, n_val: int = 10):
    """(train, val): quick training, a validation of ~0.2 s (SlowBlobs)."""
    return Blobs(n), SlowBlobs(n_val, seed=1)


SEEDS: list[int] = []  # the seed each call of `seeded` got, newest last


def seeded(n: int = 96, seed: int = 123):
    """A factory that takes the run's seed (the run passes seed = its preset's seed)."""
    SEEDS.append(seed)
    return Blobs(n, seed)


def one(n: int = 96):
    """One Dataset: the run splits it by data.val_fraction."""
    return Blobs(n)


def pair(n: int = 96, n_val: int = 24):
    """(train, val)."""
    return Blobs(n), Blobs(n_val, seed=1)


def as_dict(n: int = 96, n_val: int = 24):
    """{"train", "val", "classes"} (the datasets carry no .classes of their own here)."""
    train, val = Blobs(n), Blobs(n_val, seed=1)
    del train.classes, val.classes
    return {"train": train, "val": val, "classes": ["x", "y", "z"]}


class Pairs(Dataset):
    """Generic (x, y) rows of two tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def regression(n: int = 96, n_val: int = 32, seed: int = 0):
    """y (1,) = x (5,) . w + noise; no classes (a regression)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5])
    x = torch.randn(n + n_val, 5, generator=g)
    y = (x @ w).unsqueeze(1) + 0.1 * torch.randn(n + n_val, 1, generator=g)
    return Pairs(x[:n], y[:n]), Pairs(x[n:], y[n:])


def segmentation(n: int = 8, n_val: int = 4, size: int = 16, seed: int = 0):
    """(3, size, size) images, (size, size) int64 masks: 1 where the first channel is positive."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, 3, size, size, generator=g)
    masks = (x[:, 0] > 0).long()
    return {"train": Pairs(x[:n], masks[:n]), "val": Pairs(x[n:], masks[n:]), "classes": ["background", "fg"]}


class DictSamples(Dataset):
    """{"a": (3,) float32, "b": (2,) float32, "label": int}: two inputs, each half of the answer."""

    def __init__(self, n: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.label = torch.arange(n) % 3
        self.a = torch.randn(n, 3, generator=g) + 3 * nn.functional.one_hot(self.label, 3).float()
        self.b = torch.randn(n, 2, generator=g) + 2 * self.label.float().unsqueeze(1)
        self.classes = ["0", "1", "2"]

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int):
        return {"a": self.a[i], "b": self.b[i], "label": int(self.label[i])}


def dict_samples(n: int = 96, seed: int = 0):
    return DictSamples(n, seed)


COLLATED: list[int] = []  # the batch sizes `dict_collate` made, newest last


def dict_collate(samples: list[dict]) -> dict:
    """A user's collate: dict samples -> {"inputs": (a, b), "label": (N,)}."""
    COLLATED.append(len(samples))
    return {"inputs": (torch.stack([s["a"] for s in samples]), torch.stack([s["b"] for s in samples])),
            "label": torch.tensor([s["label"] for s in samples])}


# broken factories (tests/fixtures/bad_presets/)


def raising_factory(n: int = 4):
    raise FileNotFoundError(f"no such file: data/train-{n}.csv")


def raising_factory_slow_on_rank_1(n: int = 4, delay: float = 2.0):
    """Raises on every rank, rank 1 `delay` seconds later: the launcher ends rank 1 while it still builds."""
    if os.environ.get("RANK") == "1":
        time.sleep(delay)
    raising_factory(n)


def list_of_samples(n: int = 10):
    """A common mistake: a list of samples instead of a Dataset."""
    return [(torch.zeros(4), 0) for _ in range(n)]


def two_samples():
    """The same mistake with two samples: it looks like (train, val)."""
    return list_of_samples(2)


# --------------------------------------------------------------------------- steps


def loss_only_step(model, batch, loss_fn):
    """Returns only the loss: no outputs for metrics (val_acc is then unknown)."""
    x, y = batch
    return loss_fn(model(x), y)


def dict_step(model, batch, loss_fn):
    """The full form: the outputs and targets feed the [[metrics]]."""
    x, y = batch
    out = model(x)
    return {"loss": loss_fn(out, y), "outputs": out, "targets": y}


def two_input_step(model, batch, loss_fn):
    """For `dict_collate` batches ({"inputs": (a, b), "label"}) and raw dict batches ({"a", "b", "label"})."""
    a, b = batch["inputs"] if "inputs" in batch else (batch["a"], batch["b"])
    out = model(a, b)
    return {"loss": loss_fn(out, batch["label"]), "outputs": out, "targets": batch["label"]}


def no_loss_step(model, batch, loss_fn):
    x, y = batch
    out = model(x)
    return {"outputs": out, "targets": y, "los": loss_fn(out, y)}


def per_sample_loss_step(model, batch, loss_fn):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


# --------------------------------------------------------------------------- metrics


def hit_rate(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user's metric fn(outputs, targets) -> one-element tensor; higher is better (mode = "max")."""
    return (outputs.argmax(dim=1) == targets).float().mean()


# --------------------------------------------------------------------------- tutorial callbacks


class EpochStarts:
    """on_epoch_start(epoch, model, optimizer): records what it was given."""

    def __init__(self):
        self.calls: list[tuple[int, object, object]] = []

    def on_epoch_start(self, epoch, model, optimizer):
        self.calls.append((epoch, model, optimizer))


class BatchEnds:
    """on_batch_end(model, optimizer): counts; records the LR and, via `step` (a kwarg it may take), the step."""

    def __init__(self):
        self.count = 0
        self.steps: list[int] = []

    def on_batch_end(self, model, optimizer, step):
        self.count += 1
        self.steps.append(step)


class StopAfterValidation:
    """on_validation_end(model, optimizer, metrics): True (stop) once `epoch` (0-based) is validated."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch
        self.seen: list[dict] = []

    def on_validation_end(self, model, optimizer, metrics, epoch):
        self.seen.append(dict(metrics))
        return epoch == self.epoch


class EpochEnds:
    """on_epoch_end(epoch, metrics)."""

    def __init__(self):
        self.calls: list[tuple[int, dict]] = []

    def on_epoch_end(self, epoch, metrics):
        self.calls.append((epoch, dict(metrics)))


class SetLr:
    """Writes param_group["lr"] = lr at the start of epoch `epoch` (0-based), as tutorials do."""

    def __init__(self, epoch: int = 1, lr: float = 0.01):
        self.epoch, self.lr = epoch, lr

    def on_epoch_start(self, epoch, optimizer):
        if epoch == self.epoch:
            for group in optimizer.param_groups:
                group["lr"] = self.lr


class RaisesAt:
    """on_batch_end raises at step `step`; counts the calls it got."""

    def __init__(self, step: int = 2):
        self.at, self.calls = step, 0

    def on_batch_end(self, step):
        self.calls += 1
        if step == self.at:
            raise KeyError("lr_history")


class KerasNames:
    """Keras's names for on_epoch_start and on_batch_end: taken as those hooks."""

    def __init__(self):
        self.epochs: list[int] = []
        self.batches = 0

    def on_epoch_begin(self, epoch):
        self.epochs.append(epoch)

    def on_train_batch_end(self, step):
        self.batches += 1


class MisspeltHook:
    """Neither on_event nor a hook: a typo of one."""

    def on_batch_ends(self, step):
        pass


class Plain:
    """Nothing a callback has (a class named by mistake)."""

    def __init__(self, size: int = 3):
        self.size = size


class UnknownParam:
    """A hook parameter that is not one of the names hooks are given."""

    def on_epoch_end(self, epoch, stats):
        pass


# --------------------------------------------------------------------------- presets

UC = "tests.helpers.user_code"
BASE = {
    "name": "user",
    "seed": 0,
    "model": {"arch": f"{UC}:mlp"},
    "data": {"dataset": f"{UC}:pair", "batch_size": 16, "num_workers": 0},
    "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9},
    # log_min_interval_s 0: a report after exactly every log_every steps (test_report_pacing.py: the default)
    "train": {"epochs": 2, "log_every": 1, "log_min_interval_s": 0, "device": "cpu"},
    "checkpoint": {"every_epochs": 1, "keep_last": 2},
}


def write_preset(path, replace: tuple[str, ...] = (), **sections):
    """BASE (a 4-16-3 MLP on `pair` blobs, SGD, 2 epochs, log_every 1) with `sections` merged in;
    sections named in `replace` replace BASE's instead. Returns the path."""
    import tomli_w

    from tests.helpers.runs import merge

    base = {k: v for k, v in BASE.items() if k not in replace}
    path.write_text(tomli_w.dumps(merge(base, sections)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- tutorial models


class ViewFlatten(nn.Module):
    """A tutorial CNN head that flattens with `.view`: it needs a contiguous batch. digits' samples
    are expanded grey images (not contiguous), so a check on one unsqueezed sample failed where a
    real collated batch (stacked, contiguous) works."""

    def __init__(self, num_classes: int = 10, size: int = 8):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, num_classes)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))
