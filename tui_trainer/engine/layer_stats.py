"""Per-layer gradient norm and update-to-weight ratio |dw|/|w| of one optimizer step.

Taken now and then (time-based, ~2 Hz), never every step: it snapshots the weights before the
step and reads one batch of norms after it, with a single host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from tui_trainer.parts.layers import LayerInfo, matches


class UpdateProbe:
    """`optimizer`: the one whose step is timed (hooks around it); a parameter it does not hold is
    moved by another optimizer or by nothing, so it counts in ‖grad‖ but not in |dw|/|w| (a row of
    such parameters alone has no ratio: "-", not a false 0). None: every parameter."""

    def __init__(self, model: nn.Module, layers: tuple[LayerInfo, ...], optimizer=None):
        named = list(model.named_parameters())
        self.params = [p for _, p in named]
        # membership[r, i] = 1 when parameter i lies in the subtree of layer row r
        self.membership = torch.tensor(
            [[1.0 if matches(n, row.name) else 0.0 for n, _ in named] for row in layers]
        )
        held = None if optimizer is None else {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.stepped = torch.tensor([1.0 if held is None or id(p) in held else 0.0 for p in self.params])
        self._before: list[torch.Tensor] | None = None
        self._grad_sq: torch.Tensor | None = None
        self._live: list[int] = []

    def before_step(self) -> None:
        """Call after backward (and unscale), before optimizer.step()."""
        self._live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not self._live:
            self._before = None
            return
        live = [self.params[i] for i in self._live]
        with torch.no_grad():
            norms = torch._foreach_norm([p.grad for p in live])
            self._grad_sq = torch.stack([n.float() for n in norms]) ** 2
            self._before = [p.detach().clone() for p in live]

    def after_step(self) -> tuple[tuple[float | None, ...], tuple[float | None, ...]]:
        rows = self.membership.shape[0]
        if self._before is None:
            return (None,) * rows, (None,) * rows
        live = [self.params[i] for i in self._live]
        with torch.no_grad():
            deltas = torch._foreach_sub([p.detach() for p in live], self._before)
            d_sq = torch.stack([n.float() for n in torch._foreach_norm(deltas)]) ** 2
            w_sq = torch.stack([n.float() for n in torch._foreach_norm(self._before)]) ** 2
            stacked = torch.stack([self._grad_sq, d_sq, w_sq]).cpu()  # the one host sync
        self._before = None
        m = self.membership[:, self._live]
        grad_sq = m @ stacked[0]
        stepped = m * self.stepped[self._live]  # the ratio counts what this optimizer moves
        upd_sq, weight_sq = stepped @ stacked[1], stepped @ stacked[2]
        has, moved = m.sum(dim=1) > 0, stepped.sum(dim=1) > 0
        grad = [float(g.sqrt()) if h else None for g, h in zip(grad_sq, has)]
        ratio = [float((u / w).sqrt()) if h and w > 0 else None for u, w, h in zip(upd_sq, weight_sq, moved)]
        return tuple(grad), tuple(ratio)
