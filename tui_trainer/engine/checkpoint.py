"""Checkpoints: atomic writes, last/best as hard links, keep-N rotation, weights_only loading.

A checkpoint file only ever appears under its final name complete: it is written to a hidden
temp file in the same directory (".name.pt.<pid>.tmp"), flushed, fsynced, renamed with
os.replace, and the directory is fsynced. `last.pt` and `best.pt` are extra names (hard links)
for a file already written, so a save costs one write however many names it gets.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from tui_trainer.errors import UserError, describe_load_error

FORMAT = "tui-trainer/1"
_TMP = re.compile(r"^\..+\.tmp$")


class CheckpointDir:
    def __init__(self, root: str | Path, keep_last: int):
        self.root = Path(root)  # made by the first write: a run that never starts leaves nothing
        self.keep_last = keep_last

    def clean_stray(self) -> list[Path]:
        """Remove temp files a killed process left behind."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if _TMP.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def write(self, name: str, payload: dict[str, Any]) -> tuple[Path, int]:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        atomic_save(payload, path)
        return path, path.stat().st_size

    def alias(self, path: Path, name: str) -> Path:
        """Give an existing checkpoint another name, atomically (hard link, else copy)."""
        dest = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
            _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(self.root)
        return dest

    def rotate(self, pattern: str = "epoch-*.pt") -> list[Path]:
        """Keep the newest `keep_last` files matching `pattern` (0 keeps none)."""
        files = sorted(self.root.glob(pattern))
        doomed = files[: max(0, len(files) - self.keep_last)]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Load one of our checkpoints safely (weights_only: no code runs). Bad files are UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give a .pt file from runs/*/checkpoints/ or --resume auto",
                        source="--resume")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        why = describe_load_error(exc)
        raise UserError(f"cannot load {path}: {why}", source="--resume") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a tui-trainer checkpoint (no '{FORMAT}' marker)", source="--resume")
    return state


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
