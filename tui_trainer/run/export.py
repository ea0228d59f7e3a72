"""`tui-trainer export RUN_DIR|CHECKPOINT --out model.pt`: the model's weights as a plain state_dict.

A checkpoint holds the whole trainer state (optimizer, RNG, config...); the export is only
`state["model"]`, so `model.load_state_dict(torch.load("model.pt", weights_only=True))` works as tutorials do it,
without tui-trainer installed. A "module." (DistributedDataParallel) or "_orig_mod."
(torch.compile) prefix that every key has is removed. The file is written atomically (temp file,
fsync, rename), and an existing file is only replaced with --force.

A run directory gives its checkpoints/best.pt when there is one, else last.pt. Without --out the
file is `<run name>-<checkpoint name>.pt` in the current folder (tiny-best.pt). Every bad input is
one line and exit 2: a missing path, a file that is not a checkpoint, --out in a missing folder.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tui_trainer.errors import UserError
from tui_trainer.text.format import human_bytes, metric_text

PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile (either order when both were used)
SOURCE = "export"


def export(source: str | Path, out: str | Path | None = None, *, force: bool = False) -> int:
    from tui_trainer.engine import checkpoint

    ckpt = find_checkpoint(Path(source))
    try:
        state = checkpoint.load(ckpt)
    except UserError as err:
        err.source = SOURCE  # checkpoint.load names --resume, its usual caller
        raise
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"{ckpt} holds no model weights", source=SOURCE)
    weights, stripped = strip_prefixes(weights)
    dest = Path(out) if out is not None else Path(default_name(state, ckpt))
    check_out(dest, ckpt, force=force)
    try:
        checkpoint.atomic_save(weights, dest)
    except OSError as exc:  # CheckpointWriteError: one line already ("disk full: ...")
        raise UserError(f"cannot write {dest}: {exc}", source=SOURCE) from None
    print(f"exported {ckpt} ({describe(state)})\n"
          f"  to {dest}: {len(weights)} tensors, {human_bytes(dest.stat().st_size)}"
          + (f", key prefix {stripped!r} removed" if stripped else "")
          + f'\n  load: model.load_state_dict(torch.load("{dest}", weights_only=True))')
    return 0


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file as it is; a run directory (or its checkpoints/ folder): best.pt, else last.pt."""
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"no run directory or checkpoint file {path}", source=SOURCE)
    if not path.is_dir():
        raise UserError(f"{path} is not a run directory or a checkpoint file", source=SOURCE)
    for folder in (path / "checkpoints", path):
        for name in ("best.pt", "last.pt"):
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"{path} has no checkpoints/best.pt or checkpoints/last.pt (give a checkpoint file instead)",
                    source=SOURCE)


def strip_prefixes(weights: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Remove a leading "module." / "_orig_mod." (repeatedly) when every key has it; returns the
    weights and what was removed ("" when nothing). The state_dict's `_metadata` (per-module
    versions that load_state_dict reads, e.g. BatchNorm's) is renamed the same way; the wrapper's
    own entry goes."""
    removed = ""
    while True:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in weights)), None)
        if prefix is None:
            return weights, removed
        stripped = OrderedDict((k[len(prefix):], v) for k, v in weights.items())
        meta = getattr(weights, "_metadata", None)
        if isinstance(meta, dict):
            root = prefix[:-1]
            stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
                ("" if k == root else k[len(prefix):], v) for k, v in meta.items()
                if k == root or k.startswith(prefix))
        weights = stripped
        removed += prefix


def default_name(state: dict[str, Any], ckpt: Path) -> str:
    """`<run name>-<checkpoint name>.pt`: tiny-best.pt, tiny-epoch-0003.pt (in the current folder)."""
    run = str(state.get("run_name") or "model")
    run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run).lstrip(".") or "model"
    return f"{run}-{ckpt.stem}.pt"


def check_out(dest: Path, ckpt: Path, *, force: bool) -> None:
    if dest.is_dir():
        raise UserError(f"--out {dest} is a folder; give a file name, e.g. {dest / 'model.pt'}", source=SOURCE)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {dest}: no folder {parent} (make it first)", source=SOURCE)
    if dest.exists():
        if os.path.samefile(dest, ckpt):
            raise UserError(f"--out {dest} is the checkpoint being exported; give another file", source=SOURCE)
        if not force:
            raise UserError(f"--out {dest} exists; add --force to overwrite it", source=SOURCE)


def describe(state: dict[str, Any]) -> str:
    """"epoch 2, step 14, val_loss 0.4123" (the monitored value when it is this checkpoint's)."""
    parts = []
    epoch, step, batch = state.get("epoch"), state.get("step"), state.get("batch_in_epoch") or 0
    if isinstance(epoch, int):
        parts.append(f"epoch {epoch}" + (f" + {batch} batches" if batch else ""))
    if isinstance(step, int):
        parts.append(f"step {step}")
    text = ", ".join(parts)
    best = state.get("best")
    config = state.get("config")
    monitor = "val_loss"
    if isinstance(config, dict) and isinstance(config.get("checkpoint"), dict):
        monitor = config["checkpoint"].get("monitor", monitor)
    if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
        value = f"{monitor} {metric_text(best['value'])}"
        if best.get("epoch") == epoch and not batch:
            text += f", {value}"
        elif best.get("epoch") is not None:
            text += f"; best {value} was at epoch {best['epoch']}"
    return text or "no position recorded"
