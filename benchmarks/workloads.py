"""The benchmark workloads: a preset each, written to a TOML file so that every variant (bare loop,
headless engine, app) starts from the same file through the same builders.

Why the comparison is fair: the bare loop builds its model, optimizer, loss and batches with
`tui_trainer.parts.build()` from the very preset the engine and the app load, so all three get the
same seeded initial weights, the same optimizer and hyper-parameters, the same AMP dtype and the
same batches in the same order. The data is `data.preload = true`: the digits are transformed once
into two tensors on the device before the run, and a batch is one `index_select` (about 25 us on
CPU, identical in every variant), so data loading is neither measured nor able to hide overhead.
No scheduler, no clipping, no validation and no checkpoints inside the measured window: the
textbook loop has none of those, and the window must compare the step path alone. What the engine
does on top (loss kept on the device, a report every `log_every` steps with its one host sync, the
run-dir recorder and the log line) is exactly the overhead being measured.

Step forms (`step_forms.py`): the same tiny workload with the same digits, model, seed and
optimizer, but the samples come as dicts {"image": x, "label": y} (`digits_dicts`, a dataset
factory, preloaded the same way) and a user step (`dict_step`, or `dict_step_loss` that returns
the loss alone) turns a dict batch into the loss: what a custom step and dict batches cost next
to the default classifier step on (x, y) batches.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]

DIGITS_TRAIN = 1797  # the whole digits set: val_fraction = 0, no validation pass


def tiny_mlp(num_classes: int = 10, in_features: int = 3 * 8 * 8, hidden: int = 256) -> nn.Module:
    """Two hidden layers on 8x8 digits: about 1 ms a step at batch 32 on one CPU thread, so any
    per-step overhead of the loop around it shows."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class DigitsDicts(Dataset):
    """The built-in digits exactly as `data.dataset = "digits"` gives them (same transform, same
    order), each sample a dict {"image": x, "label": y} instead of (x, y)."""

    def __init__(self, size: int = 8):
        from tui_trainer.parts.data import Digits

        self.digits = Digits(size)
        self.classes = self.digits.classes

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, i: int) -> dict:
        x, y = self.digits[i]
        return {"image": x, "label": y}


def digits_dicts(size: int = 8) -> Dataset:
    """Dataset factory (`data.dataset = "benchmarks.workloads:digits_dicts"`): one pool, split by
    the same seeded `val_fraction` as the built-in digits."""
    return DigitsDicts(size)


def dict_step(model: nn.Module, batch: dict, loss_fn) -> dict:
    """A user step on dict batches, in the full form (loss, outputs, targets)."""
    out = model(batch["image"])
    return {"loss": loss_fn(out, batch["label"]), "outputs": out, "targets": batch["label"]}


def dict_step_loss(model: nn.Module, batch: dict, loss_fn) -> torch.Tensor:
    """The same user step returning only the loss."""
    return loss_fn(model(batch["image"]), batch["label"])


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # TOML lines of [model]
    image_size: int
    batch_size: int
    log_every: int
    warmup: int  # steps not measured (allocator, autograd caches, first reports)
    steps: int  # total steps of a run (optimizer steps); the window is warmup..steps
    dataset: str = "digits"  # data.dataset: the built-in, or a factory such as DIGITS_DICTS
    dataset_kwargs: str = ""  # TOML inline table of data.kwargs, e.g. "{ size = 8 }"
    step_fn: str = "default"  # [step] fn
    accumulate: int = 1  # train.accumulate: batches per optimizer step

    def preset_text(self, *, steps: int | None = None, device: str = "cpu", amp: str = "off",
                    log_every: int | None = None) -> str:
        steps = steps or self.steps
        per_epoch = DIGITS_TRAIN // self.batch_size // self.accumulate
        kwargs = f"kwargs = {self.dataset_kwargs}\n" if self.dataset_kwargs else ""
        return f"""\
name = "bench_{self.name}"
seed = 0

[model]
{self.model}

[step]
fn = "{self.step_fn}"

[data]
dataset = "{self.dataset}"
{kwargs}image_size = {self.image_size}
batch_size = {self.batch_size}
val_fraction = 0.0
num_workers = 0
preload = true

[optimizer]
name = "SGD"
lr = 0.01
momentum = 0.9

[train]
epochs = {math.ceil(steps / per_epoch)}
max_steps = {steps}
accumulate = {self.accumulate}
device = "{device}"
amp = "{amp}"
log_every = {log_every or self.log_every}

[checkpoint]
every_epochs = 0
save_best = false
keep_last = 1
"""

    def write(self, folder: Path, **kwargs) -> Path:
        path = Path(folder) / f"bench_{self.name}.toml"
        path.write_text(self.preset_text(**kwargs), encoding="utf-8")
        return path


TINY = Workload("tiny", 'arch = "benchmarks.workloads:tiny_mlp"', image_size=8, batch_size=32, log_every=10,
                warmup=300, steps=3300)
RESNET18 = Workload("resnet18", 'arch = "resnet18"\nweights = "none"\nnum_classes = 10', image_size=64,
                    batch_size=32, log_every=5, warmup=10, steps=60)
WORKLOADS = {w.name: w for w in (TINY, RESNET18)}

# The tiny workload's step forms (step_forms.py): same model, data, seed and optimizer as TINY.
DIGITS_DICTS = "benchmarks.workloads:digits_dicts"
TINY_DICT = replace(TINY, name="tiny_dict", dataset=DIGITS_DICTS, dataset_kwargs="{ size = 8 }",
                    step_fn="benchmarks.workloads:dict_step")
TINY_DICT_LOSS = replace(TINY_DICT, name="tiny_dict_loss", step_fn="benchmarks.workloads:dict_step_loss")
# NOT the same work per optimizer step as TINY: two backward passes at batch 16 (report separately)
TINY_ACC2 = replace(TINY, name="tiny_acc2", batch_size=16, accumulate=2)

# For the footprint runs (a million steps): the smallest step that still trains, so the run is
# minutes; memory growth is a matter of steps and reports, not of model size.
MICRO = Workload("micro", 'arch = "benchmarks.workloads:tiny_mlp"\nkwargs = { hidden = 32 }', image_size=8,
                 batch_size=8, log_every=10, warmup=0, steps=1_000_000)


def quick(w: Workload) -> Workload:
    """A smoke version: seconds, not minutes."""
    return replace(w, warmup=w.log_every, steps=3 * w.log_every)


def importable() -> None:
    """`benchmarks.workloads:tiny_mlp` must import in this process (and in children, via PYTHONPATH)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
