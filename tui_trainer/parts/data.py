"""Data: the built-in `digits`, ImageFolder, torchvision datasets, or the user's own factory
("package.module:make"); seeded splits and batches.

Reproducibility is by construction, not by luck: the batch order of epoch `e` is a pure function
of (seed, e), and a random augmentation of a sample is a pure function of (seed, epoch, index).
So a run resumed in the middle of an epoch sees exactly the batches it would have seen, whatever
`num_workers` is, and data loading never touches the global RNG that dropout uses.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

from tui_trainer.config import DataSection
from tui_trainer.errors import PresetError, UserError, did_you_mean
from tui_trainer.parts import target
from tui_trainer.parts.batches import EpochBatches, Keyed, PreloadedBatches, _tree_leaves, describe_structure
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
    # the input of `sample_batch` when that is an (input, target) pair, else None (dry forward pass)
    sample: torch.Tensor | None
    note: str  # "digits: 1437 train / 360 val, 10 classes"
    sample_target: torch.Tensor | None = None  # the target of `sample_batch` when it is a pair, else None
    # A real collated batch on the CPU: the first min(batch_size, 8) samples of the validation set
    # (else the training set), through the run's collate_fn; the start checks model, step and loss on it.
    sample_batch: Any = None
    collate_fn: Any = None  # data.collate resolved, or None (torch's default_collate)
    # the first samples of the training set too, when `sample_batch` is the validation set's: the start
    # checks the step on them as well (a train set whose labels are strings failed only at step 0)
    train_batch: Any = None

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (batches per epoch // train.accumulate)."""
        return self.train_batches.steps_per_epoch

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


def mean_std(channels: int = 3, normalize: Any = "imagenet") -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`data.normalize` for `channels`: (mean, std), or None for "none". "imagenet" with one channel
    is the mean of ImageNet's three means and of its three stds (0.449, 0.226). A custom {mean, std}
    must give one value per channel (PresetError key data.normalize otherwise)."""
    if normalize == "none":
        return None
    if normalize == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels
    mean = tuple(float(v) for v in getattr(normalize, "mean", None) or normalize["mean"])
    std = tuple(float(v) for v in getattr(normalize, "std", None) or normalize["std"])
    if len(mean) != channels or len(std) != channels:
        raise PresetError(f"mean has {len(mean)} values and std {len(std)}, but data.channels = {channels};"
                          f" give {channels} of each", key="data.normalize")
    if any(v <= 0 for v in std):
        raise PresetError(f"std must be positive, got {list(std)}", key="data.normalize")
    return mean, std


class Digits(Dataset):
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes; no network),
    resized to `size`; by default three channels and ImageNet-normalised. `channels` 1 keeps one grey
    channel; `normalize` is "imagenet", "none" or {mean, std} (see `mean_std`); `flatten` makes
    each input one flat contiguous vector (channels * size * size), after everything else."""

    channels, flatten = 3, False  # class defaults: an __init__ replaced by a test (a cache) keeps working

    def __init__(self, size: int, augment: bool = False, channels: int = 3, normalize: Any = "imagenet",
                 flatten: bool = False):
        from sklearn.datasets import load_digits

        stats = mean_std(channels, normalize)  # first: a bad normalize fails before the load
        bunch = load_digits()
        self.images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        self.targets = torch.tensor(bunch.target, dtype=torch.long)
        self.classes = [str(c) for c in bunch.target_names]
        self.size = size
        self.augment = augment
        self.channels, self.flatten = channels, flatten
        self.mean = self.std = None
        if stats is not None:
            self.mean = torch.tensor(stats[0]).view(channels, 1, 1)
            self.std = torch.tensor(stats[1]).view(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i : i + 1]
        if self.augment:  # a small random shift and rotation, like handwriting varies
            from torchvision.transforms import v2

            x = v2.RandomAffine(degrees=10, translate=(0.1, 0.1))(x)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x[0].expand(self.channels, -1, -1)
        x = (x - self.mean) / self.std if self.mean is not None else x.contiguous()
        if self.flatten:
            x = x.reshape(-1)
        return x, self.targets[i]


class _Flatten:
    """The last image transform with data.flatten: one flat contiguous plain tensor."""

    def __call__(self, x):
        return x.as_subclass(torch.Tensor).reshape(-1)


def _image_transform(size: int, augment: bool, channels: int = 3, normalize: Any = "imagenet",
                     flatten: bool = False):
    from torchvision.transforms import v2

    stats = mean_std(channels, normalize)
    head = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if augment else [
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
    ]
    colour = v2.RGB() if channels == 3 else v2.Grayscale(1)
    tail = [v2.Normalize(*stats)] if stats is not None else []
    if flatten:
        tail.append(_Flatten())
    return v2.Compose([colour, *head, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *tail])


def _cfg_transform(cfg: DataSection, augment: bool):
    return _image_transform(cfg.image_size, augment, cfg.channels, cfg.normalize, cfg.flatten)


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
        return NamedFiles(ImageFolder(str(folder), transform=_cfg_transform(cfg, augment)))
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
    kwargs: dict = {"transform": _cfg_transform(cfg, augment)}
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
    """(train, val, class names), with `limit` and the seeded `val_fraction` split applied.

    `data.dataset` is a built-in ("digits", "imagefolder", "torchvision:NAME") or a factory
    "package.module:make" (see `user_datasets`)."""
    kind = cfg.dataset
    builtin = kind in ("digits", "imagefolder", "torchvision") or kind.startswith("torchvision:")
    if builtin and cfg.kwargs:
        raise PresetError(f'only a factory dataset ("package.module:make") takes kwargs, not "{kind}"',
                          key="data.kwargs")
    if not builtin and target.is_target(kind):
        return user_datasets(cfg, seed)
    if kind == "digits":
        # the new keys are passed only when set: Digits(size) and Digits(size, augment=True) stay the calls
        shape = {k: getattr(cfg, k) for k, default in (("channels", 3), ("normalize", "imagenet"), ("flatten", False))
                 if getattr(cfg, k) != default}
        plain = Digits(cfg.image_size, **shape)
        pool = Digits(cfg.image_size, augment=True, **shape) if cfg.augment else plain
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
        ' use "digits", "imagefolder" (with root), "torchvision:NAME" or "package.module:factory"',
        key="data.dataset",
    )


_RETURN_FORMS = 'expected a Dataset, (train, val) Datasets or a dict with "train" and "val"'


def check_data(cfg: DataSection) -> None:
    """The data section's own code, imported before any data is loaded (and, with devices > 1,
    before any rank starts): the dataset factory with its kwargs, and the collate function."""
    if target.is_target(cfg.dataset) and not cfg.dataset.startswith("torchvision:"):
        _factory(cfg)
    _collate(cfg)


def _factory(cfg: DataSection):
    """`data.dataset`'s factory, resolved, with [data.kwargs] checked against it."""
    fn = target.resolve(cfg.dataset, "data.dataset")
    if not callable(fn):
        raise PresetError(f"{cfg.dataset} is not callable ({type(fn).__name__}); name a function or a Dataset"
                          " class", key="data.dataset")
    target.check_kwargs(fn, dict(cfg.kwargs), "data.kwargs", provided=("seed",))
    return fn


def _collate(cfg: DataSection):
    """`data.collate` resolved (None when not set)."""
    if not cfg.collate:
        return None
    if cfg.preload:
        raise PresetError("a preloaded set is stacked sample by sample with torch's default collate, so"
                          " data.collate cannot apply; set preload = false or remove collate", key="data.preload")
    fn = target.resolve(cfg.collate, "data.collate")
    if not callable(fn):
        raise PresetError(f"{cfg.collate} is not callable ({type(fn).__name__}); name a function",
                          key="data.collate")
    return fn


def user_datasets(cfg: DataSection, seed: int) -> tuple[Dataset, Dataset | None, list[str]]:
    """`data.dataset = "package.module:make"`: the user's own data.

    `make` (a function, or a Dataset class) is called with the [data.kwargs] table, plus `seed=`
    when it has a `seed` parameter and the kwargs do not give one. It returns
      - one Dataset: split into train/val by the seeded `data.val_fraction`, as the built-ins are;
      - (train, val): a tuple or list of two; val may be None (no validation). `val_fraction` is
        not used: the split is the factory's;
      - a dict with "train" and "val" (val may be None) and optionally "classes" (names, or a count).
    Datasets must be map-style (`__len__` and `__getitem__`); a sample can be any structure of
    tensors, numbers, tuples, lists and dicts that the collate function (data.collate, else torch's
    default_collate) makes into a batch. `data.limit` applies as for the built-ins. Class names:
    the dict's "classes", else the train dataset's `.classes` (also looked up under a Subset),
    else none (num_classes is then None: a regression, or a task the model's kwargs size).
    `data.augment = true` says the train set's transforms are random: each sample then draws from
    an RNG seeded by (seed, epoch, index), so runs and resumes repeat exactly.
    Every failure is a one-line PresetError naming data.dataset or data.kwargs."""
    for key, default in (("channels", 3), ("normalize", "imagenet"), ("flatten", False)):
        if getattr(cfg, key) != default:
            raise PresetError("applies to the built-in image data (digits, imagefolder, torchvision);"
                              " a factory dataset shapes its own samples", key=f"data.{key}")
    spec = cfg.dataset
    fn = _factory(cfg)
    kwargs = dict(cfg.kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    seed_param = params.get("seed")
    if (seed_param is not None and seed_param.kind in (seed_param.POSITIONAL_OR_KEYWORD, seed_param.KEYWORD_ONLY)
            and "seed" not in kwargs):
        kwargs["seed"] = seed
    try:
        made = fn(**kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is a preset error
        raise PresetError(f"{spec}(...) raised {type(exc).__name__}: {_first_line(exc)}",
                          key="data.dataset") from None
    classes: Any = None
    if isinstance(made, (tuple, list)):
        if len(made) != 2:
            raise PresetError(f"{spec}(...): {_RETURN_FORMS}; got {type(made).__name__} of {len(made)}",
                              key="data.dataset")
        train_ds, val_ds = made
    elif isinstance(made, Mapping):
        unknown = [k for k in made if k not in ("train", "val", "classes")]
        if unknown or "train" not in made or "val" not in made:
            what = (f'key "{unknown[0]}"{did_you_mean(str(unknown[0]), ["train", "val", "classes"])}' if unknown
                    else f"keys {', '.join(map(str, made)) or 'none'}")
            raise PresetError(f"{spec}(...): {_RETURN_FORMS} (and optionally \"classes\"); got a dict with {what}",
                              key="data.dataset")
        train_ds, val_ds, classes = made["train"], made["val"], made.get("classes")
    elif isinstance(made, (Dataset, IterableDataset)) or (
            not isinstance(made, (str, bytes)) and any(hasattr(type(made), m) for m in ("__len__", "__getitem__"))):
        _check_map_style(made, spec, "the dataset")
        train_ds, val_ds = made, False  # one pool: split below
    else:
        raise PresetError(f"{spec}(...): {_RETURN_FORMS}; got {type(made).__name__}", key="data.dataset")
    _check_map_style(train_ds, spec, "the train set")
    if val_ds is not None and val_ds is not False:
        _check_map_style(val_ds, spec, "the val set")
    names = _user_classes(classes, train_ds, spec)
    if val_ds is False:
        train, val = _split(train_ds, train_ds, cfg, seed)
        return train, val, names
    train = _limit(train_ds, cfg.limit, seed)
    val = _limit(val_ds, max(1, cfg.limit // 4) if cfg.limit else 0, seed + 1)
    return train, val, names


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _map_style(ds) -> str | None:
    """None when `ds` is a map-style dataset, else what it lacks."""
    if isinstance(ds, IterableDataset):
        return f"an IterableDataset ({type(ds).__name__})"
    if isinstance(ds, (str, bytes, Mapping)) or ds is None:
        return f"a {type(ds).__name__}"
    if type(ds) in (tuple, list):  # samples, not a dataset: (train, val) of two samples would look like one
        return (f"a {type(ds).__name__} of {len(ds)} (samples? wrap them in a Dataset, e.g."
                " torch.utils.data.TensorDataset)")
    kind = type(ds)
    missing = [m for m in ("__len__", "__getitem__") if not hasattr(kind, m)]
    if missing:
        return f"a {kind.__name__} without {' and '.join(missing)}"
    return None


def _check_map_style(ds, spec: str, which: str) -> None:
    problem = _map_style(ds)
    if problem is not None:
        raise PresetError(f"{spec}(...): {which} is {problem}; a map-style Dataset (with __len__ and __getitem__)"
                          " is needed", key="data.dataset")


def _user_classes(classes: Any, train_ds, spec: str) -> list[str]:
    if classes is None:
        for ds in (train_ds, getattr(train_ds, "dataset", None)):  # a Subset (random_split) keeps .dataset
            names = getattr(ds, "classes", None) if ds is not None else None
            if names is not None and not isinstance(names, (str, bytes)):
                try:
                    return [str(c) for c in names]
                except TypeError:
                    pass
        return []
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 0:
        return [str(i) for i in range(classes)]
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    raise PresetError(f'{spec}(...): "classes" must be a list of names or a count, got {type(classes).__name__}',
                      key="data.dataset")


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


def make_loaders(cfg: DataSection, seed: int, device: torch.device, accumulate: int = 1, rank: int = 0,
                 world: int = 1, datasets: tuple | None = None) -> DataParts:
    """The run's data. `accumulate` (train.accumulate): batches per optimizer step; the training
    batches then come in whole steps (see EpochBatches). `rank`/`world`: this process's shard of
    every global batch (batch_size per rank) in a distributed run. `datasets`: (train, val or None,
    class names) given as objects (tui_trainer.fit) instead of `cfg.dataset`."""
    collate_fn = _collate(cfg)
    if datasets is not None:
        train_ds, val_ds, classes = datasets
        for ds, which in ((train_ds, "the train set"), (val_ds, "the val set")):
            if ds is not None:
                _check_map_style(ds, "your Dataset", which)
    else:
        train_ds, val_ds, classes = load_datasets(cfg, seed)
    if len(train_ds) == 0:
        raise UserError("the training set is empty; check data.root, data.limit and data.val_fraction",
                        key="data")
    drop_last = len(train_ds) > cfg.batch_size  # a last batch of 1 breaks BatchNorm
    batches = EpochBatches(len(train_ds), cfg.batch_size, seed, shuffle=True, drop_last=drop_last,
                           accumulate=accumulate, rank=rank, world=world)
    if batches.steps_per_epoch == 0:
        n = batches.batches_per_epoch
        raise UserError(f"accumulate = {accumulate} needs at least {accumulate} batches per epoch; the training set"
                        f" gives {n} batch{'es' if n != 1 else ''} of {cfg.batch_size} (lower it, or data.batch_size)",
                        key="train.accumulate")
    common = dict(
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # worker seeds; keeps the global RNG untouched
        worker_init_fn=_worker_signals if cfg.num_workers > 0 else None,
    )
    if collate_fn is not None:
        common["collate_fn"] = collate_fn
    val_batches = None
    if val_ds is not None and len(val_ds) > 0:
        val_batches = EpochBatches(len(val_ds), cfg.val_batch_size or cfg.batch_size, seed, False, False,
                                   rank=rank, world=world, even=False)  # every sample on exactly one rank
    n = min(cfg.batch_size, 8)
    batch = None
    if val_batches is not None:  # the validation set's, for the metrics' check; the user's own: named val_data
        batch = first_batch(val_ds, seed, n, collate_fn, cfg.collate, key="data" if datasets is None else "val_data")
    train_batch = first_batch(train_ds, seed, n, collate_fn, cfg.collate)
    batch = train_batch if batch is None else batch
    if cfg.preload:
        train = PreloadedBatches(train_ds, batches, device, cfg.num_workers)
        val = PreloadedBatches(val_ds, val_batches, device, cfg.num_workers) if val_batches else None
    else:
        train = DataLoader(Keyed(train_ds, seed, cfg.augment), batch_sampler=batches, **common)
        val = DataLoader(Keyed(val_ds, seed, False), batch_sampler=val_batches, **common) if val_batches else None
    sample = sample_target = None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        sample = batch[0]
        sample_target = batch[1] if isinstance(batch[1], torch.Tensor) else None
    n_val = len(val_ds) if val is not None else 0
    name = "your Dataset" if datasets is not None else cfg.dataset if cfg.dataset != "imagefolder" else \
        f"imagefolder {cfg.root}"
    note = f"{name}: {len(train_ds)} train / {n_val} val"
    if classes:
        note += f", {len(classes)} classes"
    elif datasets is None and (not target.is_target(cfg.dataset) or cfg.dataset.startswith("torchvision:")):
        note += ", ? classes"
    if cfg.preload:
        note += f", preloaded to {device.type}"
    return DataParts(train, val, batches, len(classes) or None, classes, sample, note, sample_target,
                     sample_batch=batch, collate_fn=collate_fn, train_batch=train_batch if batch is not train_batch
                     else None)


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


def first_batch(ds, seed: int, n: int = 8, collate_fn=None, collate_name: str | None = None, key: str = "data"):
    """The first `n` samples of `ds` (through Keyed, unaugmented), collated with `collate_fn`
    (default_collate when None), on the CPU. A sample that cannot be read, or samples that cannot be
    collated, are a one-line UserError (`key`, or "data.collate" for the user's collate)."""
    keyed = Keyed(ds, seed, False)
    samples = []
    for i in range(min(n, len(ds))):
        try:
            samples.append(keyed[(0, i)])
        except DataError as exc:
            raise UserError(str(exc), key=key) from None
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's dataset
            raise UserError(f"cannot read sample {_own_index(ds, i)}: {type(exc).__name__}: {_first_line(exc)}",
                            key=key) from None
    try:
        return (collate_fn or default_collate)(samples)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        if collate_fn is not None:
            raise UserError(f"{collate_name or 'the collate function'} failed on the first {len(samples)} samples:"
                            f" {type(exc).__name__}: {_first_line(exc)}", key="data.collate") from None
        raise UserError(f"cannot collate samples into a batch: {_first_line(exc)}; {_sample_shapes(samples)};"
                        " give data.collate", key=key) from None


def _own_index(ds, i: int) -> int:
    """The index the user's dataset saw for index `i` of a split (Subsets of Subsets)."""
    while isinstance(ds, Subset):
        ds, i = ds.dataset, ds.indices[i]
    return int(i)


def _sample_shapes(samples: list) -> str:
    """The shapes that differ between samples: "sample shapes: (3, 28, 28), (3, 30, 28)" (with the
    leaf's path when the samples are structures), else each sample's structure."""
    leaves = [list(_tree_leaves(s)) for s in samples]
    if leaves and all(len(ls) == len(leaves[0]) for ls in leaves):
        for j, (path, _) in enumerate(leaves[0]):
            column = [ls[j][1] for ls in leaves]
            if all(isinstance(v, torch.Tensor) for v in column) and len({tuple(v.shape) for v in column}) > 1:
                where = f" of {path}" if path else ""
                return f"sample shapes{where}: " + ", ".join(str(tuple(v.shape)) for v in column)
    return "samples: " + ", ".join(describe_structure(s) for s in samples)
