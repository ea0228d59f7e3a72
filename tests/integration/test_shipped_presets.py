"""The presets of 'bring your own dataset, step and metrics' run as shipped (in a tiny form: a slice
of the data, two epochs), with the metric keys their epochs must carry; and the example pieces
they name (examples/models.py, losses.py, steps.py, callbacks.py) on their own."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.losses import DiceLoss
from examples.models import mlp, tiny_unet, two_input_net
from examples.steps import two_inputs_step
from tests.helpers.engine import run
from tui_trainer.engine.events import EpochEnd, LrChanged

PRESETS = Path(__file__).resolve().parents[2] / "presets"

# preset -> (tiny overrides, EpochEnd.metrics keys, whether val_acc is measured)
CASES = {
    "digits_segmentation_dice": (("data.limit=96",), {"val_dice", "val_iou"}, False),
    "diabetes_regression": (("data.limit=128",), {"val_mae", "val_rmse", "val_r2"}, False),
    "digits_mlp": (("data.limit=256",), {"val_f1"}, True),  # accuracy is val_acc, in its own field
    "two_inputs_custom_step": (("data.kwargs.n=160",), set(), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_preset_runs_tiny(name, tmp_path):
    overrides, keys, has_acc = CASES[name]
    out = run(PRESETS / f"{name}.toml", "train.epochs=2", "train.log_every=1", *overrides, run_dir=tmp_path / name)
    assert out.final.status == "completed", out.final
    epochs = out.of(EpochEnd)
    assert [e.epoch for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e.metrics) == keys, e.metrics
        assert all(v is not None and math.isfinite(v) for v in e.metrics.values()), e.metrics
        assert e.val_loss is not None and math.isfinite(e.val_loss)
        assert e.train_loss is not None and math.isfinite(e.train_loss)
        if has_acc:
            assert e.val_acc is not None and 0.0 <= e.val_acc <= 1.0
        else:
            assert e.val_acc is None
        assert e.value is not None and math.isfinite(e.value)  # the monitored metric (val_dice, val_mae, val_acc)


def test_stop_at_loss_callback_stops_after_validation(tmp_path):
    out = run(PRESETS / "two_inputs_custom_step.toml", "data.kwargs.n=160", "train.epochs=3",
              'callbacks=[{ target = "examples.callbacks:StopAtLoss", threshold = 1e9 }]', run_dir=tmp_path)
    assert out.final.status == "stopped", out.final
    assert [e.epoch for e in out.of(EpochEnd)] == [1]


def test_stop_at_loss_halves_the_lr_when_its_epoch_starts(tmp_path):
    # 128 training samples in batches of 32: epoch 1 (0-based, as the hook counts) starts after step 4
    out = run(PRESETS / "two_inputs_custom_step.toml", "data.kwargs.n=160", "train.epochs=2",
              'callbacks=[{ target = "examples.callbacks:StopAtLoss", threshold = 0.0, halve_lr_at = 1 }]',
              run_dir=tmp_path)
    assert out.final.status == "completed", out.final
    assert [(e.step, e.lrs) for e in out.of(LrChanged)] == [(4, (0.0015,))]


def _dice_loss_numpy(logits: np.ndarray, target: np.ndarray, smooth: float, ce_weight: float) -> float:
    n, c, h, w = logits.shape
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    one_hot = np.stack([(target == k) for k in range(c)], axis=1).astype(np.float64)
    dice = [(2 * (p[:, k] * one_hot[:, k]).sum() + smooth) / (p[:, k].sum() + one_hot[:, k].sum() + smooth)
            for k in range(c)]
    loss = 1 - float(np.mean(dice))
    if ce_weight:
        logp = np.log(p)
        picked = np.take_along_axis(logp, target[:, None], axis=1)
        loss += ce_weight * float(-picked.mean())
    return loss


@pytest.mark.parametrize("smooth, ce_weight", [(1.0, 0.0), (1e-6, 0.0), (1.0, 0.5)])
def test_dice_loss_matches_numpy(smooth, ce_weight):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 4), generator=gen)
    got = DiceLoss(smooth=smooth, ce_weight=ce_weight)(logits, target)
    assert got.dim() == 0
    want = _dice_loss_numpy(logits.numpy(), target.numpy(), smooth, ce_weight)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_dice_loss_is_zero_for_a_confident_exact_prediction():
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).double() * 100
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(0.0, abs=1e-9)


def test_example_models_and_step_shapes():
    with torch.no_grad():
        assert tiny_unet()(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)
        assert tiny_unet(in_channels=3, num_classes=5, width=4)(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16, 16)
        assert mlp()(torch.randn(3, 10)).shape == (3, 1)
        assert mlp(in_features=784, hidden=[32], out_features=10, dropout=0.2)(torch.randn(3, 784)).shape == (3, 10)
        net = two_input_net(num_classes=4)
        assert net(torch.randn(3, 1, 8, 8), torch.randn(3, 4)).shape == (3, 4)
        batch = {"image": torch.randn(3, 1, 8, 8), "features": torch.randn(3, 4), "label": torch.tensor([0, 3, 1])}
        result = two_inputs_step(net, batch, torch.nn.CrossEntropyLoss())
    assert set(result) == {"loss", "outputs", "targets"}
    assert result["outputs"].shape == (3, 4) and result["loss"].dim() == 0
    assert result["targets"] is batch["label"]
