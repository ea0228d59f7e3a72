"""Model: a torchvision builder (or "pkg.mod:factory"), its weights, a new head, frozen prefixes."""

from __future__ import annotations

import os
import socket
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
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def check_arch(cfg: ModelSection) -> None:
    if target.is_target(cfg.arch):
        return
    archs = torchvision_archs()
    if cfg.arch not in archs:
        raise PresetError(
            f'unknown architecture "{cfg.arch}"{did_you_mean(cfg.arch, archs)}'
            ' (any torchvision.models classifier, or "package.module:factory")',
            key="model.arch",
        )


def build_model(cfg: ModelSection) -> BuiltModel:
    check_arch(cfg)
    warnings: list[str] = []
    if target.is_target(cfg.arch):
        model, note = _custom_model(cfg)
    else:
        model, note = _torchvision_model(cfg, warnings)
    if cfg.num_classes is not None:
        replace_head(model, cfg.num_classes)
    apply_freeze(model, cfg.freeze, key="model.freeze")
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
    try:
        model = tvm.get_model(cfg.arch, weights=weights, **cfg.kwargs)
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
    """The classifier: the last Linear, or a 1x1 Conv2d after it (squeezenet)."""
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


def replace_head(model: nn.Module, num_classes: int) -> list[str]:
    """Swap the classifier (and auxiliary classifiers of the same width) for `num_classes` outputs."""
    _, head = find_head(model)
    old = _out_features(head)
    if old == num_classes:
        return []
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old:
            new = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.out_channels == old:
            new = nn.Conv2d(module.in_channels, num_classes, 1, bias=module.bias is not None)
        else:
            continue
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


def apply_freeze(model: nn.Module, prefixes: list[str], key: str) -> None:
    check_prefixes(model, prefixes, key)
    for name, param in model.named_parameters():
        if any(matches(name, p) for p in prefixes):
            param.requires_grad_(False)
