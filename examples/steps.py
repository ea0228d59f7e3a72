"""Steps a preset can name as [step] fn = "examples.steps:two_inputs_step".

A step turns one batch into a loss: step(model, batch, loss_fn). The batch is whatever the
DataLoader gives (here a dict of tensors, already on the device); the trainer does the rest
(autocast, backward, accumulation, clipping, the optimizer step), so a step only runs the model
and the loss. Return the loss, or a dict {"loss", "outputs", "targets"}: the outputs and targets
feed the [[metrics]] (and val_acc). Validation calls the same step in eval mode under no_grad.
"""

from __future__ import annotations


def two_inputs_step(model, batch, loss_fn):
    """For examples.data:two_inputs batches: {"image": (N, 1, 8, 8), "features": (N, 4), "label": (N,)}."""
    out = model(batch["image"], batch["features"])
    return {"loss": loss_fn(out, batch["label"]), "outputs": out, "targets": batch["label"]}
