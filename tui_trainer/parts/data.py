"""Data: the built-in `digits`, ImageFolder, torchvision datasets; seeded splits and batches.

Reproducibility is by construction, not by luck: the batch order of epoch `e` is a pure function
of (seed, e), and a random augmentation of a sample is a pure function of (seed, epoch, index).
So a run resumed in the middle of an epoch sees exactly the batches it would have seen, whatever
`num_workers` is, and data loading never touches the global RNG that dropout uses.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from tui_trainer.config import DataSection
from tui_trainer.errors import PresetError, UserError, did_you_mean
from tui_trainer.signals import reset_inherited_signals

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """A sample that cannot be read; the message names the file."""


@dataclass
class DataParts:
    train: DataLoader
    val: DataLoader | None
    train_batches: EpochBatches
    num_classes: int | None
    classes: list[str]
    sample: torch.Tensor  # one input, batch of 1, for the dry forward pass
    note: str  # "digits: 1437 train / 360 val, 10 classes"
    sample_target: torch.Tensor | None = None  # the sample's target, batch of 1 (for the loss check)

    def close(self) -> None:
        """End the persistent worker processes now. Left to garbage collection, an iterator caught
        in an exception's reference cycle outlives the run, and at exit multiprocessing would
        join workers that (see _worker_signals) ignore its SIGTERM: a hang. torch has
        no public call for this; `_iterator` is the persistent-workers iterator it reuses."""
        for loader in (self.train, self.val):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            if loader is not None and hasattr(loader, "_iterator"):
                loader._iterator = None

    def kill_workers(self) -> None:
        """SIGKILL the worker processes now (an abort: no save, no waiting). Safe from a signal
        handler. `close()` afterwards finds them dead and returns at once."""
        import signal

        try:  # torch's SIGCHLD handler would turn the deaths we cause into a RuntimeError
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        except (OSError, ValueError):  # not the main thread
            pass
        for loader in (self.train, self.val):
            for worker in getattr(getattr(loader, "_iterator", None), "_workers", ()):
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except (OSError, TypeError):  # gone already, or never started
                    pass


# --------------------------------------------------------------------------- datasets


class Digits(Dataset):
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes; no network),
    resized to `size`, three channels, ImageNet-normalised."""

    def __init__(self, size: int, augment: bool = False):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        self.images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        self.targets = torch.tensor(bunch.target, dtype=torch.long)
        self.classes = [str(c) for c in bunch.target_names]
        self.size = size
        self.augment = augment
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i : i + 1]
        if self.augment:  # a small random shift and rotation, like handwriting varies
            from torchvision.transforms import v2

            x = v2.RandomAffine(degrees=10, translate=(0.1, 0.1))(x)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x[0].expand(3, -1, -1) - self.mean) / self.std
        return x, self.targets[i]


def _image_transform(size: int, augment: bool):
    from torchvision.transforms import v2

    head = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if augment else [
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
    ]
    return v2.Compose([v2.RGB(), *head, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class NamedFiles(Dataset):
    """Wrap a file-backed dataset so a broken image names its file."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", [])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except Exception as exc:
            samples = getattr(self.dataset, "samples", None)
            where = samples[i][0] if samples else f"sample {i}"
            raise DataError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None


def _imagefolder(cfg: DataSection, split: str, augment: bool):
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root or "")
    folder = root / split if (root / "train").is_dir() else root
    try:
        return NamedFiles(ImageFolder(str(folder), transform=_image_transform(cfg.image_size, augment)))
    except FileNotFoundError as exc:
        raise PresetError(f"{exc}; ImageFolder wants ROOT/<class>/<image> or ROOT/train/ and ROOT/val/",
                          key="data.root") from None


def _torchvision_dataset(cfg: DataSection, name: str, train: bool, augment: bool):
    import torchvision.datasets as tvd

    names = [n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and issubclass(getattr(tvd, n), Dataset)]
    if name not in names:
        raise PresetError(f'torchvision has no dataset "{name}"{did_you_mean(name, names)}', key="data.dataset")
    cls = getattr(tvd, name)
    params = inspect.signature(cls).parameters
    kwargs: dict = {"transform": _image_transform(cfg.image_size, augment)}
    if "root" in params:
        if not cfg.root:
            raise PresetError(f'torchvision:{name} needs data.root = "path/to/data"', key="data.root")
        kwargs["root"] = cfg.root
    if "download" in params:
        kwargs["download"] = cfg.download
    if "train" in params:
        kwargs["train"] = train
    elif "split" in params:
        kwargs["split"] = "train" if train else "test"
    elif not train:
        return None  # one pool, split by val_fraction
    if name == "FakeData":  # a real torchvision class that needs no files: handy for smoke runs
        kwargs.update(size=200 if train else 50, image_size=(3, cfg.image_size, cfg.image_size), num_classes=10,
                      random_offset=0 if train else 10_000)
    try:
        return NamedFiles(cls(**kwargs))
    except RuntimeError as exc:
        raise PresetError(
            f"torchvision:{name} not found under {cfg.root} ({exc}); put the files there, or set"
            " data.download = true on a machine with network",
            key="data.root",
        ) from None


def load_datasets(cfg: DataSection, seed: int) -> tuple[Dataset, Dataset | None, list[str]]:
    """(train, val, class names), with `limit` and the seeded `val_fraction` split applied."""
    kind = cfg.dataset
    if kind == "digits":
        plain = Digits(cfg.image_size)
        pool = Digits(cfg.image_size, augment=True) if cfg.augment else plain
        train, val = _split(pool, plain, cfg, seed)
        return train, val, plain.classes
    if kind in ("imagefolder", "torchvision") or kind.startswith("torchvision:"):
        if kind == "imagefolder":
            _check_root(cfg)
            has_val = (Path(cfg.root) / "val").is_dir()
            train_ds = _imagefolder(cfg, "train", cfg.augment)
            val_ds = _imagefolder(cfg, "val", False) if has_val else None
            if val_ds is None:
                plain = _imagefolder(cfg, "train", False) if cfg.augment else train_ds
                train, val = _split(train_ds, plain, cfg, seed)
                return train, val, train_ds.classes
        else:
            name = kind.partition(":")[2]
            if not name:
                raise PresetError('use "torchvision:NAME", e.g. "torchvision:CIFAR10"', key="data.dataset")
            if cfg.root:
                _check_root(cfg)
            train_ds = _torchvision_dataset(cfg, name, True, cfg.augment)
            val_ds = _torchvision_dataset(cfg, name, False, False)
            if val_ds is None:
                plain = _torchvision_dataset(cfg, name, True, False) if cfg.augment else train_ds
                train, val = _split(train_ds, plain, cfg, seed)
                return train, val, _classes_of(train_ds)
        train = _limit(train_ds, cfg.limit, seed)
        val = _limit(val_ds, max(1, cfg.limit // 4) if cfg.limit else 0, seed + 1)
        return train, val, _classes_of(train_ds)
    raise PresetError(
        f'unknown dataset "{kind}"{did_you_mean(kind, ["digits", "imagefolder"])};'
        ' use "digits", "imagefolder" (with root) or "torchvision:NAME"',
        key="data.dataset",
    )


def _check_root(cfg: DataSection) -> None:
    if not cfg.root:
        raise PresetError(f'dataset "{cfg.dataset}" needs data.root = "path/to/images"', key="data.root")
    if not Path(cfg.root).expanduser().is_dir():
        raise PresetError(f"no such folder {cfg.root}; point data.root at your data", key="data.root")


def _classes_of(ds) -> list[str]:
    classes = list(getattr(ds, "classes", []) or [])
    if not classes:
        inner = getattr(ds, "dataset", ds)
        n = getattr(inner, "num_classes", None)
        classes = [str(i) for i in range(n)] if n else []
    return [str(c) for c in classes]


def _limit(ds, n: int, seed: int):
    if ds is None or not n or n >= len(ds):
        return ds
    keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, sorted(keep.tolist()))


def _split(train_pool, val_pool, cfg: DataSection, seed: int):
    """Seeded split of one pool; `val_pool` is the same data without augmentation."""
    n = len(train_pool)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if cfg.limit:
        order = order[: cfg.limit]
    n_val = int(round(len(order) * cfg.val_fraction))
    if cfg.val_fraction > 0 and n_val == 0 and len(order) > 1:
        n_val = 1
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    return Subset(train_pool, train_idx), (Subset(val_pool, val_idx) if val_idx else None)


# --------------------------------------------------------------------------- batching


class EpochBatches(Sampler):
    """Batches of (epoch, index) keys. The order of epoch `e` depends only on (seed, e), and
    `set_epoch(e, start)` skips the first `start` batches: that is how a resume lands mid-epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        for b in range(self.start, self.batches_per_epoch):
            yield [(self.epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


class Keyed(Dataset):
    """Serve (epoch, index) keys; random transforms of a sample draw from an RNG seeded by the key."""

    def __init__(self, dataset, seed: int, random: bool):
        self.dataset, self.seed, self.random = dataset, seed, random

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if not self.random:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


class PreloadedBatches:
    """`data.preload`: every sample transformed once and kept as two tensors on the training
    device; a batch is one index into them. Batches come in the order of `batches` (the same
    EpochBatches a DataLoader would use), so seeding and mid-epoch resume are unchanged."""

    def __init__(self, dataset, batches: EpochBatches, device: torch.device, num_workers: int = 0):
        xs, ys = [], []
        for x, y in DataLoader(dataset, batch_size=256, num_workers=num_workers):  # index order, once
            xs.append(x)
            ys.append(torch.as_tensor(y))
        self.x = torch.cat(xs).to(device)
        self.y = torch.cat(ys).to(device)
        self.batch_sampler = batches

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        keys = list(self.batch_sampler)
        if not keys:
            return
        # one index tensor per epoch, copied to the device once; a batch is a slice of it
        order = torch.tensor([i for batch in keys for _, i in batch]).to(self.x.device)
        start = 0
        for batch in keys:
            idx = order[start : start + len(batch)]
            start += len(batch)
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


def make_loaders(cfg: DataSection, seed: int, device: torch.device) -> DataParts:
    train_ds, val_ds, classes = load_datasets(cfg, seed)
    if len(train_ds) == 0:
        raise UserError("the training set is empty; check data.root, data.limit and data.val_fraction",
                        key="data")
    drop_last = len(train_ds) > cfg.batch_size  # a last batch of 1 breaks BatchNorm
    batches = EpochBatches(len(train_ds), cfg.batch_size, seed, shuffle=True, drop_last=drop_last)
    common = dict(
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # worker seeds; keeps the global RNG untouched
        worker_init_fn=_worker_signals if cfg.num_workers > 0 else None,
    )
    val_batches = None
    if val_ds is not None and len(val_ds) > 0:
        val_batches = EpochBatches(len(val_ds), cfg.val_batch_size or cfg.batch_size, seed, False, False)
    if cfg.preload:
        train = PreloadedBatches(train_ds, batches, device, cfg.num_workers)
        val = PreloadedBatches(val_ds, val_batches, device, cfg.num_workers) if val_batches else None
    else:
        train = DataLoader(Keyed(train_ds, seed, cfg.augment), batch_sampler=batches, **common)
        val = DataLoader(Keyed(val_ds, seed, False), batch_sampler=val_batches, **common) if val_batches else None
    sample, sample_target = _first_sample(val_ds if val is not None else train_ds)
    n_val = len(val_ds) if val is not None else 0
    name = cfg.dataset if cfg.dataset != "imagefolder" else f"imagefolder {cfg.root}"
    note = f"{name}: {len(train_ds)} train / {n_val} val, {len(classes) or '?'} classes"
    if cfg.preload:
        note += f", preloaded to {device.type}"
    return DataParts(train, val, batches, len(classes) or None, classes, sample, note, sample_target)


def _worker_signals(_worker_id: int) -> None:
    """The main process owns stopping. Workers share its process group and session, so Ctrl+C, a
    terminal hang-up (SIGHUP with SIGCONT, from the kernel to the whole session), or SLURM's /
    systemd's SIGTERM to the whole job reach them too: by default (torch's handler for SIGTERM, or
    the main process's handlers inherited over fork) they would die or act, and the graceful stop
    would end as "DataLoader worker killed". So the stop signals are ignored, and the terminal
    signals go back to their defaults (the app's handlers for them, inherited over fork, need its
    event loop: SIGCONT killed the worker; see tui_trainer/signals.py, which also resets them right
    at the fork). Workers still exit when the main process shuts them down, and on their own if it
    dies."""
    import signal

    reset_inherited_signals()
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
        if hasattr(signal, name):  # no SIGHUP/SIGUSR1 on Windows
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _first_sample(ds) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first (input, target) as a batch of one: for the dry forward pass and loss check."""
    try:
        first = ds[0]
    except DataError as exc:
        raise UserError(str(exc), key="data") from None
    x = first[0]
    if not isinstance(x, torch.Tensor):
        raise UserError(f"samples must be tensors, got {type(x).__name__}", key="data")
    try:
        y = torch.as_tensor(first[1]).unsqueeze(0)
    except (IndexError, TypeError, ValueError, RuntimeError):
        y = None  # an unusual target: the loss is then first tried at step 1
    return x.unsqueeze(0), y
