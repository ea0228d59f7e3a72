"""The public Python API, re-exported by `tui_trainer` (its names load on first use):

- `fit(model, train_data, val_data, optimizer=..., loss=..., ...) -> Result`: the engine with your
  objects (run/fit.py).
- `loop(train_fn, model=..., optimizer=..., scheduler=...) -> int`: your own loop, steerable
  (run/loop.py), with `Run` (what `train_fn` gets) and `seeded_loader` (a DataLoader whose order
  is a function of the seed and the epoch: an exact resume mid-epoch).

This module is the one layer above `ui`: it gives the runs started from Python the monitor by
registering the app's runner with run/fit.py (`run` itself never imports the screen).
"""

from __future__ import annotations

from tui_trainer.run import fit as _fit
from tui_trainer.run.fit import Result, fit
from tui_trainer.run.loop import Run, loop, seeded_loader
from tui_trainer.ui.launch import run_app

_fit.app_runner = run_app

__all__ = ["fit", "Result", "loop", "Run", "seeded_loader"]
