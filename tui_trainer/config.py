"""The preset: a pydantic schema over a TOML file, `--set` overrides, one-line errors.

Only types and ranges are checked here (no torch import). Whether a name exists in
torch (optimizer, scheduler, loss, arch) and whether a kwarg is accepted is checked by
`parts.check()`, which raises `PresetError` with the same one-line shape.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tui_trainer.errors import UserError, did_you_mean

# A monitor is "val_loss", "train_loss", "val_acc" (classification) or "val_<label>" of a [[metrics]]
# entry; which ones exist is checked against the metrics in Preset._monitors_exist.
Monitor = str
Mode = Literal["auto", "min", "max"]
BUILTIN_MONITORS = ("val_loss", "val_acc", "train_loss")

# The built-in metrics (parts/metrics.py computes them) and which way is better. A metric's label -
# what follows "val_" in its monitor, its column in metrics.csv and the epoch table - is its name,
# except accuracy, which keeps the name it always had: val_acc.
METRIC_GOALS = {
    "accuracy": "max", "top_k_accuracy": "max", "f1": "max", "precision": "max", "recall": "max",
    "dice": "max", "iou": "max", "r2": "max",
    "mae": "min", "mse": "min", "rmse": "min",
}
METRIC_LABELS = {"accuracy": "acc"}


class _Strict(BaseModel):
    # strict: "64" is not an int; ints are still accepted where floats are expected.
    # allow_inf_nan=False: TOML has inf and nan; no setting here means either (lr = inf trained NaN)
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _WithKwargs(BaseModel):
    """A section whose unknown keys are kwargs of a torch class (checked against its signature)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelSection(_Strict):
    arch: str = "resnet18"
    weights: str = "none"
    weights_fallback: Literal["error", "random"] = "error"
    num_classes: int | None = Field(default=None, gt=0)
    freeze: list[str] = []
    freeze_backbone: bool = False  # everything but the (replaced) head, as fastai's freeze()
    kwargs: dict[str, Any] = {}


class Normalize(_Strict):
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)


class DataSection(_Strict):
    dataset: str = "digits"  # digits, imagefolder, torchvision:NAME, or "package.module:factory"
    kwargs: dict[str, Any] = {}  # for a factory: its keyword arguments
    collate: str | None = None  # "package.module:collate_fn"
    root: str | None = None
    download: bool = False
    image_size: int = Field(default=64, gt=0)
    batch_size: int = Field(default=64, gt=0)
    val_batch_size: int = Field(default=0, ge=0)
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    num_workers: int = Field(default=0, ge=0)
    limit: int = Field(default=0, ge=0)
    augment: bool = False
    preload: bool = False  # transform every sample once, keep the set as tensors on the device
    channels: Literal[1, 3] = 3  # built-in image data: 1 (grey) or 3 (RGB)
    normalize: Literal["imagenet", "none"] | Normalize = "imagenet"
    flatten: bool = False  # built-in image data: one flat vector per sample (an MLP's input)

    @model_validator(mode="after")
    def _preload_is_static(self) -> DataSection:
        if self.preload and self.augment:
            raise ValueError("data.preload: a preloaded sample is transformed once, so random augmentation"
                             " would be frozen; set augment = false or preload = false")
        return self


class ParamGroup(_WithKwargs):
    params: list[str] = Field(min_length=1)


class OptimizerSection(_WithKwargs):
    name: str = "SGD"
    lr: float = Field(default=0.01, gt=0)
    groups: list[ParamGroup] = []


class SchedulerSection(_WithKwargs):
    name: str = "none"
    interval: Literal["epoch", "step"] = "epoch"
    warmup_steps: int = Field(default=0, ge=0)
    monitor: Monitor = "val_loss"  # ReduceLROnPlateau's metric; its mode follows it


class LossSection(_WithKwargs):
    name: str = "CrossEntropyLoss"


class TrainSection(_Strict):
    epochs: int = Field(default=10, gt=0)
    max_steps: int = Field(default=0, ge=0)
    device: str = "auto"
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    accumulate: int = Field(default=1, gt=0)  # batches per optimizer step
    devices: int | list[int] | Literal["all"] = 1  # ranks of a DistributedDataParallel run (one per GPU on CUDA)
    sync_bn: bool = False  # SyncBatchNorm across the ranks
    grad_clip_norm: float = Field(default=0.0, ge=0)
    grad_clip_norm_type: float = Field(default=2.0, gt=0, allow_inf_nan=True)  # 2, 1, inf
    grad_clip_value: float = Field(default=0.0, ge=0)  # clip_grad_value_; 0 = off
    log_every: int = Field(default=10, gt=0)
    # at least this long between two reports (each still carries every step's loss): a fast run reports
    # ~10 times a second, not every few ms; 0 = exactly every log_every steps
    log_min_interval_s: float = Field(default=0.1, ge=0)
    deterministic: bool = False
    freeze_bn_stats: bool = False
    nonfinite: Literal["stop", "skip"] = "stop"

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value):
        """One line for any other value (pydantic said `train.devices.int: ... got True` for true)."""
        whole = isinstance(value, int) and not isinstance(value, bool)
        if whole or value == "all" or (isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return value
        import json

        raise ValueError(f'is a number of ranks (2), a list of CUDA devices ([0, 2]) or "all"; got'
                         f" {json.dumps(value, default=str)}")  # as TOML writes it: true, "2"


class CheckpointSection(_Strict):
    every_epochs: int = Field(default=1, ge=0)
    every_steps: int = Field(default=0, ge=0)
    keep_last: int = Field(default=3, ge=0)
    save_best: bool = True
    monitor: Monitor = "val_loss"
    mode: Mode = "auto"


class EarlyStoppingSection(_Strict):
    enabled: bool = False
    monitor: Monitor = "val_loss"
    mode: Mode = "auto"
    patience: int = Field(default=3, gt=0)
    min_delta: float = Field(default=0.0, ge=0)


class UiSection(_Strict):
    lr_reduce_factor: float = Field(default=0.5, gt=0, lt=1)
    refresh_hz: float = Field(default=10.0, gt=0, le=60)


class LogSection(_Strict):
    tensorboard: bool = False


class CallbackSection(_WithKwargs):
    target: str


class StepSection(_Strict):
    fn: str = "default"  # "package.module:step": step(model, batch, loss_fn) -> loss or {"loss", ...}


class MetricSection(_WithKwargs):
    """One [[metrics]] entry; its other keys are the metric's kwargs (k = 5, num_classes = 10)."""

    name: str  # a built-in (METRIC_GOALS), "torchmetrics:Class" or "package.module:fn"
    label: str | None = None  # what it is called: val_<label>; default from the name
    mode: Mode = "auto"  # which way is better; auto: known for built-ins and torchmetrics

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items()}

    @property
    def key(self) -> str:
        """Its label: given, or from the name ("torchmetrics:MulticlassF1Score" -> multiclass_f1_score)."""
        if self.label:
            return self.label
        if self.name in METRIC_GOALS:
            return METRIC_LABELS.get(self.name, self.name)
        attr = self.name.rpartition(":")[2].rpartition(".")[2]
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", attr).lower()

    @property
    def goal(self) -> str | None:
        """"max" or "min" when known without importing anything; None for torchmetrics (its class
        says: higher_is_better) and for the user's own function with mode "auto"."""
        if self.mode != "auto":
            return self.mode
        return METRIC_GOALS.get(self.name)


def resolve_mode(monitor: str, mode: str, goals: dict[str, str] | None = None) -> str:
    """`auto` means what the metric wants: loss and errors go down; accuracy and scores go up.
    `goals`: monitor -> "max"/"min" of the run's [[metrics]] (Preset.goals, parts.metrics)."""
    if mode != "auto":
        return mode
    if goals and monitor in goals:
        return goals[monitor]
    return "max" if monitor.endswith("acc") else "min"


class Preset(_Strict):
    name: str = "run"
    seed: int = 0
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    scheduler: SchedulerSection = SchedulerSection()
    loss: LossSection = LossSection()
    train: TrainSection = TrainSection()
    checkpoint: CheckpointSection = CheckpointSection()
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()
    ui: UiSection = UiSection()
    log: LogSection = LogSection()
    callbacks: list[CallbackSection] = []
    step: StepSection = StepSection()
    metrics: list[MetricSection] = []

    _source: str = PrivateAttr(default="<preset>")
    _overridden: tuple[str, ...] = PrivateAttr(default=())
    _notes: tuple[str, ...] = PrivateAttr(default=())  # warnings found while it was made (fit's preset=)

    @property
    def monitors(self) -> tuple[str, ...]:
        """Every monitor this run can produce."""
        return BUILTIN_MONITORS + tuple(f"val_{m.key}" for m in self.metrics if f"val_{m.key}" != "val_acc")

    @property
    def goals(self) -> dict[str, str]:
        """monitor -> "max"/"min" for the metrics whose direction is known here (see MetricSection.goal)."""
        return {f"val_{m.key}": m.goal for m in self.metrics if m.goal}

    @model_validator(mode="after")
    def _modes_make_sense(self) -> Preset:
        seen: dict[str, int] = {}
        for i, metric in enumerate(self.metrics):
            key = metric.key
            if not re.fullmatch(r"[A-Za-z0-9_]+", key):
                raise ValueError(f'metrics[{i}].label: "{key}" names a column and a monitor (val_{key});'
                                 ' use letters, digits and "_"')
            if key in seen:
                raise ValueError(f'metrics[{i}]: a second metric called "{key}" (metrics[{seen[key]}] is one);'
                                 ' give one of them another label = "..."')
            if key in ("loss",):
                raise ValueError(f'metrics[{i}].label: "{key}" is taken (val_loss is the validation loss);'
                                 ' choose another label')
            seen[key] = i
        for section in ("checkpoint", "early_stopping", "scheduler"):
            cfg = getattr(self, section)
            if cfg.monitor == "val_accuracy":  # accuracy's monitor is val_acc; take the obvious spelling too
                cfg.monitor = "val_acc"
            if cfg.monitor not in self.monitors:
                hint = did_you_mean(cfg.monitor, list(self.monitors))
                raise ValueError(f'{section}.monitor: no metric produces "{cfg.monitor}"; this run has'
                                 f' {", ".join(self.monitors)} (a [[metrics]] entry adds val_<its label>){hint}')
        for section in ("checkpoint", "early_stopping"):
            cfg = getattr(self, section)
            known = cfg.monitor in BUILTIN_MONITORS or cfg.monitor in self.goals
            wants = resolve_mode(cfg.monitor, "auto", self.goals)
            if known and cfg.mode not in ("auto", wants):
                raise ValueError(
                    f"{section}.mode: \"{cfg.mode}\" with monitor \"{cfg.monitor}\" would keep the worst"
                    f" epochs; use mode = \"{wants}\" (or \"auto\")"
                )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f'name: "{self.name}" is used in file names; use letters, digits, "_", "-", "."')
        return self

    @property
    def source(self) -> str:
        return self._source

    def key_source(self, key: str) -> str:
        """Where a key's value came from: the file, or the `--set` that overrode it."""
        return _origin(key, self._overridden, self._source)

    def error(self, key: str, message: str) -> UserError:
        return UserError(message, key=key, source=self.key_source(key))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------- loading


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """Read, override and validate a preset. Raises `UserError` (one line) on any problem."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        hint = "" if path.suffix == ".toml" else " (a preset is a .toml file)"
        raise UserError(f"no such preset file{hint}; see presets/ for examples", source=source)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text file; a preset is a TOML file", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"TOML syntax error: {exc}", source=source) from None
    raw.setdefault("name", path.stem)
    return from_dict(raw, source=source, overrides=overrides)


def from_dict(raw: dict[str, Any], *, source: str = "<preset>", overrides=()) -> Preset:
    raw = dict(raw)
    keys = []
    for item in overrides:  # in command-line order: a later --set or --unset of a key wins
        if item.startswith(UNSET):
            key = item[len(UNSET):]
            _unset_path(raw, key)
            keys.append(key)
            continue
        key, value = parse_override(item)
        _set_path(raw, key, value, source=f"--set {key}")
        keys.append(key)
    try:
        preset = Preset.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, message = _explain(err)
        raise UserError(message, key=key or None, source=_origin(key, keys, source)) from None
    preset._source = source
    preset._overridden = tuple(keys)
    return preset


UNSET = "-"  # an override "-optimizer.momentum" is `--unset optimizer.momentum` (a key never starts with "-")


def unset_override(key: str) -> str:
    """The override item that `--unset KEY` adds to the list `load` takes (order kept with --set)."""
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key.strip()):
        raise UserError("expected a dotted key, e.g. --unset optimizer.momentum", source=f"--unset {key}")
    return UNSET + key.strip()


def _unset_path(raw: dict[str, Any], key: str) -> None:
    """Remove `key` so its default applies (--set optimizer.name=Adam --unset optimizer.momentum)."""
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else (
            node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else None)
        if not isinstance(child, (dict, list)):
            break
        copy = dict(child) if isinstance(child, dict) else list(child)
        if isinstance(node, dict):
            node[part] = copy
        else:
            node[int(part)] = copy
        node = copy
    else:
        last = parts[-1]
        if isinstance(node, dict) and last in node:
            del node[last]
            return
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            del node[int(last)]
            return
    raise UserError(f"{key} is not set in the preset (nor by an earlier --set); nothing to unset",
                    source=f"--unset {key}")


def _origin(key: str, overridden, source: str) -> str:
    """The `--set` that supplied `key` (or a table above or below it), else the file."""
    for over in reversed(list(overridden)):  # the last --set of a key wins, so it is the one to name
        if key == over or key.startswith(over + ".") or over.startswith(key + "."):
            return f"--set {over}"  # (an --unset is named as the --set of that key: it set the default)
    return source


def parse_override(item: str) -> tuple[str, Any]:
    """`optimizer.lr=0.05` -> ("optimizer.lr", 0.05); the value is read as TOML, else a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise UserError("expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.05",
                        source=f"--set {item}")
    text = text.strip()
    try:
        return key, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key, text  # a bare word: model.arch=resnet50


def _set_path(raw: dict[str, Any], key: str, value: Any, *, source: str) -> None:
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:i])
                if not node:
                    raise UserError(_no_entries(where), source=source)
                raise UserError(f"{where} has entries 0 to {len(node) - 1}; there is no entry {part}",
                                source=source)
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{'.'.join(parts[:i])} is a value, not a table", source=source)
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if child is None and parts[i + 1].isdigit():
                where = ".".join(parts[: i + 1])
                raise UserError(_no_entries(where), source=source)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, dict):
                child = node[part] = dict(child)
            elif isinstance(child, list):
                child = node[part] = [dict(c) if isinstance(c, dict) else c for c in child]
            node = child


def _no_entries(where: str) -> str:
    return f"{where} has no entries; add them to the preset, or set the whole list: --set '{where}=[...]'"


_TYPE_WORDS = {
    "int_type": "a whole number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "string_type": "a string (in quotes)",
    "bool_type": "true or false",
    "list_type": "a list, e.g. [\"a\", \"b\"]",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _explain(err: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    typ = err["type"]
    value = err.get("input")
    if typ == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        where = f"[{'.'.join(loc[:-1])}]" if loc[:-1] else "the top level"
        hint = did_you_mean(loc[-1], fields) or f"; known keys: {', '.join(sorted(fields))}"
        return key, f"unknown key in {where}{hint}"
    if typ == "missing":
        return key, "is required; add it"
    if typ in _TYPE_WORDS:
        return key, f"expected {_TYPE_WORDS[typ]}, got {_show(value)}"
    if typ == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return key, f"{_show(value)} is not allowed; use one of {expected}"
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(err.get("ctx", {}).values()), "")
        words = {"greater_than": "greater than", "greater_than_equal": "at least",
                 "less_than": "less than", "less_than_equal": "at most"}[typ]
        return key, f"got {_show(value)}; must be {words} {bound}"
    if typ == "too_short":
        return key, "must not be empty"
    if typ == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        inner_key, _, rest = msg.partition(": ")
        if rest and re.fullmatch(r"[\w.\[\]]+", inner_key):
            return inner_key, rest
        return key, msg
    return key, f"{err['msg']} (got {_show(value)})"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = Preset
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        model = inner[0] if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel) else ann
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def dump_toml(preset: Preset) -> str:
    import tomli_w

    return tomli_w.dumps(preset.to_dict())
