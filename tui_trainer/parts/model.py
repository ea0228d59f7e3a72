"""Model: a torchvision builder (or "pkg.mod:factory"), its weights, a new head, frozen prefixes.

Builders are the classifiers of torchvision.models and the segmentation models of
torchvision.models.segmentation (fcn_*, deeplabv3_*, lraspp_*). A segmentation model is built
with `weights_backbone=None` unless [model.kwargs] names one (torchvision would otherwise download
the ImageNet backbone, which an offline machine cannot); with weights "none", `num_classes` goes to
its builder; with COCO weights (or a weights file) it is built as they are (21 classes) and its
final 1x1 convs (classifier, aux_classifier; lraspp's low_ and high_classifier) are replaced.

`model.freeze_backbone` is fastai's freeze(): after `model.freeze`, every parameter outside the
head is frozen. The head is what `replace_head` replaced, else what `head_names` finds (the last
Linear or 1x1 conv; a segmentation model's final classifier convs). It only freezes: a head that
`model.freeze` froze stays frozen.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import warnings as pywarnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tui_trainer.parts import target
from tui_trainer.parts.layers import matches, module_names
from tui_trainer.config import ModelSection
from tui_trainer.errors import PresetError, describe_load_error, did_you_mean


@dataclass
class BuiltModel:
    model: nn.Module
    weights_note: str  # "IMAGENET1K_V1 (hub cache)", "random init (offline)", ...
    warnings: list[str]


def torchvision_archs() -> list[str]:
    """Every builder `model.arch` accepts by name: classifiers, then segmentation models."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm) + segmentation_archs()


def segmentation_archs() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm.segmentation)


def check_arch(cfg: ModelSection) -> None:
    if target.is_target(cfg.arch):
        # imported here, before anything heavy (and, with devices > 1, before any rank starts): a
        # module that is not there, a misspelt factory or a kwarg it does not take is one line
        factory = target.resolve(cfg.arch, "model.arch")
        if not callable(factory):
            raise PresetError(f"{cfg.arch} is not callable ({type(factory).__name__}); name a function or an"
                              " nn.Module class", key="model.arch")
        target.check_kwargs(factory, cfg.kwargs, "model.kwargs")
        return
    archs = torchvision_archs()
    if cfg.arch not in archs:
        raise PresetError(
            f'unknown architecture "{cfg.arch}"{did_you_mean(cfg.arch, archs)}'
            ' (any torchvision.models classifier, or "package.module:factory")',  # segmentation builders too:
            # the wording stays while tests/fixtures/bad_presets/unknown_arch.toml expects it
            key="model.arch",
        )


def build_model(cfg: ModelSection) -> BuiltModel:
    check_arch(cfg)
    warnings: list[str] = []
    if target.is_target(cfg.arch):
        model, note = _custom_model(cfg)
    else:
        model, note = _torchvision_model(cfg, warnings)
    replaced = replace_head(model, cfg.num_classes) if cfg.num_classes is not None else []
    apply_freeze(model, cfg.freeze, key="model.freeze")
    if cfg.freeze_backbone:
        freeze_backbone(model, replaced or head_names(model))
    return BuiltModel(model, note, warnings)


def _custom_model(cfg: ModelSection) -> tuple[nn.Module, str]:
    factory = target.resolve(cfg.arch, "model.arch")
    try:
        model = factory(**cfg.kwargs)
    except TypeError as exc:
        raise PresetError(f"calling {cfg.arch} failed: {exc}; check [model.kwargs]", key="model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise PresetError(f"{cfg.arch} returned {type(model).__name__}, not a torch.nn.Module", key="model.arch")
    note = "as built by the factory"
    if cfg.weights.lower() != "none":
        note = _load_file_weights(model, cfg.weights)
    return model, note


def _torchvision_model(cfg: ModelSection, warnings: list[str]) -> tuple[nn.Module, str]:
    import torchvision.models as tvm

    weights_name = cfg.weights
    weights = None
    file_weights = None
    if weights_name.lower() == "none":
        note = "random init"
    elif _looks_like_file(weights_name):
        file_weights = weights_name
        note = ""
    else:
        enum = tvm.get_model_weights(cfg.arch)
        names = [*enum.__members__]
        if weights_name not in names:
            raise PresetError(
                f'"{weights_name}" is not a weights name of {cfg.arch}{did_you_mean(weights_name, names)}'
                f' (names: {", ".join(names)}; or a local .pth file, or "none")',
                key="model.weights",
            )
        weights = enum[weights_name]
        note = f"{weights_name}"
        if not _fetch_weights(weights):
            url = weights.url
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            if cfg.weights_fallback == "error":
                raise PresetError(
                    f"{cfg.arch} weights {weights_name} are not in the cache and cannot be downloaded"
                    f" (offline?): put {os.path.basename(url)} from {url} into {cache}/,"
                    ' or set model.weights_fallback = "random"',
                    key="model.weights",
                )
            warnings.append(
                f"weights: {cfg.arch} {weights_name} unavailable offline ({os.path.basename(url)} not in"
                f" {cache}); training from RANDOM INIT"
            )
            weights = None
            note = "random init (offline)"
    kwargs = dict(cfg.kwargs)
    if cfg.arch in segmentation_archs():
        kwargs.setdefault("weights_backbone", None)  # no ImageNet download unless asked for
        if weights is None and file_weights is None and cfg.num_classes is not None:
            kwargs.setdefault("num_classes", cfg.num_classes)  # COCO weights (a file too): 21, then swapped
    said = io.StringIO()  # torch.hub prints "Downloading: URL to PATH" (a backbone): kept for the error
    try:
        with pywarnings.catch_warnings(), contextlib.redirect_stdout(said):
            pywarnings.simplefilter("ignore", FutureWarning)  # inception_v3/googlenet on init_weights: not the user's
            model = tvm.get_model(cfg.arch, weights=weights, **kwargs)
    except OSError as exc:  # a download (weights_backbone) that failed: offline
        where = re.search(r'Downloading: "([^"]+)" to (\S+)', said.getvalue())
        fix = f"put {where[1]} into {os.path.dirname(where[2])}/, or " if where else ""
        raise PresetError(f"{cfg.arch}: weights_backbone {kwargs.get('weights_backbone')} cannot be downloaded"
                          f" ({getattr(exc, 'reason', exc)}); {fix}remove weights_backbone from [model.kwargs]",
                          key="model.kwargs") from None
    except TypeError as exc:
        raise PresetError(f"{cfg.arch} does not take these kwargs: {exc}", key="model.kwargs") from None
    except ValueError as exc:
        raise PresetError(f"{cfg.arch}: {exc}", key="model.kwargs") from None
    if file_weights:
        note = _load_file_weights(model, file_weights)
    return model, note


def _looks_like_file(name: str) -> bool:
    return name.endswith((".pt", ".pth", ".bin", ".ckpt")) or "/" in name or os.sep in name


def _fetch_weights(weights) -> bool:
    """True when the file is in the hub cache or could be downloaded into it now."""
    from torch.hub import download_url_to_file

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / os.path.basename(weights.url)
    if path.is_file():
        return True
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # an offline box should fail fast, not hang
    try:
        cache.mkdir(parents=True, exist_ok=True)
        download_url_to_file(weights.url, str(path), progress=False)
        return True
    except Exception:
        return False
    finally:
        socket.setdefaulttimeout(old)


def _load_file_weights(model: nn.Module, path_text: str) -> str:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise PresetError(f"no weights file {path}; give a .pth state_dict, a weights name, or \"none\"",
                          key="model.weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PresetError(f"cannot read {path} as a state_dict: {describe_load_error(exc)}",
                          key="model.weights") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise PresetError(f"{path} does not fit this model: {first[-1].strip() if first else exc}",
                          key="model.weights") from None
    if len(missing) == len(model.state_dict()):
        raise PresetError(f"{path} shares no parameter names with this model", key="model.weights")
    return f"{path.name}" + (f" ({len(missing)} missing keys)" if missing else "")


# --------------------------------------------------------------------------- head swap


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier: the last Linear, or a 1x1 Conv2d after it (squeezenet); for a torchvision
    segmentation model, its main classifier's final 1x1 conv."""
    seg = segmentation_heads(model)
    if seg:
        return seg[0], model.get_submodule(seg[0])
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        ):
            head = (name, module)
    if head is None:
        raise PresetError("model has no Linear or 1x1 Conv2d classifier to replace; drop model.num_classes",
                          key="model.num_classes")
    return head


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _is_1x1(module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


def segmentation_heads(model: nn.Module) -> list[str]:
    """The final 1x1 convs of a torchvision segmentation model, main head first: classifier.4 and
    aux_classifier.4 (FCN; DeepLabV3's main head ends at .4 too), classifier.low_classifier and
    classifier.high_classifier (LRASPP, whose two outputs are summed). [] for any other model."""
    try:
        from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3
    except ImportError:
        return []
    if isinstance(model, LRASPP):
        names = ["classifier.high_classifier", "classifier.low_classifier"]
    elif isinstance(model, (FCN, DeepLabV3)):
        names = []
        for attr in ("classifier", "aux_classifier"):
            head = getattr(model, attr, None)
            if isinstance(head, nn.Sequential) and len(head) and _is_1x1(head[-1]):
                names.append(f"{attr}.{len(head) - 1}")
    else:
        return []
    return [n for n in names if _is_1x1(model.get_submodule(n))]


def head_names(model: nn.Module) -> list[str]:
    """The head `freeze_backbone` leaves trainable when none was replaced: a segmentation model's
    final classifier convs, else the module `find_head` finds."""
    seg = segmentation_heads(model)
    if seg:
        return seg
    try:
        return [find_head(model)[0]]
    except PresetError:
        raise PresetError("model has no Linear or 1x1 Conv2d head to leave trainable; use model.freeze"
                          " to name what to freeze instead", key="model.freeze_backbone") from None


def replace_head(model: nn.Module, num_classes: int) -> list[str]:
    """Swap the classifier (and auxiliary classifiers of the same width) for `num_classes` outputs.
    Returns the names of the modules replaced (freeze_backbone leaves them trainable)."""
    seg = segmentation_heads(model)
    if seg:  # by name: an ASPP or LRASPP 1x1 conv of the same width is not a head
        targets = [(n, m) for n in seg if (m := model.get_submodule(n)).out_channels != num_classes]
    else:
        _, head = find_head(model)
        old = _out_features(head)
        if old == num_classes:
            return []
        targets = [(n, m) for n, m in model.named_modules()
                   if (isinstance(m, nn.Linear) and m.out_features == old) or (_is_1x1(m) and m.out_channels == old)]
    replaced = []
    for name, module in targets:
        if isinstance(module, nn.Linear):
            new = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
        else:
            new = nn.Conv2d(module.in_channels, num_classes, 1, bias=module.bias is not None)
        new = new.to(device=module.weight.device, dtype=module.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced.append(name)
    for attr in ("num_classes",):
        if hasattr(model, attr) and isinstance(getattr(model, attr), int):
            setattr(model, attr, num_classes)
    return replaced


# --------------------------------------------------------------------------- freezing


def check_prefixes(model: nn.Module, prefixes: list[str], key: str) -> None:
    names = module_names(model)
    param_names = [n for n, _ in model.named_parameters()]
    for i, prefix in enumerate(prefixes):
        if not any(matches(n, prefix) for n in param_names):
            top = sorted({n.split(".")[0] for n in names})
            hint = did_you_mean(prefix, names) or f"; top-level modules: {', '.join(top)}"
            raise PresetError(f'"{prefix}" matches no module with parameters{hint}', key=f"{key}[{i}]")


def freeze_backbone(model: nn.Module, head: list[str]) -> None:
    """Freeze every parameter outside the modules named in `head` (fastai's freeze())."""
    for name, param in model.named_parameters():
        if not any(matches(name, h) for h in head):
            param.requires_grad_(False)


def apply_freeze(model: nn.Module, prefixes: list[str], key: str) -> None:
    check_prefixes(model, prefixes, key)
    for name, param in model.named_parameters():
        if any(matches(name, p) for p in prefixes):
            param.requires_grad_(False)
