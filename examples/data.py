"""Dataset factories a preset can name as dataset = "examples.data:diabetes". They run offline: the
data is scikit-learn's bundled sets, or made up here.

    [data]
    dataset = "examples.data:digits_segmentation"
    kwargs = { size = 32 }
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class _Tensors(Dataset):
    """Samples are one row of each tensor; a dict of tensors gives dict samples."""

    def __init__(self, *tensors: torch.Tensor, keys: tuple[str, ...] | None = None):
        self.tensors, self.keys = tensors, keys

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int):
        row = tuple(t[i] for t in self.tensors)
        return dict(zip(self.keys, row)) if self.keys else row


def digits_segmentation(size: int = 32, threshold: float = 0.5, seed: int = 0) -> Dataset:
    """Segment the strokes of scikit-learn's handwritten digits (1797 images): a per-pixel
    two-class task (background, stroke).

    Input: (1, size, size) float32, the 8x8 image scaled to [0, 1] (/16), bilinear-upsampled to
    `size`, normalised to mean 0.5 / std 0.5, i.e. (x - 0.5) / 0.5. Target: a (size, size) int64
    mask, the upsampled image (before normalising) thresholded: 1 where it is > `threshold`. So the
    mask is a function of the input, and a small fully convolutional network learns it well.
    One Dataset: the run splits it by data.val_fraction. `seed` is accepted for the contract and
    unused (nothing here is random)."""
    from sklearn.datasets import load_digits

    del seed
    images = torch.tensor(load_digits().images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    up = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    masks = (up[:, 0] > threshold).long()
    ds = _Tensors((up - 0.5) / 0.5, masks)
    ds.classes = ["background", "stroke"]
    return ds


def diabetes(standardize_target: bool = True, seed: int = 0) -> dict[str, Dataset]:
    """scikit-learn's diabetes regression (442 patients, 10 features; the target is a measure of
    disease progression a year later). Returns {"train": ..., "val": ...}, a seeded 80/20 split.

    Samples: (features float32 (10,), target float32 (1,)). The features are standardised with the
    TRAIN set's mean and std (the validation set must not leak into them). With
    `standardize_target` the target is standardised with the train mean/std too, and both datasets
    carry `target_mean` and `target_std` (a prediction p means p * target_std + target_mean).
    Why: the raw target runs from 25 to 346; an MLP whose output starts near 0 with unit-scale
    weights needs many steps (or a big lr) just to reach that scale, and learns a unit-scale target
    far faster. R^2 is unchanged by the scaling (an affine map of target and prediction alike);
    MAE, MSE and RMSE are then in units of the target's std (multiply MAE and RMSE by target_std,
    MSE by target_std ** 2, for the original units)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(x) * 0.2)
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    mean, std = x[train_idx].mean(0), x[train_idx].std(0)
    x = (x - mean) / std
    target_mean, target_std = 0.0, 1.0
    if standardize_target:
        target_mean, target_std = y[train_idx].mean().item(), y[train_idx].std().item()
        y = (y - target_mean) / target_std
    parts = {"train": _Tensors(x[train_idx], y[train_idx]), "val": _Tensors(x[val_idx], y[val_idx])}
    if standardize_target:
        for ds in parts.values():
            ds.target_mean, ds.target_std = target_mean, target_std
    return parts


def two_inputs(n: int = 512, seed: int = 0) -> Dataset:
    """A made-up task with two inputs: each sample is {"image": (1, 8, 8) float32, "features": (4,)
    float32, "label": int64 scalar}. The label is 2 * a + b: `a` says whether the image's top half
    is brighter than its bottom half, `b` whether the features lean along a fixed direction. Each
    input alone tells only half of the label (at best 50% accuracy), so a model needs both. Four
    classes (`.classes`). One Dataset: the run splits it by data.val_fraction."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=gen)
    b = torch.randint(0, 2, (n,), generator=gen)
    image = torch.randn(n, 1, 8, 8, generator=gen) * 0.5
    sign = (a * 2 - 1).float().view(n, 1, 1, 1)
    image[:, :, :4] += 0.5 * sign
    image[:, :, 4:] -= 0.5 * sign
    direction = torch.tensor([1.0, -1.0, 0.5, 0.0])
    features = torch.randn(n, 4, generator=gen) * 0.5 + (b * 2 - 1).float().unsqueeze(1) * direction
    ds = _Tensors(image, features, a * 2 + b, keys=("image", "features", "label"))
    ds.classes = ["bottom, minus", "bottom, plus", "top, minus", "top, plus"]
    return ds
