"""Losses a preset can name as [loss] name = "examples.losses:DiceLoss" (the other keys of [loss]
are the class's keyword arguments). A loss is called as loss(outputs, targets) and returns one
number (a scalar tensor) that depends on the model's weights.

    [loss]
    name = "examples.losses:DiceLoss"
    ce_weight = 0.5      # dice + 0.5 x cross-entropy
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DiceLoss(nn.Module):
    """Soft Dice loss for segmentation, as a user would write it.

    outputs: (N, C, H, W) logits; targets: (N, H, W) int64 class indices. The probabilities are
    softmax(outputs) over the classes and the targets become one-hot (N, C, H, W). Per class c,
    summed over the whole batch (every sample and pixel):

        dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)

    and the loss is 1 - mean(dice_c) over the classes (the background too, unless
    `include_background` is false). `smooth` keeps an empty class from dividing by zero.
    With `ce_weight` > 0 the cross-entropy is added: dice + ce_weight * CE (a common mix: CE gives
    well-shaped gradients early, Dice rewards the overlap the metric measures).
    """

    def __init__(self, smooth: float = 1.0, ce_weight: float = 0.0, include_background: bool = True):
        super().__init__()
        self.smooth = smooth
        self.ce_weight = ce_weight
        self.include_background = include_background

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_classes = outputs.shape[1]
        probs = outputs.float().softmax(dim=1)
        one_hot = F.one_hot(targets.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)  # sum over the batch and the pixels: one value per class
        intersection = (probs * one_hot).sum(dims)
        total = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        loss = 1 - dice.mean()
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(outputs.float(), targets.long())
        return loss
