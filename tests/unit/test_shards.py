"""EpochBatches sharded over DDP ranks (issue 13): one EpochBatches per rank, no processes. Training
shards are disjoint, equal-sized, and together are the single-process batch of batch_size * world;
accumulate and set_epoch's skip hold on every rank; validation shards cover every sample once;
world = 1 is the sampler as it was."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tui_trainer.parts.batches import EpochBatches

FAST = settings(derandomize=True, deadline=None, max_examples=120)


def _old_batches(n, batch_size, seed, shuffle, drop_last, accumulate, epoch, start):
    """EpochBatches before sharding (commit 1146bf4), verbatim logic: the world = 1 reference."""
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    steps = per_epoch // accumulate
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    batches = [[(epoch, i) for i in order[b * batch_size : (b + 1) * batch_size]]
               for b in range(start * accumulate, steps * accumulate)]
    return per_epoch, steps, batches


def _ranks(n, batch_size, world, **kw):
    return [EpochBatches(n, batch_size, rank=r, world=world, **kw) for r in range(world)]


def _run(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


# --------------------------------------------------------------------------- world = 1


@FAST
@given(n=st.integers(0, 90), batch_size=st.integers(1, 20), seed=st.integers(0, 5), shuffle=st.booleans(),
       drop_last=st.booleans(), accumulate=st.integers(1, 4), epoch=st.integers(0, 3), start=st.integers(0, 4),
       even=st.booleans())
def test_world_one_is_the_sampler_as_it_was(n, batch_size, seed, shuffle, drop_last, accumulate, epoch, start, even):
    new = EpochBatches(n, batch_size, seed, shuffle, drop_last, accumulate, rank=0, world=1, even=even)
    per_epoch, steps, batches = _old_batches(n, batch_size, seed, shuffle, drop_last, accumulate, epoch, start)
    new.set_epoch(epoch, start)
    assert (new.batches_per_epoch, new.steps_per_epoch) == (per_epoch, steps)
    assert list(new) == batches
    assert len(new) == len(batches)


def test_world_one_by_hand():
    b = EpochBatches(10, 4, seed=0, shuffle=False, drop_last=False)
    assert [[i for _, i in batch] for batch in b] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    b = EpochBatches(10, 4, seed=0, shuffle=False, drop_last=True)
    assert len(b) == 2 and [[i for _, i in batch] for batch in b] == [[0, 1, 2, 3], [4, 5, 6, 7]]


# --------------------------------------------------------------------------- training shards


@FAST
@given(n=st.integers(0, 120), batch_size=st.integers(1, 12), world=st.integers(2, 4), seed=st.integers(0, 3),
       drop_last=st.booleans(), accumulate=st.integers(1, 3), epoch=st.integers(0, 3))
def test_training_shards_are_the_big_batch_cut_by_rank(n, batch_size, world, seed, drop_last, accumulate, epoch):
    ranks = _ranks(n, batch_size, world, seed=seed, shuffle=True, drop_last=drop_last, accumulate=accumulate)
    # the single process with the global batch, partial last batch dropped (as with world > 1)
    one = EpochBatches(n, batch_size * world, seed, shuffle=True, drop_last=True, accumulate=accumulate)
    whole = _run(one, epoch)
    shards = [_run(r, epoch) for r in ranks]
    steps = n // (batch_size * world) // accumulate
    for r in ranks:
        assert r.global_batch_size == batch_size * world
        assert r.batches_per_epoch == n // (batch_size * world), "the trailing partial global batch is dropped"
        assert r.steps_per_epoch == one.steps_per_epoch == steps
        assert len(r) == len(one) == steps * accumulate
    for b, big in enumerate(whole):
        parts = [shard[b] for shard in shards]
        assert all(len(p) == batch_size for p in parts), "equal-sized on every rank"
        assert [key for p in parts for key in p] == big, "rank r's slice r of the global batch, in order"
    assert all(len(shard) == len(whole) for shard in shards)
    keys = [key for shard in shards for batch in shard for key in batch]
    assert len(keys) == len(set(keys)), "the ranks' shards are disjoint"


def test_two_ranks_of_16_are_one_process_of_32():
    """The issue's check: 2 ranks x batch 16 against 1 process x batch 32."""
    r0, r1 = _ranks(100, 16, 2, seed=7, shuffle=True, drop_last=False)  # drop_last ignored: 3 global batches
    one = EpochBatches(100, 32, 7, shuffle=True, drop_last=True)
    for epoch in range(3):
        a, b, big = _run(r0, epoch), _run(r1, epoch), _run(one, epoch)
        assert len(a) == len(b) == len(big) == 3
        assert [x + y for x, y in zip(a, b)] == big
        assert all(len(x) == len(y) == 16 for x, y in zip(a, b))
    assert _run(r0, 0) != _run(r0, 1), "each epoch its own order"


@FAST
@given(n=st.integers(0, 150), batch_size=st.integers(1, 8), world=st.integers(1, 4), accumulate=st.integers(1, 4),
       epoch=st.integers(0, 3), start=st.integers(0, 6))
def test_set_epoch_skips_the_same_steps_on_every_rank(n, batch_size, world, accumulate, epoch, start):
    ranks = _ranks(n, batch_size, world, seed=11, shuffle=True, drop_last=True, accumulate=accumulate)
    steps = ranks[0].steps_per_epoch
    for r in ranks:
        assert r.steps_per_epoch == steps
        full = _run(r, epoch)
        tail = _run(r, epoch, start)
        assert len(r) == len(tail) == max(0, steps - start) * accumulate
        assert tail == full[min(start, steps) * accumulate :], "the rest is the tail of the unskipped epoch"
    # resumed ranks together are still the resumed single process of the global batch
    one = EpochBatches(n, batch_size * world, 11, shuffle=True, drop_last=True, accumulate=accumulate)
    big = _run(one, epoch, start)
    shards = [_run(r, epoch, start) for r in ranks]
    assert [[key for s in shards for key in s[b]] for b in range(len(big))] == big


def test_accumulated_shards_see_the_accumulated_single_process_samples():
    """2 ranks x batch 4 x accumulate 4 = 1 process x batch 32: same samples per optimizer step."""
    ranks = _ranks(110, 4, 2, seed=3, shuffle=True, drop_last=False, accumulate=4)
    big = EpochBatches(110, 32, 3, shuffle=True, drop_last=True)
    assert [r.steps_per_epoch for r in ranks] == [3, 3] and big.steps_per_epoch == 3  # 13 global batches of 8
    for epoch, start in [(0, 0), (1, 1), (2, 3)]:
        shards = [_run(r, epoch, start) for r in ranks]
        steps = _run(big, epoch, start)
        for k, step in enumerate(steps):
            per_step = [key for s in shards for batch in s[4 * k : 4 * k + 4] for key in batch]
            assert sorted(per_step) == sorted(step)


# --------------------------------------------------------------------------- validation shards


@FAST
@given(n=st.integers(0, 100), batch_size=st.integers(1, 10), world=st.integers(1, 5), shuffle=st.booleans())
def test_validation_shards_cover_every_sample_exactly_once(n, batch_size, world, shuffle):
    ranks = _ranks(n, batch_size, world, seed=2, shuffle=shuffle, drop_last=False, even=False)
    shards = [_run(r, 1) for r in ranks]
    keys = sorted(key for shard in shards for batch in shard for key in batch)
    assert keys == [(1, i) for i in range(n)]
    for r, shard in zip(ranks, shards):
        assert all(batch for batch in shard), "never an empty batch"
        assert len(r) == r.batches_per_epoch == len(shard)
        assert all(len(batch) == batch_size for batch in shard[: n // (batch_size * world)])
    sizes = [sum(len(b) for b in shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1, "the last global batch is split as evenly as possible"
    counts = [len(shard) for shard in shards]
    assert max(counts) - min(counts) <= 1


def test_validation_last_global_batch_by_hand():
    # 10 samples, 2 ranks x 4: one full global batch of 8, then 2 left, one per rank
    r0, r1 = _ranks(10, 4, 2, seed=0, shuffle=False, drop_last=False, even=False)
    assert [[i for _, i in b] for b in r0] == [[0, 1, 2, 3], [8]]
    assert [[i for _, i in b] for b in r1] == [[4, 5, 6, 7], [9]]
    # 9 samples, 3 ranks x 2: one global batch of 6, then 3 left, one each; 7 samples: rank 1 and 2 get none
    assert [[[i for _, i in b] for b in r] for r in _ranks(9, 2, 3, seed=0, shuffle=False, drop_last=False,
                                                              even=False)] == [[[0, 1], [6]], [[2, 3], [7]],
                                                                               [[4, 5], [8]]]
    shards = [[[i for _, i in b] for b in r] for r in _ranks(7, 2, 3, seed=0, shuffle=False, drop_last=False,
                                                             even=False)]
    assert shards == [[[0, 1], [6]], [[2, 3]], [[4, 5]]], "an empty share yields no batch"
    assert [len(r) for r in _ranks(7, 2, 3, seed=0, shuffle=False, drop_last=False, even=False)] == [2, 1, 1]
    # the same with even = True (the default): the partial global batch is dropped
    assert [len(r) for r in _ranks(7, 2, 3, seed=0, shuffle=False, drop_last=False)] == [1, 1, 1]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        EpochBatches(10, 2, 0, False, False, rank=2, world=2)
    with pytest.raises(ValueError, match="rank 0 of world 0"):
        EpochBatches(10, 2, 0, False, False, rank=0, world=0)
    with pytest.raises(ValueError, match="uneven shards"):
        EpochBatches(10, 2, 0, False, False, accumulate=2, rank=0, world=2, even=False)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches(10, 0, 0, False, False)
