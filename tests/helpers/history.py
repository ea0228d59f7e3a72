"""A fixed run history for UI tests (no live trainer, no clock): the real small CNN's layer table,
a real planned OneCycle schedule, and a fixed run of reports, epochs, a freeze, a manual LR cut
and checkpoints."""

from __future__ import annotations

import math

import torch

from examples.models import small_cnn
from tui_trainer.config import OptimizerSection, SchedulerSection
from tui_trainer.engine import events as ev
from tui_trainer.parts.layers import layer_rows
from tui_trainer.parts.optim import plan_lr

T0 = 1_800_000_000.0  # fixed clock


def history() -> list[ev.Event]:
    torch.manual_seed(0)
    model = small_cnn(num_classes=10, width=8)
    layers = layer_rows(model, torch.zeros(1, 3, 32, 32))
    spe, epochs = 40, 5
    total = spe * epochs
    plan = plan_lr(OptimizerSection(name="AdamW", lr=0.003),
                   SchedulerSection(name="OneCycleLR", interval="step", max_lr=0.003),
                   ["default"], spe, total)
    trainable = tuple(True for _ in layers)
    n = sum(p.numel() for p in model.parameters())
    out: list[ev.Event] = [
        ev.StateChanged("starting", 0, time=T0),
        ev.RunStarted(run_name="snapshot", run_dir="runs/snapshot-20260101-000000", device="cpu", device_name="cpu",
                      amp="off", epochs=epochs, steps_per_epoch=spe, total_steps=total, batch_size=32, start_step=0,
                      start_epoch=1, layers=layers, trainable=trainable, params_total=n, params_trainable=n, plan=plan,
                      lrs=(plan.lrs[0][0],), manual_factor=1.0, weights="random init (offline)",
                      data="digits: 1438 train / 359 val, 10 classes", monitor="val_loss",
                      warnings=("weights: resnet18 IMAGENET1K_V1 unavailable offline; training from RANDOM INIT",),
                      time=T0),
        ev.StateChanged("running", 0, time=T0),
        ev.RunWarning(0, "weights: resnet18 IMAGENET1K_V1 unavailable offline; training from RANDOM INIT", time=T0),
    ]
    factor = 1.0
    step = 0
    for epoch in range(1, 4):
        for _ in range(spe // 10):
            first = step + 1
            step += 10
            losses = tuple(2.3 * math.exp(-s / 60) + 0.05 * math.sin(s) + 0.1 for s in range(first, step + 1))
            lr = plan.lrs[0][plan.steps.index(step)] * factor
            out.append(ev.StepReport(step, epoch, first, losses, (lr,), 812.5, (total - step) * 0.04,
                                     ev.MemorySample("cpu", rss=(900 + step) * 2**20), time=T0 + step))
        out.append(ev.LayerStats(step, tuple(0.5 / (i + 1) for i in range(len(layers))),
                                 tuple(1e-3 * (i + 1) for i in range(len(layers))), time=T0 + step))
        val = 1.6 / epoch
        out.append(ev.EpochEnd(epoch, step, 2.0 / epoch, val, 0.6 + 0.1 * epoch, 0.4, "val_loss", val, val, epoch,
                               True, 0, 3, time=T0 + step))
        out.append(ev.CheckpointSaved(step, epoch, f"runs/snapshot-20260101-000000/checkpoints/epoch-{epoch:04d}.pt",
                                      ("epoch", "last", "best"), 0.02, 1_234_567, time=T0 + step))
        if epoch == 2:
            frozen = tuple(False if r.name.split(".")[0] in ("0", "1") else True for r in layers)
            out.append(ev.TrainableChanged(step, ("0", "1"), False, frozen,
                                           n - sum(r.params for r in layers if r.name in ("0", "1")), n,
                                           time=T0 + step))
            factor = 0.5
            out.append(ev.LrChanged(step, (lr * factor,), factor, "manual", time=T0 + step))
    return out
