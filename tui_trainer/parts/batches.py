"""Batches: the seeded order of a run's batches (EpochBatches, with train.accumulate groups and the
mid-epoch skip a resume needs), the (epoch, index) keys that seed each sample's random transforms
(Keyed), and `data.preload` (PreloadedBatches: the whole set as tensors on the device, any sample
structure). Split from data.py, which builds the datasets; nothing here knows a preset.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tui_trainer.errors import PresetError


class EpochBatches(Sampler):
    """Batches of (epoch, index) keys. The order of epoch `e` depends only on (seed, e).

    `accumulate` (train.accumulate) batches make one optimizer step: `steps_per_epoch` is
    batches_per_epoch // accumulate, and `set_epoch(e, start)` skips the first `start` optimizer
    steps (start * accumulate batches): that is how a resume lands mid-epoch. An epoch yields
    exactly (steps_per_epoch - start) * accumulate batches: a leftover of fewer than `accumulate`
    batches at the end of an epoch is dropped (it would be a partial step). The batches of one step
    are consecutive slices of the epoch's order, so accumulate = 4 with batch_size 8 sees the same
    samples in the same order as accumulate = 1 with batch_size 32.

    Sharding (DistributedDataParallel): `world` ranks, this one `rank`. `batch_size` is the
    PER-RANK batch; the global batch is batch_size * world. The epoch's order (the same permutation
    whatever `world` is) is cut into global batches, and rank r takes the r-th contiguous slice of
    each, so the union of the ranks' batch b is the single-process batch b of batch_size * world,
    in the same order. Every rank builds the same order, so no communication is needed, and
    `batches_per_epoch`, `steps_per_epoch`, `len` and `set_epoch(e, start)` (start in optimizer
    steps, the same number on every rank) count this rank's batches, which are the global ones.
    world = 1 is exactly the unsharded sampler.

    A trailing partial global batch (n not a multiple of batch_size * world):
      * drop_last: dropped (any world).
      * even = True (the default; training): with world > 1 it is dropped WHATEVER drop_last says.
        DDP averages the ranks' mean gradients, which is the global mean only when every rank's
        batch has the same size, and every rank must make the same number of steps (each step
        is a collective). Every rank then yields the same number of batches, all of batch_size.
      * even = False (validation: shuffle=False, drop_last=False): kept, and split as evenly as
        possible in contiguous slices (ranks 0..m % world - 1 get one sample more), so every sample
        goes to exactly one rank and sums / counts all-reduced across ranks are exact. A rank
        whose share is empty yields no batch for it (never an empty batch), so ranks may make
        different numbers of batches (by one at most): fine for validation, which has no
        collective per batch, only one all_reduce at the end. Training must not use it; uneven
        shards with accumulate > 1 are refused (steps would differ between ranks).
    With world = 1, `even` changes nothing: the partial batch is kept unless drop_last."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool, accumulate: int = 1,
                 rank: int = 0, world: int = 1, even: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.accumulate = max(1, int(accumulate))
        self.rank, self.world, self.even = rank, world, even
        if world > 1 and not even and not drop_last and self.accumulate > 1:
            raise ValueError("uneven shards (even = False) are for validation; with accumulate > 1 the ranks"
                             " could make different numbers of optimizer steps")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`, from optimizer step `start` of it (the same `start` on every rank)."""
        self.epoch, self.start = epoch, start

    @property
    def global_batch_size(self) -> int:
        """Samples per batch over all ranks: batch_size * world."""
        return self.batch_size * self.world

    def _tail(self) -> tuple[int, int, int]:
        """(full global batches, this rank's first index and size of the kept partial last batch);
        size 0 when there is none or it is dropped."""
        full, left = divmod(self.n, self.global_batch_size)
        if left == 0 or self.drop_last or (self.even and self.world > 1):
            return full, 0, 0
        q, r = divmod(left, self.world)
        lo = full * self.global_batch_size + self.rank * q + min(self.rank, r)
        return full, lo, q + (1 if self.rank < r else 0)

    @property
    def batches_per_epoch(self) -> int:
        """This rank's batches per epoch (with even shards, the number of global batches)."""
        full, _, size = self._tail()
        return full + (1 if size > 0 else 0)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.batches_per_epoch // self.accumulate

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start) * self.accumulate

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        full, tail_lo, tail_size = self._tail()
        step = self.global_batch_size
        offset = self.rank * self.batch_size
        for b in range(self.start * self.accumulate, self.steps_per_epoch * self.accumulate):
            lo, size = (b * step + offset, self.batch_size) if b < full else (tail_lo, tail_size)
            yield [(self.epoch, i) for i in order[lo : lo + size]]


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


# --------------------------------------------------------------------------- sample structures


def _tree_map(fn, tree):
    """`fn` on every leaf of nested tuples / lists / dicts (named tuples keep their type)."""
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_tree_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return fn(tree)


def _tree_cat(chunks: list):
    """Leaf-wise torch.cat of collated chunks that share one structure."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, Mapping):
        return {k: _tree_cat([c[k] for c in chunks]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_tree_cat([c[i] for c in chunks]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_cat([c[i] for c in chunks]) for i in range(len(first)))
    raise PresetError(f"a preloaded sample must hold tensors and numbers only; it holds a {type(first).__name__};"
                      " set preload = false", key="data.preload")


def _tree_leaves(tree, path: str = ""):
    """(path, leaf) pairs in order; path like "image" or "[0]" or "inputs.mask"."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _tree_leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            yield from _tree_leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def describe_structure(batch, limit: int = 12) -> str:
    """A batch's (or a sample's) structure in one line: "dict(image: (8, 1, 28, 28) float32, label:
    (8,) int64)", "tuple((8, 3, 64, 64) float32, (8,) int64)"; numbers are "int"/"float", other
    leaves their type name. Containers show their first `limit` entries, then "...". """
    if isinstance(batch, torch.Tensor):
        return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, Mapping):
        items = [f"{k}: {describe_structure(v, limit)}" for k, v in list(batch.items())[:limit]]
        more = ", ..." if len(batch) > limit else ""
        return f"{type(batch).__name__ if type(batch) is not dict else 'dict'}({', '.join(items)}{more})"
    if isinstance(batch, (tuple, list)):
        items = [describe_structure(v, limit) for v in list(batch)[:limit]]
        more = ", ..." if len(batch) > limit else ""
        return f"{type(batch).__name__}({', '.join(items)}{more})"
    if batch is None:
        return "None"
    return type(batch).__name__


class PreloadedBatches:
    """`data.preload`: every sample transformed once and kept as tensors on the training device; a
    batch is one index into them. Any sample structure (tensors, numbers, nested tuples / lists /
    dicts) works: the set is collated in chunks with torch's default_collate, concatenated leaf by
    leaf, and a batch is `index_select` on each leaf, with the structure a DataLoader would give.
    (input, target) samples keep the fast path (a tuple of two tensors). Batches come in the order
    of `batches` (the same EpochBatches a DataLoader would use), so seeding and mid-epoch resume are
    unchanged."""

    def __init__(self, dataset, batches: EpochBatches, device: torch.device, num_workers: int = 0):
        chunks = list(DataLoader(dataset, batch_size=256, num_workers=num_workers))  # index order, once
        first = chunks[0] if chunks else None
        self.pair = (isinstance(first, (tuple, list)) and not hasattr(first, "_fields") and len(first) == 2
                     and isinstance(first[0], torch.Tensor) and isinstance(first[1], torch.Tensor))
        if self.pair:  # (input, target): exactly as before generalising
            xs, ys = [], []
            for x, y in chunks:
                xs.append(x)
                ys.append(torch.as_tensor(y))
            self.x = torch.cat(xs).to(device)
            self.y = torch.cat(ys).to(device)
            self.data = None
            self.device = self.x.device
        else:
            self.data = _tree_map(lambda t: t.to(device), _tree_cat(chunks)) if chunks else None
            self.device = torch.device(device)
        # a flat dict of tensors ({"image": ..., "label": ...}), the common non-pair sample: a
        # comprehension over its items, without the tree walk (about 1.7 us a batch saved)
        self.flat = (list(self.data.items()) if type(self.data) is dict
                     and all(isinstance(v, torch.Tensor) for v in self.data.values()) else None)
        self.batch_sampler = batches

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        keys = list(self.batch_sampler)
        if not keys:
            return
        # one index tensor per epoch, copied to the device once; a batch is a slice of it
        order = torch.tensor([i for batch in keys for _, i in batch]).to(self.device)
        start = 0
        for batch in keys:
            idx = order[start : start + len(batch)]
            start += len(batch)
            if self.pair:
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
            elif self.flat is not None:
                yield {k: v.index_select(0, idx) for k, v in self.flat}
            else:
                yield _tree_map(lambda t: t.index_select(0, idx), self.data)
