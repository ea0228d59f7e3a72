"""Real engine events for the unit tests, built with their constructors on a tiny model."""

from __future__ import annotations

import torch
from torch import nn

from tui_trainer.engine import events as ev
from tui_trainer.parts.layers import layer_rows
from tui_trainer.parts.optim import LrPlan

T0 = 1_800_000_000.0


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # rows "0" (15 params), "2" (8)


def run_started(**changes) -> ev.RunStarted:
    """A RunStarted of a 2-epoch, 4-steps-per-epoch run of `tiny_model` with a hand-made plan."""
    layers = layer_rows(tiny_model(), torch.zeros(1, 4))
    plan = LrPlan(groups=("default",), steps=tuple(range(8)),
                  lrs=((0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05),), total_steps=8, adaptive=False)
    fields = dict(run_name="unit", run_dir="/runs/unit-1", device="cpu", device_name="cpu", amp="off", epochs=2,
                  steps_per_epoch=4, total_steps=8, batch_size=16, start_step=0, start_epoch=1, layers=layers,
                  trainable=(True, True), params_total=23, params_trainable=23, plan=plan, lrs=(0.1,),
                  manual_factor=1.0, weights="random init", data="digits: 160 train / 40 val, 10 classes",
                  monitor="val_loss", time=T0)
    fields.update(changes)
    return ev.RunStarted(**fields)


def epoch_end(epoch: int = 1, **changes) -> ev.EpochEnd:
    fields = dict(epoch=epoch, step=4 * epoch, train_loss=1.0, val_loss=0.9, val_acc=0.5, seconds=0.4,
                  monitor="val_loss", value=0.9, best=0.9, best_epoch=epoch, improved=True, bad_epochs=0,
                  patience=None, time=T0 + epoch)
    fields.update(changes)
    return ev.EpochEnd(**fields)
