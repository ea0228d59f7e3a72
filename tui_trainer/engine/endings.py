"""How a run ends: exactly one Finished or Failed, the last event of every run.

- `finish`: the loop returned a status (completed, early_stopped, stopped, signal). The last losses
  are reported and a final checkpoint is written unless this step is already saved; a final save
  that fails ends the run as Failed (`final_save_failed`), never as a quiet exit 0 or 128+N.
- `end_nonfinite`: a non-finite loss or weight (train.nonfinite = "stop"): Finished, exit 1, and
  where to resume from (the last checkpoint, written before the weights went bad).
- `fail`: any other exception. Failed with one line a person can act on (`describe_failure`), the
  traceback, and an emergency checkpoint when the weights are as the last completed step left them.

Finished and Failed carry `step` and `epoch` as every event does (events.py): where the run
stands, the last step done and its epoch (`Trainer.epoch_of_step`).

These are the trainer's own endings, kept out of trainer.py so that the loop reads on one screen:
they take the trainer and use its state and helpers (`_report`, `_save`, `_emit`) as its methods did.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING

import torch

from tui_trainer.engine.events import Failed, Finished
from tui_trainer.engine.stopping import NonFinite, early_stop_message

if TYPE_CHECKING:
    from tui_trainer.engine.trainer import Trainer


def finish(t: Trainer, status: str, t0: float) -> Finished | Failed:
    t._report()
    if t.step != t._saved_step and t._save(("final", "last")) is None:
        return final_save_failed(t)
    messages = {
        "completed": f"finished {t.step} steps",
        "early_stopped": early_stop_message(t.es_monitor, t.early.best.bad_epochs if t.early else 0),
        "stopped": {"callback": "stopped by a callback after a clean save", "cancelled": "stopped after a clean save"
                    }.get(t._stop.reason if t._stop else "", "stopped by the user after a clean save"),
        "signal": f"stopped by signal {t._stop.signum if t._stop else ''} after a clean save",
    }
    code = 128 + t._stop.signum if status == "signal" and t._stop and t._stop.signum else 0
    t._set_state("finished")
    event = Finished(status, t.step, t.epoch_of_step, time.monotonic() - t0, code, messages[status],
                     t.best.value, t.best.epoch, _str(t._best_path), _str(t._last_path), t.best_monitor)
    t._emit(event)
    return event


def final_save_failed(t: Trainer) -> Failed:
    """The run ended but its state could not be written: exit 1, never a quiet 0 or 128+N."""
    last = t.checkpoints.root / "last.pt"
    have = (f"; the newest checkpoint on disk is {last}; free space (or fix the directory) and resume from it"
            if last.exists() else "; no checkpoint was written; free space (or fix the directory) and run again")
    t._set_state("failed")
    event = Failed(t.step, t.epoch_of_step,
                   f"final checkpoint NOT saved at step {t.step} ({t._save_error}){have}", "", None)
    t._emit(event)
    return event


def end_nonfinite(t: Trainer, exc: NonFinite, t0: float) -> Finished:
    last = t._last_path or (t.checkpoints.root / "last.pt" if (t.checkpoints.root / "last.pt").exists() else None)
    where = f"; resume from the last finite checkpoint {last}" if last else "; no checkpoint was written"
    t._set_state("failed")
    # exc.step is at most t.step and in the same epoch: every epoch end reports its losses first
    event = Finished("nonfinite", exc.step, t.epoch_of_step, time.monotonic() - t0, 1,
                     f"{exc}: training stopped{where} (lower optimizer.lr, set grad_clip_norm,"
                     " or train.nonfinite = \"skip\")",
                     t.best.value, t.best.epoch, _str(t._best_path), _str(last), t.best_monitor)
    t._emit(event)
    return event


def fail(t: Trainer, exc: BaseException) -> Failed:
    tb = traceback.format_exc()
    t.dist.go_alone()  # no collective from here on: the other ranks are elsewhere (Dist.go_alone)
    emergency = None
    if not t._in_update:  # the weights are as the last completed step left them
        # _save reports the pending losses first (completed steps: keep them); a non-finite
        # one among them makes it raise, and then no emergency checkpoint is written
        try:
            emergency = t._save(("emergency", "last"))
        except Exception:  # noqa: BLE001 - the original failure is what matters
            emergency = None
    t._set_state("failed")
    event = Failed(t.step, t.epoch_of_step, describe_failure(exc, t.batch_size), tb, _str(emergency))
    t._emit(event)
    return event


def describe_failure(exc: BaseException, batch_size: int) -> str:
    """One line a person can act on."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if text.startswith("Caught ") and lines:  # re-raised from a DataLoader worker: the cause is last
        text = lines[-1]
        if ":" in text:
            text = text.split(":", 1)[1].strip()
    elif lines:
        text = lines[0]
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return (f"out of memory at batch_size {batch_size}: try a smaller data.batch_size, train.amp = \"bf16\","
                " a smaller data.image_size, or freezing more layers")
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return (f"{type(exc).__name__}: {text[:200]}: a data loading process died (killed, or out of host"
                " memory?); try a smaller data.num_workers or data.batch_size")
    return f"{type(exc).__name__}: {text[:300]}"


def _str(path) -> str | None:
    return str(path) if path else None
