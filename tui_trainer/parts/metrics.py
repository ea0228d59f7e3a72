"""Validation metrics ([[metrics]] in a preset), accumulated on the device.

Each metric keeps running sums and counts on the device while the validation batches go by;
`compute()` divides them once. Nothing here reads a device value on the host (no ``.item()``,
no ``if tensor``, no boolean-mask indexing, no ``torch.bincount`` - it reads the maximum on
CUDA): counts are added with ``index_add_`` into tensors sized from the shapes, and invalid
entries are given weight 0 instead of being dropped.

A metric's name is one of the built-ins below, ``"torchmetrics:Class"`` (its kwargs are the
entry's other keys) or ``"package.module:fn"``. Its monitor is ``val_<key>`` (MetricSection.key).

Shapes. Class scores are logits ``(N, C, ...)`` with integer class targets ``(N, ...)``: the
prediction is the argmax over dim 1. A single logit - outputs ``(N,)``, ``(N, 1, ...)`` or any
shape equal to the targets' once a dim 1 of size 1 is squeezed - is binary: the prediction is
``output > 0`` and the targets are 0/1 (any dtype; floats are thresholded at 0.5). Outputs
``(N, C)`` with targets ``(N, C)`` are therefore C independent binary labels (multi-label).
Targets may differ from the expected shape by dims of size 1 (``(N, 1)`` for ``(N,)``): they are
reshaped. Integer targets outside ``0..C-1`` (an ignore index such as -100 or 255) are not counted
by the class metrics. Shapes that cannot be reconciled raise ValueError naming the metric.

Definitions (sums over the whole validation set, then one division):

- accuracy: correct predictions / counted targets (every element of a segmentation map counts).
- top_k_accuracy (kwarg k, default 5, capped at C): the target is among the k largest class
  scores; needs class scores (C > 1).
- precision, recall, f1: per class c, from tp, fp, fn summed over the set:
  tp/(tp+fp), tp/(tp+fn), 2tp/(2tp+fp+fn), 0 where the denominator is 0; the macro mean over the
  classes that occur in the targets or the predictions (sklearn's ``average="macro"``,
  ``zero_division=0``). A binary single logit counts as 2 classes, 0 and 1.
- dice, iou (segmentation): the same counts with P = predicted as c, T = target c:
  2|P∩T|/(|P|+|T|) and |P∩T|/|P∪T|, the mean over the foreground classes 1..C-1 (class 0, the
  background, is left out) that occur in the predictions or the targets. Binary: class 1 alone.
- mae, mse: mean absolute / squared error over every element; rmse = sqrt(mse) (the root of the
  mse shown beside it; for several outputs sklearn's rmse averages per-column roots instead).
  Targets are reshaped to the outputs' shape (same number of elements per sample).
- r2: per output column (each element of a sample's output), 1 - SS_res/SS_tot with
  SS_tot = sum(y^2) - (sum y)^2/n; a column whose targets are constant scores 1.0 when predicted
  exactly, else 0.0; the mean over columns (sklearn's ``r2_score``, ``multioutput=
  "uniform_average"``, ``force_finite=True``).
- "package.module:fn": fn(outputs, targets) returns a tensor of one element; the epoch's value is
  the mean of the batches' values weighted by batch size (targets.shape[0]). A class is
  instantiated with the entry's kwargs and then called; a torchmetrics.Metric subclass is used
  like "torchmetrics:X".
- "torchmetrics:X": X(**kwargs) (num_classes filled from the data when X takes it and it was not
  given), moved to the device; update/compute/reset are delegated. Its value must have one element.

Sums are float64 (float32 on "mps", which has no float64); counts are int64. A metric that saw no
data computes NaN, as does a mean over no class.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from tui_trainer.config import METRIC_GOALS, MetricSection
from tui_trainer.errors import PresetError, did_you_mean
from tui_trainer.parts import target

# kwargs the built-ins take: name -> {kwarg: default}
_BUILTIN_KWARGS: dict[str, dict[str, Any]] = {name: {} for name in METRIC_GOALS}
_BUILTIN_KWARGS["top_k_accuracy"] = {"k": 5}

# torchmetrics' subpackages searched for "torchmetrics:X", after the top level, in this order.
_TM_SUBPACKAGES = ("classification", "regression", "segmentation", "aggregation", "clustering", "nominal",
                   "retrieval", "wrappers", "image", "text", "audio", "detection", "multimodal", "shape", "video")

_MISSING_TM = "needs torchmetrics: pip install 'tui-trainer[metrics]'"


# --------------------------------------------------------------------------- checking


def builtin_names() -> list[str]:
    return list(METRIC_GOALS)


def check_metrics(cfgs: list[MetricSection]) -> dict[str, str]:
    """Resolve every metric's name and check its kwargs (imports torchmetrics only when named).

    Returns monitor -> "max"/"min" for each metric whose direction is known: the built-ins, an
    explicit mode, a torchmetrics class's `higher_is_better`. A user function with mode "auto" has
    no entry (the caller raises if such a metric is monitored)."""
    goals: dict[str, str] = {}
    for i, cfg in enumerate(cfgs):
        kind, obj = _resolve(cfg, i)
        goal = _goal(cfg, kind, obj)
        if goal:
            goals[f"val_{cfg.key}"] = goal
    return goals


def _resolve(cfg: MetricSection, i: int) -> tuple[str, Any]:
    """("builtin", name) | ("torchmetrics", class) | ("class", class) | ("fn", callable)."""
    key = f"metrics[{i}].name"
    name = cfg.name
    if name.startswith("torchmetrics:"):
        cls = _torchmetrics_class(name.partition(":")[2], key)
        _check_kwargs(cls, cfg, i, provided=("num_classes",))
        return "torchmetrics", cls
    if target.is_target(name):
        obj = target.resolve(name, key)
        if not callable(obj):
            raise PresetError(f"{name} is not callable (a metric is fn(outputs, targets) -> tensor)", key=key)
        if inspect.isclass(obj):
            tm = sys.modules.get("torchmetrics")
            if tm is not None and issubclass(obj, tm.Metric):
                _check_kwargs(obj, cfg, i, provided=("num_classes",))
                return "torchmetrics", obj
            _check_kwargs(obj, cfg, i)
            return "class", obj
        _check_kwargs(obj, cfg, i, provided=_first_two(obj))
        return "fn", obj
    if name not in METRIC_GOALS:
        hint = did_you_mean(name, METRIC_GOALS) or ""
        raise PresetError(f'unknown metric "{name}"{hint} (built in: {", ".join(METRIC_GOALS)};'
                          ' or "torchmetrics:Class", or "package.module:fn")', key=key)
    allowed = _BUILTIN_KWARGS[name]
    for kw, value in cfg.kwargs.items():
        if kw not in allowed:
            hint = did_you_mean(kw, allowed) or (f"; it takes: {', '.join(allowed)}" if allowed
                                                  else "; it takes no settings")
            raise PresetError(f'{name} takes no argument "{kw}"{hint}', key=f"metrics[{i}].{kw}")
        if kw == "k" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PresetError(f"k must be a whole number >= 1, not {value!r}", key=f"metrics[{i}].k")
    return "builtin", name


def _check_kwargs(fn, cfg: MetricSection, i: int, provided=()) -> None:
    target.check_kwargs(fn, cfg.kwargs, f"metrics[{i}]", provided=provided)


def _first_two(fn) -> tuple[str, ...]:
    """A metric function's first two parameters are (outputs, targets): we pass them."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()
    return tuple(params[:2])


def _goal(cfg: MetricSection, kind: str, obj: Any) -> str | None:
    if cfg.goal:
        return cfg.goal
    if kind == "torchmetrics":
        better = getattr(obj, "higher_is_better", None)
        if better is not None:
            return "max" if better else "min"
    return None


def _torchmetrics_class(attr: str, key: str) -> type:
    try:
        tm = importlib.import_module("torchmetrics")
    except ImportError:  # also sys.modules["torchmetrics"] = None
        raise PresetError(f'"torchmetrics:{attr}" {_MISSING_TM}', key=key) from None
    if not attr:
        raise PresetError('"torchmetrics:" names no class ("torchmetrics:MulticlassF1Score")', key=key)
    if "." in attr:  # "torchmetrics:classification.MulticlassF1Score"
        head, _, cls_name = attr.rpartition(".")
        try:
            places = [importlib.import_module(f"torchmetrics.{head}")]
        except Exception as exc:
            raise PresetError(f'cannot import "torchmetrics.{head}" ({exc})', key=key) from None
    else:
        cls_name, places = attr, [tm]
    found = _metric_class(places, cls_name, tm)
    if found is None and "." not in attr:
        for sub in _TM_SUBPACKAGES:
            mod = _try_import(f"torchmetrics.{sub}")
            if mod is not None:
                places.append(mod)
                found = _metric_class([mod], cls_name, tm)
                if found is not None:
                    break
    if found is None:
        if "." not in attr:  # gather every subpackage's names for the hint
            places += [m for m in (_try_import(f"torchmetrics.{s}") for s in _TM_SUBPACKAGES) if m is not None]
        names = sorted({n for mod in places for n in dir(mod) if _is_metric(getattr(mod, n, None), tm)})
        hint = did_you_mean(cls_name, names) or ""
        raise PresetError(f'torchmetrics has no metric "{attr}"{hint}', key=key)
    return found


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # an optional subpackage whose own extras are missing
        return None


def _is_metric(obj, tm) -> bool:
    return inspect.isclass(obj) and issubclass(obj, tm.Metric)


def _metric_class(places, name: str, tm):
    for mod in places:
        obj = getattr(mod, name, None)
        if _is_metric(obj, tm):
            return obj
    return None


# --------------------------------------------------------------------------- shapes


def _fit(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor | None:
    """`t` as `shape` when they differ only by dims of size 1, else None."""
    if tuple(t.shape) == tuple(shape):
        return t
    if t.numel() == math.prod(shape) and [d for d in t.shape if d != 1] == [d for d in shape if d != 1]:
        return t.reshape(shape)
    return None


def _shapes(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> str:
    return f"{name}: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} do not fit"


def _classes(name: str, outputs: torch.Tensor, targets: torch.Tensor):
    """(predicted class, target class, C, binary): integer tensors of one shape. Targets outside
    0..C-1 are left as they are (the caller weighs them 0)."""
    if outputs.dim() >= 2 and outputs.shape[1] > 1:
        t = _fit(targets, (outputs.shape[0], *outputs.shape[2:]))
        if t is not None:
            return outputs.argmax(1), t.long(), outputs.shape[1], False
    scores = outputs.squeeze(1) if outputs.dim() >= 2 and outputs.shape[1] == 1 else outputs
    t = _fit(targets, scores.shape)
    if t is None:
        raise ValueError(_shapes(name, outputs, targets) + " (class scores (N, C, ...) with class targets"
                         " (N, ...), or one logit per target)")
    if t.dtype == torch.bool:
        t = t.long()
    elif t.is_floating_point():
        t = (t > 0.5).long()
    else:
        t = t.long()
    return (scores > 0).long(), t, 2, True


# --------------------------------------------------------------------------- the metrics


class _Metric:
    """One metric's state on the device."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype):
        self.name, self.device, self.dtype = name, device, dtype

    def nan(self) -> torch.Tensor:
        return torch.full((), float("nan"), dtype=self.dtype, device=self.device)

    def reset(self) -> None:
        for t in self.state():
            t.zero_()

    def state(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def width(self) -> int | None:
        """The size of a state sized at the first update (classes, values per sample); None before it
        and for a metric without one."""
        return None

    def allocate(self, width: int) -> None:
        """Make the state `width` wide, zero, as the first update would (a rank that saw no data)."""

    def update(self, outputs, targets) -> None:
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        raise NotImplementedError


class _Accuracy(_Metric):
    def __init__(self, name, device, dtype, k: int | None = None):
        super().__init__(name, device, dtype)
        self.k = k
        self.counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, counted

    def state(self):
        return [self.counts]

    def update(self, outputs, targets):
        if self.k is None:
            pred, t, c, _ = _classes(self.name, outputs, targets)
            hit = pred == t
        else:
            if outputs.dim() < 2 or outputs.shape[1] < 2:
                raise ValueError(f"{self.name}: needs class scores (N, C, ...) with C > 1; outputs are"
                                 f" {tuple(outputs.shape)}")
            c = outputs.shape[1]
            t = _fit(targets, (outputs.shape[0], *outputs.shape[2:]))
            if t is None:
                raise ValueError(_shapes(self.name, outputs, targets) + " (class scores (N, C) with class"
                                 " targets (N,))")
            t = t.long()
            top = outputs.topk(min(self.k, c), dim=1).indices
            hit = (top == t.unsqueeze(1)).any(1)
        valid = (t >= 0) & (t < c)
        self.counts += torch.stack([(hit & valid).sum(), valid.sum()])

    def compute(self):
        counts = self.counts.to(self.dtype)
        return counts[0] / counts[1]


class _ClassCounts(_Metric):
    """tp, predicted and target counts per class; precision/recall/f1 or dice/iou from them."""

    def __init__(self, name, device, dtype, kind: str):
        super().__init__(name, device, dtype)
        self.kind = kind
        self.counts: torch.Tensor | None = None  # (3, C): tp, predicted, target; sized at the first update
        self.binary: bool | None = None

    def state(self):
        return [] if self.counts is None else [self.counts]

    def width(self):
        return None if self.counts is None else self.counts.shape[1]

    def allocate(self, width):
        self.counts = torch.zeros(3, width, dtype=torch.long, device=self.device)

    def update(self, outputs, targets):
        pred, t, c, binary = _classes(self.name, outputs, targets)
        if self.binary is None:
            self.binary = binary
        if self.counts is None:
            self.counts = torch.zeros(3, c, dtype=torch.long, device=self.device)
        elif self.counts.shape[1] != c or self.binary != binary:
            raise ValueError(f"{self.name}: outputs {tuple(outputs.shape)} give {c} classes; earlier batches"
                             f" gave {self.counts.shape[1]}")
        valid = ((t >= 0) & (t < c)).reshape(-1).long()
        t = torch.where(valid.bool(), t.reshape(-1), 0)
        pred = pred.reshape(-1)
        self.counts[0].index_add_(0, t, valid * (pred == t))
        self.counts[1].index_add_(0, pred, valid)
        self.counts[2].index_add_(0, t, valid)

    def compute(self):
        if self.counts is None:
            return self.nan()
        tp, pred, true = self.counts.to(self.dtype)
        num, den = {
            "precision": (tp, pred),
            "recall": (tp, true),
            "f1": (2 * tp, pred + true),
            "dice": (2 * tp, pred + true),
            "iou": (tp, pred + true - tp),
        }[self.kind]
        per_class = torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
        present = (pred + true > 0).to(self.dtype)
        if self.kind in ("dice", "iou"):
            present[0] = 0  # the background
        return (per_class * present).sum() / present.sum()


class _Regression(_Metric):
    def __init__(self, name, device, dtype, kind: str):
        super().__init__(name, device, dtype)
        self.kind = kind
        self.n = torch.zeros((), dtype=torch.long, device=device)
        self.sums: torch.Tensor | None = None  # (4, D): sum y, sum y^2, sum (y-p)^2, sum |y-p|

    def state(self):
        return [self.n] if self.sums is None else [self.n, self.sums]

    def width(self):
        return None if self.sums is None else self.sums.shape[1]

    def allocate(self, width):
        self.sums = torch.zeros(4, width, dtype=self.dtype, device=self.device)

    def update(self, outputs, targets):
        n = outputs.shape[0] if outputs.dim() else 1
        t = targets.reshape(outputs.shape) if (
            targets.numel() == outputs.numel() and (targets.dim() == 0 or targets.shape[0] == n)) else None
        if t is None:
            raise ValueError(_shapes(self.name, outputs, targets) + " (a regression metric wants the same"
                             " number of values per sample)")
        p = outputs.reshape(n, -1).to(self.dtype)
        y = t.reshape(n, -1).to(self.dtype)
        if self.sums is None:
            self.sums = torch.zeros(4, p.shape[1], dtype=self.dtype, device=self.device)
        elif self.sums.shape[1] != p.shape[1]:
            raise ValueError(f"{self.name}: outputs {tuple(outputs.shape)} have {p.shape[1]} values per sample;"
                             f" earlier batches had {self.sums.shape[1]}")
        err = y - p
        self.sums += torch.stack([y.sum(0), (y * y).sum(0), (err * err).sum(0), err.abs().sum(0)])
        self.n += n

    def compute(self):
        if self.sums is None:
            return self.nan()
        n = self.n.to(self.dtype)
        sum_y, sum_y2, sse, sae = self.sums
        values = n * self.sums.shape[1]
        if self.kind == "mae":
            return sae.sum() / values
        if self.kind == "mse":
            return sse.sum() / values
        if self.kind == "rmse":
            return (sse.sum() / values).sqrt()
        ss_tot = sum_y2 - sum_y * sum_y / n
        exact = torch.where(sse == 0, torch.ones_like(sse), torch.zeros_like(sse))
        r2 = torch.where(ss_tot > 0, 1 - sse / torch.where(ss_tot > 0, ss_tot, torch.ones_like(ss_tot)), exact)
        return torch.where(n > 0, r2.mean(), torch.full_like(n, float("nan")))


class _UserFn(_Metric):
    def __init__(self, name, device, dtype, fn: Callable):
        super().__init__(name, device, dtype)
        self.fn = fn
        self.sums = torch.zeros(2, dtype=dtype, device=device)  # sum value*n, n

    def state(self):
        return [self.sums]

    def update(self, outputs, targets):
        value = torch.as_tensor(self.fn(outputs, targets))
        if value.numel() != 1:
            raise ValueError(f"{self.name} returned a tensor of shape {tuple(value.shape)}; a metric returns one"
                             " value per batch")
        n = targets.shape[0] if isinstance(targets, torch.Tensor) and targets.dim() else 1
        value = value.detach().reshape(()).to(device=self.device, dtype=self.dtype)
        self.sums += torch.stack([value * n, torch.ones_like(value) * n])

    def compute(self):
        return self.sums[0] / self.sums[1]


class _Torchmetric(_Metric):
    def __init__(self, name, device, dtype, metric):
        super().__init__(name, device, dtype)
        self.metric = metric.to(device)
        self.seen = False

    def state(self):
        return []  # torchmetrics sync their own state

    def reset(self):
        self.metric.reset()
        self.seen = False

    def update(self, outputs, targets):
        self.metric.update(outputs, targets)
        self.seen = True

    def compute(self, synced: bool = False):
        if not self.seen and not synced:  # `synced`: some rank saw data; compute() gathers every rank's state
            return self.nan()
        value = torch.as_tensor(self.metric.compute())
        if value.numel() != 1:
            raise ValueError(f"{self.name} computed a tensor of shape {tuple(value.shape)}; a monitor needs one"
                             " value (an average other than \"none\"?)")
        return value.reshape(()).to(device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------- the set


class MetricSet:
    """The run's [[metrics]]: update() with each validation batch, compute() once per epoch."""

    def __init__(self, metrics: list[tuple[str, _Metric]], goals: dict[str, str], device: torch.device):
        self._metrics = metrics
        self.monitors: list[str] = [monitor for monitor, _ in metrics]
        self.goals: dict[str, str] = goals
        self.device = device

    def __len__(self) -> int:
        return len(self._metrics)

    def reset(self) -> None:
        for _, metric in self._metrics:
            metric.reset()

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One validation batch's outputs and targets (on the device); reads nothing back."""
        for _, metric in self._metrics:
            metric.update(outputs, targets)

    @torch.no_grad()
    def compute(self, synced: bool = False) -> dict[str, torch.Tensor]:
        """monitor -> 0-d tensor on the device, all of one dtype; NaN for a metric that saw no data.
        `synced` (many ranks, after `state_tensors()` were reduced, when some rank saw data): every
        metric computes, also on a rank that saw nothing, because a torchmetrics metric gathers the
        ranks' states inside compute() and every rank must take part."""
        return {monitor: (metric.compute(synced) if isinstance(metric, _Torchmetric) else metric.compute())
                for monitor, metric in self._metrics}

    def align(self, reduce: Callable[[list[torch.Tensor]], None]) -> None:
        """Many ranks, before `state_tensors()` are reduced: a state sized at the first update (classes,
        values per sample) is missing on a rank that saw no validation batch (its shard was empty).
        One small reduction of (width, ranks that have it) per metric gives every rank the width, and
        the ranks without the state make it, zero, so that every rank reduces the same tensors."""
        lazy = [m for _, m in self._metrics if type(m).width is not _Metric.width]
        if not lazy:
            return
        sizes = torch.tensor([[float(m.width() or 0), float(m.width() is not None)] for m in lazy],
                             dtype=torch.float64, device=self.device)  # NCCL reduces device tensors
        reduce([sizes])
        for metric, (total, have) in zip(lazy, sizes.tolist()):
            if have and metric.width() is None:
                metric.allocate(round(total / have))

    def state_tensors(self) -> list[torch.Tensor]:
        """The built-ins' and user functions' running sums and counts, to all_reduce(SUM) in place
        before compute(). Class and regression sums are sized at the first update (absent before:
        `align` first)."""
        return [t for _, metric in self._metrics for t in metric.state()]


def build_metrics(cfgs: list[MetricSection], device: torch.device | str,
                  num_classes: int | None = None) -> MetricSet:
    device = torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    goals = check_metrics(cfgs)
    metrics: list[tuple[str, _Metric]] = []
    for i, cfg in enumerate(cfgs):
        kind, obj = _resolve(cfg, i)
        monitor = f"val_{cfg.key}"
        label = f'metric "{cfg.name}"' if cfg.key == cfg.name else f'metric "{cfg.name}" ({monitor})'
        if kind == "builtin":
            if obj in ("accuracy", "top_k_accuracy"):
                k = cfg.kwargs.get("k", 5) if obj == "top_k_accuracy" else None
                metric: _Metric = _Accuracy(label, device, dtype, k)
            elif obj in ("f1", "precision", "recall", "dice", "iou"):
                metric = _ClassCounts(label, device, dtype, obj)
            else:
                metric = _Regression(label, device, dtype, obj)
        elif kind == "torchmetrics":
            kwargs = dict(cfg.kwargs)
            if num_classes is not None and "num_classes" not in kwargs and _takes(obj, "num_classes"):
                kwargs["num_classes"] = num_classes
            instance = _construct(obj, kwargs, cfg, i)
            metric = _Torchmetric(label, device, dtype, instance)
            better = getattr(instance, "higher_is_better", None)  # a task wrapper (F1Score) knows once built
            if monitor not in goals and better is not None:
                goals[monitor] = "max" if better else "min"
        elif kind == "class":
            metric = _UserFn(label, device, dtype, _construct(obj, cfg.kwargs, cfg, i))
        else:
            fn = functools.partial(obj, **cfg.kwargs) if cfg.kwargs else obj
            metric = _UserFn(label, device, dtype, fn)
        metrics.append((monitor, metric))
    return MetricSet(metrics, goals, device)


def _takes(cls, param: str) -> bool:
    try:
        return param in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _construct(cls, kwargs: dict, cfg: MetricSection, i: int):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PresetError(f"{cfg.name} rejected the settings: {exc}", key=f"metrics[{i}]") from None
