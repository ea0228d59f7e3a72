"""parts/metrics.py: every built-in against sklearn/numpy on the whole set, fed in uneven batches."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch.overrides import TorchFunctionMode

from tui_trainer.config import MetricSection
from tui_trainer.errors import PresetError
from tui_trainer.parts.metrics import build_metrics, check_metrics

SIZES = (7, 20, 1, 25)  # 53 samples in uneven batches
CPU = torch.device("cpu")


def mean_abs_fn(outputs, targets, scale=1.0):
    """A user metric ("tests.unit.test_metrics:mean_abs_fn")."""
    return scale * (outputs.reshape(-1) - targets.reshape(-1).to(outputs.dtype)).abs().mean()


def top_logit_fn(outputs, targets):
    return outputs.max(1).values.mean()


def cfg(name, **kw) -> MetricSection:
    return MetricSection(name=name, **kw)


class NoHostRead(TorchFunctionMode):
    """Fails on the calls that would read a device value back on the host."""

    FORBIDDEN = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy",
                 "bincount", "masked_select", "unique", "argwhere"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.FORBIDDEN:
            raise AssertionError(f"host read: {name}")
        if name == "__getitem__" and any(isinstance(a, torch.Tensor) and a.dtype == torch.bool
                                         for a in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            raise AssertionError("host read: boolean-mask indexing")
        return func(*args, **(kwargs or {}))


def run(cfgs, outputs, targets, sizes=SIZES, num_classes=None) -> dict[str, float]:
    ms = build_metrics(cfgs, CPU, num_classes=num_classes)
    ms.reset()
    start = 0
    with NoHostRead():
        for n in sizes:
            ms.update(outputs[start:start + n], targets[start:start + n])
            start += n
        values = ms.compute()
    assert start == outputs.shape[0]
    for v in values.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and v.device == CPU and v.dtype == torch.float64
    return {k: float(v) for k, v in values.items()}


@pytest.fixture
def multiclass():
    g = torch.Generator().manual_seed(0)
    n, c = sum(SIZES), 6
    logits = torch.randn(n, c, generator=g)
    logits[:, 5] = -1e4  # class 5: never predicted, and never a target - absent
    targets = torch.randint(0, 4, (n,), generator=g)  # class 4: predicted but never a target
    return logits, targets


def test_classification_matches_sklearn(multiclass):
    logits, targets = multiclass
    pred = logits.argmax(1).numpy()
    y = targets.numpy()
    got = run([cfg("accuracy"), cfg("f1"), cfg("precision"), cfg("recall"), cfg("top_k_accuracy", k=3)],
              logits, targets)
    assert 4 in pred and 5 not in pred
    assert got["val_acc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    for name, fn in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert got[f"val_{name}"] == pytest.approx(fn(y, pred, average="macro", zero_division=0), abs=1e-12), name
    want = skm.top_k_accuracy_score(y, logits.numpy(), k=3, labels=range(6))
    assert got["val_top_k_accuracy"] == pytest.approx(want, abs=1e-12)


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to")
def test_top_k_is_capped_at_the_classes_and_targets_may_carry_a_trailing_1(multiclass):
    logits, targets = multiclass
    got = run([cfg("top_k_accuracy"), cfg("top_k_accuracy", k=10, label="top10"), cfg("accuracy")],
              logits[:, :4], targets.unsqueeze(1))
    want = skm.top_k_accuracy_score(targets.numpy(), logits[:, :4].numpy(), k=4, labels=range(4))
    assert got["val_top_k_accuracy"] == got["val_top10"] == pytest.approx(want) == 1.0
    assert got["val_acc"] == pytest.approx(skm.accuracy_score(targets.numpy(), logits[:, :4].argmax(1).numpy()))


@pytest.mark.parametrize("out_shape,tgt_shape,tgt_dtype", [
    ((53, 1), (53,), torch.float32), ((53,), (53, 1), torch.long), ((53,), (53,), torch.bool)])
def test_binary_single_logit(out_shape, tgt_shape, tgt_dtype):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(out_shape, generator=g)
    targets = torch.randint(0, 2, tgt_shape, generator=g).to(tgt_dtype)
    pred = (logits.reshape(-1) > 0).long().numpy()
    y = targets.reshape(-1).long().numpy()
    got = run([cfg("accuracy"), cfg("f1"), cfg("precision"), cfg("recall")], logits, targets)
    assert got["val_acc"] == pytest.approx(skm.accuracy_score(y, pred))
    for name, fn in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert got[f"val_{name}"] == pytest.approx(fn(y, pred, average="macro", zero_division=0)), name


def test_ignored_targets_are_not_counted(multiclass):
    logits, targets = multiclass
    targets = targets.clone()
    targets[::5] = -100
    keep = targets.numpy() != -100
    pred, y = logits.argmax(1).numpy()[keep], targets.numpy()[keep]
    got = run([cfg("accuracy"), cfg("f1"), cfg("top_k_accuracy", k=2)], logits, targets)
    assert got["val_acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["val_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert got["val_top_k_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, logits.numpy()[keep], k=2, labels=range(6)))


def _overlap_reference(pred: np.ndarray, y: np.ndarray, classes) -> tuple[float, float]:
    dice, iou = [], []
    for c in classes:
        p, t = pred == c, y == c
        if not p.any() and not t.any():
            continue
        inter = (p & t).sum()
        dice.append(2 * inter / (p.sum() + t.sum()))
        iou.append(inter / (p | t).sum())
    return float(np.mean(dice)), float(np.mean(iou))


def test_dice_iou_multiclass_segmentation():
    g = torch.Generator().manual_seed(2)
    n, c = 11, 5
    logits = torch.randn(n, c, 6, 7, generator=g)
    logits[:, 3] = -1e4  # class 3 absent from predictions and targets: left out of the mean
    targets = torch.randint(0, 3, (n, 6, 7), generator=g)  # class 4: predicted only
    targets[0, 0, :3] = 255  # void: not counted
    keep = targets.numpy() != 255
    pred = logits.argmax(1).numpy()
    dice, iou = _overlap_reference(pred[keep], targets.numpy()[keep], range(1, c))
    got = run([cfg("dice"), cfg("iou"), cfg("accuracy")], logits, targets, sizes=(3, 1, 7))
    assert got["val_dice"] == pytest.approx(dice, abs=1e-12)
    assert got["val_iou"] == pytest.approx(iou, abs=1e-12)
    assert got["val_acc"] == pytest.approx((pred == targets.numpy())[keep].mean())


@pytest.mark.parametrize("out_shape", [(9, 1, 5, 5), (9, 5, 5)])
def test_dice_iou_binary_segmentation(out_shape):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(out_shape, generator=g)
    targets = torch.randint(0, 2, (9, 5, 5), generator=g).float()
    dice, iou = _overlap_reference((logits.reshape(9, 5, 5) > 0).numpy(), targets.numpy() > 0.5, [True])
    got = run([cfg("dice"), cfg("iou")], logits, targets, sizes=(4, 5))
    assert got["val_dice"] == pytest.approx(dice) and got["val_iou"] == pytest.approx(iou)


def test_dice_with_no_foreground_anywhere_is_nan():
    logits = torch.zeros(4, 1, 3, 3) - 1
    got = run([cfg("dice")], logits, torch.zeros(4, 3, 3), sizes=(4,))
    assert math.isnan(got["val_dice"])


@pytest.mark.parametrize("out_shape,tgt_shape", [((53, 3), (53, 3)), ((53, 1), (53,)), ((53,), (53, 1))])
def test_regression_matches_sklearn(out_shape, tgt_shape):
    g = torch.Generator().manual_seed(4)
    y = (torch.randn(tgt_shape, generator=g) * 3 + 100).float()
    out = y.reshape(out_shape) + torch.randn(out_shape, generator=g)
    yy, pp = y.reshape(53, -1).double().numpy(), out.reshape(53, -1).double().numpy()
    got = run([cfg("mae"), cfg("mse"), cfg("rmse"), cfg("r2")], out, y)
    assert got["val_mae"] == pytest.approx(skm.mean_absolute_error(yy, pp), rel=1e-9)
    assert got["val_mse"] == pytest.approx(skm.mean_squared_error(yy, pp), rel=1e-9)
    assert got["val_rmse"] == pytest.approx(float(np.sqrt(np.mean((yy - pp) ** 2))), rel=1e-9)
    assert got["val_r2"] == pytest.approx(skm.r2_score(yy, pp), rel=1e-7)


def test_r2_constant_column_follows_sklearn():
    y = torch.stack([torch.arange(8.0), torch.full((8,), 2.0), torch.full((8,), 5.0)], 1)
    out = y.clone()
    out[:, 0] += 0.5
    out[3, 2] = 6.0  # a constant column missed: 0.0; one hit exactly: 1.0
    got = run([cfg("r2")], out, y, sizes=(3, 5))
    assert got["val_r2"] == pytest.approx(skm.r2_score(y.double().numpy(), out.double().numpy()), rel=1e-9)


def test_user_fn_is_a_batch_size_weighted_mean():
    g = torch.Generator().manual_seed(5)
    out, y = torch.randn(53, generator=g), torch.randn(53, generator=g)
    spec = "tests.unit.test_metrics:mean_abs_fn"
    got = run([cfg(spec), cfg(spec, label="twice", scale=2.0)], out, y)
    want = float((out - y).abs().mean())
    assert got["val_mean_abs_fn"] == pytest.approx(want, rel=1e-6)
    assert got["val_twice"] == pytest.approx(2 * want, rel=1e-6)


def test_goals_for_each_kind():
    spec = "tests.unit.test_metrics:mean_abs_fn"
    goals = check_metrics([cfg("accuracy"), cfg("mae"), cfg("r2"), cfg("iou"), cfg(spec),
                           cfg(spec, label="mine", mode="min"), cfg("f1", label="f1_low", mode="min")])
    assert goals == {"val_acc": "max", "val_mae": "min", "val_r2": "max", "val_iou": "max",
                     "val_mine": "min", "val_f1_low": "min"}


def test_errors_name_the_key():
    with pytest.raises(PresetError, match='unknown metric "acuracy"; did you mean "accuracy"') as err:
        check_metrics([cfg("f1"), cfg("acuracy")])
    assert err.value.key == "metrics[1].name" and "top_k_accuracy" in str(err.value)
    with pytest.raises(PresetError, match='f1 takes no argument "average"') as err:
        check_metrics([cfg("f1", average="micro")])
    assert err.value.key == "metrics[0].average"
    with pytest.raises(PresetError, match="k must be") as err:
        check_metrics([cfg("top_k_accuracy", k=0)])
    with pytest.raises(PresetError, match='has no "nope"'):
        check_metrics([cfg("tests.unit.test_metrics:nope")])
    with pytest.raises(PresetError, match="not callable"):
        check_metrics([cfg("tests.unit.test_metrics:SIZES")])
    with pytest.raises(PresetError, match='takes no argument "scal"; did you mean "scale"') as err:
        check_metrics([cfg("tests.unit.test_metrics:mean_abs_fn", scal=2)])
    assert err.value.key == "metrics[0].scal"


def test_shape_mismatch_names_the_metric_and_shapes():
    ms = build_metrics([cfg("accuracy"), cfg("mse")], CPU)
    with pytest.raises(ValueError, match=r'"accuracy".*\(4, 3\).*\(4, 2\)'):
        ms.update(torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.long))
    ms = build_metrics([cfg("mse")], CPU)
    with pytest.raises(ValueError, match=r'"mse".*\(4, 3\).*\(4,\)'):
        ms.update(torch.randn(4, 3), torch.zeros(4))
    ms = build_metrics([cfg("top_k_accuracy")], CPU)
    with pytest.raises(ValueError, match="C > 1"):
        ms.update(torch.randn(4, 1), torch.zeros(4))


def test_no_data_is_nan_and_reset_clears(multiclass):
    logits, targets = multiclass
    names = ["accuracy", "f1", "dice", "mse", "r2", "tests.unit.test_metrics:mean_abs_fn"]
    ms = build_metrics([cfg(n) for n in names], CPU)
    assert ms.monitors == ["val_acc", "val_f1", "val_dice", "val_mse", "val_r2", "val_mean_abs_fn"]
    assert all(math.isnan(float(v)) for v in ms.compute().values())
    ms.update(logits[:, :1], (targets[:, None] > 1).float())
    ms.reset()
    assert all(math.isnan(float(v)) for v in ms.compute().values())
    values = torch.stack(list(ms.compute().values())).tolist()  # the caller's one read
    assert len(values) == len(names)


def test_state_tensors_sum_across_workers(multiclass):
    """What a distributed run does: all_reduce(SUM) every state tensor, then compute()."""
    logits, targets = multiclass
    cfgs = [cfg("accuracy"), cfg("f1"), cfg("iou"), cfg("tests.unit.test_metrics:top_logit_fn"),
            cfg("top_k_accuracy")]
    whole = run(cfgs, logits, targets)
    a, b = build_metrics(cfgs, CPU), build_metrics(cfgs, CPU)
    a.update(logits[:30], targets[:30])
    b.update(logits[30:40], targets[30:40])
    b.update(logits[40:], targets[40:])
    for ta, tb in zip(a.state_tensors(), b.state_tensors(), strict=True):
        ta += tb
    got = {k: float(v) for k, v in a.compute().items()}
    assert got == pytest.approx(whole, rel=1e-6)  # the fn returns float32


def test_torchmetrics_matches_the_builtin_and_sklearn(multiclass):
    pytest.importorskip("torchmetrics")
    logits, targets = multiclass
    cfgs = [cfg("torchmetrics:MulticlassF1Score"), cfg("f1"), cfg("torchmetrics:MeanSquaredError", label="tm_mse")]
    goals = check_metrics(cfgs)
    assert goals == {"val_multiclass_f1_score": "max", "val_f1": "max", "val_tm_mse": "min"}
    ms = build_metrics(cfgs[:2], CPU, num_classes=6)  # num_classes filled from the data
    assert ms.goals["val_multiclass_f1_score"] == "max"
    for lo, hi in ((0, 7), (7, 27), (27, 53)):
        ms.update(logits[lo:hi], targets[lo:hi])
    got = {k: float(v) for k, v in ms.compute().items()}
    want = skm.f1_score(targets.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert got["val_multiclass_f1_score"] == pytest.approx(want, abs=1e-6)
    assert got["val_f1"] == pytest.approx(want, abs=1e-12)
    # a task wrapper's direction is known once built
    ms = build_metrics([cfg("torchmetrics:F1Score", task="multiclass")], CPU, num_classes=6)
    assert ms.goals == {"val_f1_score": "max"}
    ms.reset()
    assert math.isnan(float(ms.compute()["val_f1_score"]))


def test_torchmetrics_errors():
    pytest.importorskip("torchmetrics")
    with pytest.raises(PresetError, match='no metric "MulticlassF1Scor"; did you mean "MulticlassF1Score"') as err:
        check_metrics([cfg("accuracy"), cfg("torchmetrics:MulticlassF1Scor")])
    assert err.value.key == "metrics[1].name"
    with pytest.raises(PresetError, match="F1Score needs task") as err:
        check_metrics([cfg("torchmetrics:F1Score")])
    assert err.value.key == "metrics[0].task"
    with pytest.raises(PresetError, match="rejected the settings"):
        build_metrics([cfg("torchmetrics:MulticlassF1Score")], CPU)  # no num_classes from anywhere


def test_missing_torchmetrics_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    with pytest.raises(PresetError, match=r"needs torchmetrics: pip install 'tui-trainer\[metrics\]'") as err:
        check_metrics([cfg("torchmetrics:MulticlassF1Score")])
    assert err.value.key == "metrics[0].name"
    assert check_metrics([cfg("f1")]) == {"val_f1": "max"}  # the built-ins do without it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_and_compute_do_not_sync_on_cuda(multiclass):
    logits, targets = (t.cuda() for t in multiclass)
    reg = torch.randn(53, 2, device="cuda")
    cfgs = [cfg(n) for n in ("accuracy", "top_k_accuracy", "f1", "precision", "recall", "dice", "iou")]
    ms = build_metrics(cfgs, torch.device("cuda"))
    rs = build_metrics([cfg(n) for n in ("mae", "mse", "rmse", "r2", "tests.unit.test_metrics:mean_abs_fn")],
                       torch.device("cuda"))
    ms.update(logits[:5], targets[:5])  # first update allocates
    rs.update(reg[:5], reg[:5] + 1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for lo, hi in ((5, 20), (20, 53)):
            ms.update(logits[lo:hi], targets[lo:hi])
            rs.update(reg[lo:hi], reg[lo:hi] * 2)
        values = {**ms.compute(), **rs.compute()}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda and v.dim() == 0 for v in values.values())
