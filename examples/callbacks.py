"""Callbacks a preset can name. A callback is any object with `on_event(self, event, control)`:
it sees every event the UI sees, on the training thread, and steers the run with
`control.send(command)`; commands are applied at the next step boundary.

    [[callbacks]]
    target = "examples.callbacks:UnfreezeAt"
    epoch = 3                  # when epoch 3 starts (1-based)
    prefixes = ["layer4"]      # module-name prefixes, as in model.freeze

    [[callbacks]]
    target = "examples.callbacks:ReduceLrOnSpike"
    factor = 0.5
"""

from __future__ import annotations

from collections import deque

from tui_trainer.engine.commands import ScaleLr, SetTrainable
from tui_trainer.engine.events import EpochEnd, RunStarted, StepReport


class UnfreezeAt:
    """Unfreeze `prefixes` when epoch `epoch` starts: train the new head first, then the backbone."""

    def __init__(self, epoch: int, prefixes: list[str]):
        if epoch < 1:
            raise ValueError("epoch is 1-based: use 1 or more")
        self.epoch = epoch
        self.prefixes = tuple(prefixes)
        self.done = False

    def on_event(self, event, control) -> None:
        if self.done:
            return
        if isinstance(event, RunStarted):
            first_step = (self.epoch - 1) * event.steps_per_epoch
            if event.start_step == first_step:  # a fresh run at epoch 1, or a resume exactly there
                self._unfreeze(control)
            elif event.start_step > first_step:
                # Resumed past that point: the checkpoint's trainable map is the truth (layers the
                # user froze again by hand must stay frozen).
                self.done = True
        elif isinstance(event, EpochEnd) and event.epoch == self.epoch - 1:
            self._unfreeze(control)

    def _unfreeze(self, control) -> None:
        control.send(SetTrainable(self.prefixes, True))
        self.done = True


class ReduceLrOnSpike:
    """Scale the LR by `factor` when a report's loss exceeds `ratio` x the mean of the last `window`
    reports; then wait `cooldown` reports before it may fire again."""

    def __init__(self, factor: float = 0.5, ratio: float = 2.0, window: int = 10, cooldown: int = 10):
        if not 0 < factor < 1:
            raise ValueError("factor must be between 0 and 1")
        self.factor, self.ratio, self.cooldown = factor, ratio, cooldown
        self.recent: deque[float] = deque(maxlen=window)
        self.quiet = 0

    def on_event(self, event, control) -> None:
        if not isinstance(event, StepReport) or event.loss != event.loss:  # skip NaN reports
            return
        loss = event.loss
        if self.quiet:
            self.quiet -= 1
        elif len(self.recent) == self.recent.maxlen and loss > self.ratio * (sum(self.recent) / len(self.recent)):
            control.send(ScaleLr(self.factor))
            self.quiet = self.cooldown
            self.recent.clear()  # the old level is no reference for the new LR
            return
        self.recent.append(loss)


class StopAtLoss:
    """A tutorial-style callback: plain hooks instead of on_event, no events or commands to know.

        [[callbacks]]
        target = "examples.callbacks:StopAtLoss"
        threshold = 0.05         # stop once val_loss < 0.05
        halve_lr_at = 5          # optional: halve every group's LR when epoch 5 (0-based) starts

    How hooks work (tui_trainer/parts/callbacks.py): the trainer calls each hook a callback defines,
    on the training thread, passing only the parameters the hook names, chosen from epoch (0-based,
    as in `for epoch in range(epochs)`), step (optimizer steps done), model, optimizer, loss,
    metrics (or logs: the same dict: val_loss, val_acc, train_loss and each [[metrics]] value as
    val_<label>). Hooks: on_epoch_start, on_batch_end, on_validation_end, on_epoch_end.

    - A hook that returns True stops the run, after a checkpoint is saved (as pressing q does).
    - A hook that writes param_group["lr"] changes the LR by hand; the run adopts the change (the
      scheduler continues from it, the UI and metrics.csv show it, a checkpoint keeps it).
    """

    def __init__(self, threshold: float, halve_lr_at: int | None = None):
        self.threshold = threshold
        self.halve_lr_at = halve_lr_at

    def on_epoch_start(self, epoch, optimizer):
        if epoch == self.halve_lr_at:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5

    def on_validation_end(self, metrics):
        val_loss = metrics.get("val_loss")
        return val_loss is not None and val_loss < self.threshold
