"""UpdateProbe (tui_trainer/engine/layer_stats.py) on tiny modules with hand-set weights: the grad
norm and |dw|/|w| of one real optimizer step, per layer row (a container row sums its subtree)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tui_trainer.engine.layer_stats import UpdateProbe
from tui_trainer.parts.layers import layer_rows


def hand_model() -> nn.Module:
    """body.0: w = [[3, 4]] (|w| = 5); body.1: w = [[2]]; head: w = [[1]], b = [0]."""
    model = nn.Sequential(OrderedDict(
        body=nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False)),
        head=nn.Linear(1, 1),
    ))
    with torch.no_grad():
        model.body[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        model.body[1].weight.copy_(torch.tensor([[2.0]]))
        model.head.weight.copy_(torch.tensor([[1.0]]))
        model.head.bias.zero_()
    return model


def probe_one_step(model: nn.Module, lr: float = 0.5, x=((1.0, 2.0),), optimizer=None):
    rows = layer_rows(model)
    probe = UpdateProbe(model, rows)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad(set_to_none=True)
    model(torch.tensor(x)).sum().backward()
    probe.before_step()
    opt.step()
    return [r.name for r in rows], probe.after_step()


def test_rows_of_the_hand_model():
    assert [(r.name, r.own) for r in layer_rows(hand_model())] == [
        ("body", False), ("body.0", True), ("body.1", True), ("head", True)]


def test_grad_norms_and_update_ratios_of_one_sgd_step():
    # y = head(body1(body0(x))) = 1 * (2 * (3*1 + 4*2)) + 0 = 22 for x = [1, 2]; loss = y
    # d/d body.0.w = head.w * body1.w * x = [2, 4]          |g| = sqrt(20)
    # d/d body.1.w = head.w * (body0 out = 11) = 11          |g| = 11
    # d/d head.w = body1 out = 22, d/d head.b = 1            |g| = sqrt(485)
    # SGD lr 0.5: dw = -0.5 g, so |dw|/|w| = 0.5 |g| / |w| over each row's parameters
    names, (grad, ratio) = probe_one_step(hand_model(), lr=0.5)
    assert names == ["body", "body.0", "body.1", "head"]
    assert grad == pytest.approx((math.sqrt(20 + 121), math.sqrt(20), 11.0, math.sqrt(485)), rel=1e-6)
    # body: |w|^2 = 25 + 4; head: |w|^2 = 1 + 0 (bias zero)
    assert ratio == pytest.approx((0.5 * math.sqrt(141) / math.sqrt(29), 0.5 * math.sqrt(20) / 5,
                                   0.5 * 11 / 2, 0.5 * math.sqrt(485) / 1), rel=1e-6)
    assert all(isinstance(v, float) for v in grad + ratio)


def test_the_probe_does_not_change_the_step():
    model = hand_model()
    probe_one_step(model, lr=0.5)
    assert model.body[0].weight.tolist() == [[2.0, 2.0]]  # [3, 4] - 0.5 * [2, 4]
    assert model.head.bias.tolist() == [-0.5]


def test_ratio_is_the_real_update_of_any_optimizer_not_lr_times_grad():
    # Adam's first step moves every weight by lr (sign of the gradient), whatever the gradient.
    model = hand_model()
    _, (grad, ratio) = probe_one_step(model, optimizer=torch.optim.Adam(model.parameters(), lr=0.1))
    assert grad[1] == pytest.approx(math.sqrt(20), rel=1e-6)
    assert ratio[1] == pytest.approx(0.1 * math.sqrt(2) / 5, rel=1e-4)
    assert ratio[2] == pytest.approx(0.1 / 2, rel=1e-4)


def test_frozen_layers_have_no_statistics_and_containers_sum_the_rest():
    model = hand_model()
    model.body[0].weight.requires_grad_(False)
    names, (grad, ratio) = probe_one_step(model, lr=0.5)
    assert grad[1] is None and ratio[1] is None, "frozen: no gradient, no update"
    assert grad[0] == pytest.approx(11.0) and grad[2] == pytest.approx(11.0), "body is body.1 alone now"
    assert ratio[0] == pytest.approx(0.5 * 11 / 2) == ratio[2]
    assert model.body[0].weight.tolist() == [[3.0, 4.0]]


def test_zero_weights_give_a_gradient_but_no_ratio():
    model = hand_model()
    with torch.no_grad():
        model.head.weight.zero_()
    _, (grad, ratio) = probe_one_step(model, lr=0.5)
    assert grad[3] == pytest.approx(math.sqrt(22.0 ** 2 + 1))
    assert ratio[3] is None, "|dw|/|w| is undefined for |w| = 0"
    assert ratio[1] is not None


def test_nothing_measured_gives_one_none_per_row():
    model = hand_model()
    rows = layer_rows(model)
    probe = UpdateProbe(model, rows)
    assert probe.after_step() == ((None,) * 4, (None,) * 4), "after_step without before_step"
    probe.before_step()  # no backward yet: no gradients at all
    assert probe.after_step() == ((None,) * 4, (None,) * 4)


def test_each_measurement_is_one_step():
    model = hand_model()
    rows = layer_rows(model)
    probe = UpdateProbe(model, rows)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.tensor([[1.0, 2.0]])
    model(x).sum().backward()
    probe.before_step()
    opt.step()
    first = probe.after_step()
    assert probe.after_step() == ((None,) * 4, (None,) * 4), "the snapshot is used once"
    opt.zero_grad(set_to_none=True)
    model(x).sum().backward()
    probe.before_step()
    opt.step()
    second = probe.after_step()
    assert second[0] != pytest.approx(first[0]), "new weights, new gradients"
    # body.0 after the first step: w = [2, 2]; gradient head.w * body1.w * x with head.w = 1 - 0.5*22 = -10,
    # body1.w = 2 - 0.5*11 = -3.5: g = 35 * [1, 2], |g| = 35 sqrt(5)
    assert second[0][1] == pytest.approx(35 * math.sqrt(5), rel=1e-6)


def test_rows_follow_the_layer_table_not_the_parameter_order():
    model = hand_model()
    rows = tuple(reversed(layer_rows(model)))
    probe = UpdateProbe(model, rows)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.tensor([[1.0, 2.0]])).sum().backward()
    probe.before_step()
    opt.step()
    grad, _ = probe.after_step()
    assert grad == pytest.approx((math.sqrt(485), 11.0, math.sqrt(20), math.sqrt(141)), rel=1e-6)


def test_a_parameter_another_optimizer_moves_has_a_grad_norm_but_no_ratio():
    """A loop given one of two optimizers (a GAN's): the rows it does not step show ‖grad‖ and "-"
    for |dw|/|w| (a false 0 before); a row it steps in part counts that part."""
    model = hand_model()
    rows = layer_rows(model)
    mine = torch.optim.SGD([model.body[0].weight, model.head.weight], lr=0.5)
    other = torch.optim.SGD([model.body[1].weight, model.head.bias], lr=0.5)
    probe = UpdateProbe(model, rows, mine)
    model(torch.tensor(((1.0, 2.0),))).sum().backward()
    probe.before_step()
    mine.step()
    grad, ratio = probe.after_step()
    other.step()  # (after the probe's read, as a GAN's second update)
    by = dict(zip([r.name for r in rows], zip(grad, ratio)))
    assert all(g is not None and g > 0 for g in grad)
    assert by["body.1"][1] is None and by["body.0"][1] > 0
    # body: body.0 alone (|w| 5, its update 0.5 * |grad|); head: its weight alone (|w| 1, grad = the
    # body's output 2 * (3 + 8) = 22), not the bias, which the other optimizer moves
    g0 = by["body.0"][0]
    assert by["body"][1] == pytest.approx(0.5 * g0 / 5, rel=1e-5) and by["head"][1] == pytest.approx(11.0, rel=1e-5)
