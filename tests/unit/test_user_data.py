"""data.dataset = "package.module:make" (issue 12): the return forms, kwargs, the one-line errors,
data.collate, dict samples (preloaded too), train.accumulate's batch grouping, the real
sample_batch, channels / normalize / flatten, describe_structure, and examples/data.py."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures import user_data
from tui_trainer import config
from tui_trainer.errors import PresetError, UserError
from tui_trainer.parts.batches import EpochBatches, describe_structure
from tui_trainer.parts.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Digits,
    _image_transform,
    make_loaders,
)

CPU = torch.device("cpu")
FIX = "tests.fixtures.user_data"


def data(dataset: str, **kw) -> config.DataSection:
    return config.DataSection(dataset=f"{FIX}:{dataset}" if ":" not in dataset and dataset != "digits" else dataset,
                              **kw)


def loaders(dataset: str, seed: int = 0, accumulate: int = 1, **kw):
    kw.setdefault("batch_size", 4)
    return make_loaders(data(dataset, **kw), seed, CPU, accumulate=accumulate)


def error(exc_type, dataset: str, **kw) -> str:
    with pytest.raises(exc_type) as info:
        loaders(dataset, **kw)
    return str(info.value)


# --------------------------------------------------------------------------- return forms


def test_one_dataset_is_split_by_val_fraction_and_gets_the_seed():
    parts = loaders("one", seed=7, val_fraction=0.25)
    assert user_data.CALLS[-1] == {"n": 40, "seed": 7}
    assert len(parts.train.dataset) == 30 and len(parts.val.dataset) == 10
    assert parts.classes == ["a", "b"] and parts.num_classes == 2
    assert parts.note == f"{FIX}:one: 30 train / 10 val, 2 classes"
    again = loaders("one", seed=7, val_fraction=0.25)
    assert parts.val.dataset.dataset.indices == again.val.dataset.dataset.indices, "the split is seeded"
    other = loaders("one", seed=8, val_fraction=0.25)
    assert parts.val.dataset.dataset.indices != other.val.dataset.dataset.indices


def test_a_seed_in_kwargs_wins_and_limit_applies():
    parts = loaders("one", seed=7, kwargs={"seed": 3, "n": 100}, limit=20, val_fraction=0.25)
    assert user_data.CALLS[-1] == {"n": 100, "seed": 3}
    assert len(parts.train.dataset) == 15 and len(parts.val.dataset) == 5


def test_a_tuple_is_train_and_val_and_val_fraction_is_not_used():
    parts = loaders("pair_tuple", seed=7, val_fraction=0.5)
    assert user_data.CALLS[-1] == {"n": 40}, "no seed: the factory does not take one"
    assert len(parts.train.dataset) == 40 and len(parts.val.dataset) == 10


def test_a_list_with_no_val():
    parts = loaders("pair_list_no_val", kwargs={"n": 12})
    assert parts.val is None and len(parts.train.dataset) == 12
    assert parts.sample_batch[0].shape == (4, 3), "sample_batch falls back to the training set"


def test_a_dict_with_classes_and_without():
    parts = loaders("as_dict")
    assert parts.classes == ["x", "y", "z"] and parts.num_classes == 3 and len(parts.val.dataset) == 8
    parts = loaders("as_dict", kwargs={"classes": None})
    assert parts.classes == ["a", "b"], "the train dataset's .classes"


def test_a_dataset_class_as_the_factory():
    parts = loaders("Pairs", seed=5, kwargs={"n": 20}, val_fraction=0.25)
    assert user_data.CALLS[-1] == {"n": 20, "seed": 5}
    assert len(parts.train.dataset) == 15 and parts.classes == ["a", "b"]


def test_random_split_subsets_keep_the_classes_and_regression_has_none():
    assert loaders("subsets").classes == ["a", "b"]
    parts = loaders("regression")
    assert parts.num_classes is None and parts.classes == []
    assert parts.note == f"{FIX}:regression: 32 train / 8 val"
    x, y = parts.sample_batch
    assert x.shape == (4, 5) and y.shape == (4, 1)
    assert torch.equal(parts.sample, x) and torch.equal(parts.sample_target, y)


# --------------------------------------------------------------------------- errors


def test_kwargs_are_checked_against_the_factory():
    assert error(PresetError, "one", kwargs={"nn": 3}) == (
        'data.kwargs.nn: one takes no argument "nn"; did you mean "n"?')
    assert error(PresetError, "needs_root") == (
        "data.kwargs.root: needs_root needs root; add root = ... to [data.kwargs]")
    assert error(PresetError, "Pairs", kwargs={"size": 3}).startswith(
        'data.kwargs.size: Pairs takes no argument "size"')
    assert len(loaders("needs_root", kwargs={"root": "/x", "fold": 2}, val_fraction=0).train.dataset) == 12


@pytest.mark.parametrize("factory, message", [
    ("raises", f"data.dataset: {FIX}:raises(...) raised ValueError: no data for n = 4"),
    ("returns_three", f'data.dataset: {FIX}:returns_three(...): expected a Dataset, (train, val) Datasets or a dict'
                      ' with "train" and "val"; got list of 3'),
    ("returns_int", f'data.dataset: {FIX}:returns_int(...): expected a Dataset, (train, val) Datasets or a dict'
                    ' with "train" and "val"; got int'),
    ("returns_bad_dict", f'data.dataset: {FIX}:returns_bad_dict(...): expected a Dataset, (train, val) Datasets or'
                         ' a dict with "train" and "val" (and optionally "classes"); got a dict with key "valid";'
                         ' did you mean "val"?'),
    ("iterable", f"data.dataset: {FIX}:iterable(...): the dataset is an IterableDataset (Stream); a map-style"
                 " Dataset (with __len__ and __getitem__) is needed"),
    ("no_len", f"data.dataset: {FIX}:no_len(...): the dataset is a NoLen without __len__; a map-style Dataset"
               " (with __len__ and __getitem__) is needed"),
    ("NOT_CALLABLE", f"data.dataset: {FIX}:NOT_CALLABLE is not callable (int); name a function or a Dataset class"),
    ("nope", f'data.dataset: "{FIX}" has no "nope"; did you mean "NoLen"?'),
])
def test_bad_factories_are_one_line_preset_errors(factory, message):
    assert error(PresetError, factory) == message


def test_an_empty_training_set_and_unreadable_samples():
    assert error(UserError, "empty") == ("data: the training set is empty; check data.root, data.limit and"
                                         " data.val_fraction")
    assert error(UserError, "unreadable") == "data: cannot read sample 1: OSError: disk gone at 1", "its own index"


def test_builtin_only_keys_are_refused_where_they_would_be_ignored():
    assert error(PresetError, "one", flatten=True).startswith("data.flatten: applies to the built-in image data")
    assert error(PresetError, "one", channels=1).startswith("data.channels: applies to the built-in")
    with pytest.raises(PresetError, match=r"^data\.kwargs: only a factory dataset"):
        make_loaders(config.DataSection(kwargs={"n": 1}), 0, CPU)


# --------------------------------------------------------------------------- collate


def test_the_collate_function_makes_every_batch():
    parts = loaders("ragged", collate=f"{FIX}:pad_collate", val_fraction=0.0)
    assert parts.collate_fn is user_data.pad_collate
    assert parts.sample_batch[2] == "padded" and parts.sample_batch[0].shape == (4, 3, 30, 28)
    assert parts.sample is None and parts.sample_target is None, "not an (input, target) pair"
    assert all(batch[2] == "padded" for batch in parts.train)
    parts = loaders("ragged", collate=f"{FIX}:pad_collate", val_fraction=0.5, batch_size=2)
    assert all(batch[2] == "padded" for batch in parts.val)


def test_samples_that_do_not_collate_name_their_shapes():
    message = error(UserError, "ragged", val_fraction=0.0, batch_size=3)
    assert message.startswith("data: cannot collate samples into a batch: stack expects each tensor to be equal size")
    assert message.endswith("; sample shapes of [0]: (3, 28, 28), (3, 30, 28), (3, 28, 28); give data.collate")
    assert error(UserError, "ragged", val_fraction=0.0, collate=f"{FIX}:broken_collate") == (
        f"data.collate: {FIX}:broken_collate failed on the first 4 samples: RuntimeError: cannot pad")
    assert error(PresetError, "ragged", collate=f"{FIX}:pad_collate", preload=True).startswith(
        "data.preload: a preloaded set is stacked sample by sample")
    assert error(PresetError, "ragged", collate=f"{FIX}:missing").startswith(f'data.collate: "{FIX}" has no "missing"')


# --------------------------------------------------------------------------- dict samples, preload


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def test_preloaded_dict_samples_equal_the_loaders_batches():
    plain = loaders("dicts", batch_size=8)
    pre = loaders("dicts", batch_size=8, preload=True)
    batch = plain.sample_batch
    assert describe_structure(batch) == ("dict(image: (8, 1, 4, 4) float32, extra: dict(v: (8, 2) int64),"
                                         " label: (8,) int64)")
    assert plain.sample is None and _same(batch, pre.sample_batch)
    for epoch, start in [(0, 0), (1, 0), (1, 2)]:
        plain.train_batches.set_epoch(epoch, start)
        pre.train_batches.set_epoch(epoch, start)
        a, b = list(plain.train), list(pre.train)
        assert len(a) == len(b) == len(pre.train) == 4 - start > 0
        assert all(_same(x, y) for x, y in zip(a, b))
    a, b = list(plain.val), list(pre.val)
    assert len(a) == len(b) == 2 and all(_same(x, y) for x, y in zip(a, b))


def test_describe_structure():
    assert describe_structure((torch.zeros(8, 3, 64, 64), torch.zeros(8, dtype=torch.long))) == (
        "tuple((8, 3, 64, 64) float32, (8,) int64)")
    assert describe_structure([torch.zeros(2), 3, "a", None, 1.5]) == "list((2,) float32, int, str, None, float)"
    assert describe_structure({str(i): i for i in range(14)}, limit=2) == "dict(0: int, 1: int, ...)"


# --------------------------------------------------------------------------- accumulate


def _order(batches: EpochBatches) -> list[int]:
    return [i for batch in batches for _, i in batch]


def test_accumulated_batches_are_the_big_batches_cut_in_order():
    small = EpochBatches(110, 8, seed=3, shuffle=True, drop_last=True, accumulate=4)  # 13 batches: 3 steps + 1
    big = EpochBatches(110, 32, seed=3, shuffle=True, drop_last=True)
    assert (small.batches_per_epoch, small.steps_per_epoch, len(small)) == (13, 3, 12), "the leftover is dropped"
    assert big.steps_per_epoch == big.batches_per_epoch == len(big) == 3
    for epoch, start in [(0, 0), (2, 0), (2, 1), (2, 3)]:
        small.set_epoch(epoch, start)
        big.set_epoch(epoch, start)
        assert len(small) == len(list(small)) == 4 * len(big)
        assert _order(small) == _order(big)


def test_accumulate_through_the_loaders_sees_the_same_samples():
    cfg = dict(dataset="digits", image_size=8, limit=200, val_fraction=0.2)
    small = make_loaders(config.DataSection(**cfg, batch_size=8), 0, CPU, accumulate=4)
    big = make_loaders(config.DataSection(**cfg, batch_size=32), 0, CPU)
    assert small.steps_per_epoch == big.steps_per_epoch == 5 and len(small.train) == 20
    small.train_batches.set_epoch(1, 2)
    big.train_batches.set_epoch(1, 2)
    xs = [x for x, _ in small.train]
    for k, (x, y) in enumerate(big.train):
        assert torch.equal(torch.cat(xs[4 * k : 4 * k + 4]), x)
    with pytest.raises(UserError) as info:
        make_loaders(config.DataSection(**cfg, batch_size=32), 0, CPU, accumulate=8)
    assert str(info.value) == ("train.accumulate: accumulate = 8 needs at least 8 batches per epoch; the training set"
                               " gives 5 batches of 32 (lower it, or data.batch_size)")


# --------------------------------------------------------------------------- channels / normalize / flatten


def test_digits_defaults_are_unchanged_and_the_new_keys_shape_the_input():
    plain = Digits(8, normalize="none")
    raw, y = plain[5]
    assert raw.shape == (3, 8, 8) and raw.is_contiguous() and torch.equal(raw[0], raw[2]) and 0 <= raw.min()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x, y2 = Digits(8)[5]
    assert torch.equal(x, (raw[0].expand(3, -1, -1) - mean) / std) and y == y2, "ImageNet as before"
    grey, _ = Digits(8, channels=1)[5]
    assert grey.shape == (1, 8, 8) and torch.allclose(grey, (raw[:1] - 0.449) / 0.226, atol=1e-6)
    custom, _ = Digits(8, channels=1, normalize=config.Normalize(mean=[0.5], std=[0.25]))[5]
    assert torch.allclose(custom, (raw[:1] - 0.5) / 0.25)
    flat, _ = Digits(8, channels=1, flatten=True)[5]
    assert flat.shape == (64,) and flat.is_contiguous() and torch.equal(flat, grey.reshape(-1))
    with pytest.raises(PresetError) as info:
        Digits(8, channels=1, normalize=config.Normalize(mean=[0.5] * 3, std=[0.2] * 3))
    assert str(info.value) == "data.normalize: mean has 3 values and std 3, but data.channels = 1; give 1 of each"


def test_the_keys_reach_digits_through_the_preset():
    cfg = config.DataSection(image_size=28, channels=1, flatten=True, batch_size=16, limit=100,
                             normalize={"mean": [0.1307], "std": [0.3081]})
    parts = make_loaders(cfg, 0, CPU)
    assert parts.sample.shape == (8, 784) and parts.sample_target.shape == (8,)
    with pytest.raises(PresetError, match=r"^data\.normalize: mean has 2 values and std 2, but data.channels = 3"):
        make_loaders(config.DataSection(normalize={"mean": [0.1, 0.2], "std": [0.3, 0.3]}), 0, CPU)


def test_image_transform_channels_normalize_flatten():
    from PIL import Image

    image = Image.new("RGB", (12, 10), (255, 0, 0))
    rgb = _image_transform(8, False)(image)
    assert rgb.shape == (3, 8, 8) and torch.allclose(rgb[0], torch.tensor((1 - 0.485) / 0.229))
    grey = _image_transform(8, False, channels=1, normalize="none")(image)
    assert grey.shape == (1, 8, 8) and 0 < grey.max() < 1, "red is a dark grey"
    flat = _image_transform(8, False, channels=1, normalize="none", flatten=True)(image)
    assert type(flat) is torch.Tensor and flat.shape == (64,) and torch.equal(flat, grey.reshape(-1))


# --------------------------------------------------------------------------- examples/data.py


def test_example_digits_segmentation():
    from examples.data import digits_segmentation

    ds = digits_segmentation(size=16)
    x, mask = ds[3]
    assert len(ds) == 1797 and x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert mask.shape == (16, 16) and mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0, 1}
    assert torch.equal(mask, (x[0] * 0.5 + 0.5 > 0.5).long()), "the mask is the upsampled image thresholded"
    parts = make_loaders(config.DataSection(dataset="examples.data:digits_segmentation", kwargs={"size": 16},
                                            batch_size=8, limit=100), 0, CPU)
    assert parts.classes == ["background", "stroke"] and parts.sample_target.shape == (8, 16, 16)


def test_example_diabetes():
    from examples.data import diabetes

    parts = diabetes()
    train, val = parts["train"], parts["val"]
    assert (len(train), len(val)) == (354, 88)
    x, y = train[0]
    assert x.shape == (10,) and y.shape == (1,) and x.dtype == y.dtype == torch.float32
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.stack([train[i][1] for i in range(len(train))])
    assert torch.allclose(xs.mean(0), torch.zeros(10), atol=1e-4) and torch.allclose(xs.std(0), torch.ones(10))
    assert abs(ys.mean().item()) < 1e-4 and abs(ys.std().item() - 1) < 1e-4
    assert 140 < train.target_mean < 165 and 70 < train.target_std < 85 and val.target_std == train.target_std
    raw = diabetes(standardize_target=False)["train"]
    assert torch.allclose(raw[0][1], y * train.target_std + train.target_mean) and not hasattr(raw, "target_std")
    assert diabetes(seed=1)["val"][0][1] != val[0][1], "the split is seeded"
    loaded = make_loaders(config.DataSection(dataset="examples.data:diabetes", batch_size=32), 0, CPU)
    assert loaded.num_classes is None and loaded.note == "examples.data:diabetes: 354 train / 88 val"


def test_example_two_inputs_needs_both():
    from examples.data import two_inputs

    ds = two_inputs(n=256)
    sample = ds[0]
    assert sample["image"].shape == (1, 8, 8) and sample["features"].shape == (4,)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == () and len(ds.classes) == 4
    images = torch.stack([ds[i]["image"] for i in range(256)])
    features = torch.stack([ds[i]["features"] for i in range(256)])
    labels = torch.stack([ds[i]["label"] for i in range(256)])
    top = (images[:, 0, :4].mean((1, 2)) > images[:, 0, 4:].mean((1, 2))).long()
    plus = (features @ torch.tensor([1.0, -1.0, 0.5, 0.0]) > 0).long()
    assert (top * 2 + plus == labels).float().mean() > 0.9, "both inputs together give the label"
    assert set((labels // 2).tolist()) == {0, 1} and set((labels % 2).tolist()) == {0, 1}
