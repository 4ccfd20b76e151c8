"""Scaling rules, the warmup + decay schedule, parameter groups and optimisers."""

import math

import pytest
import torch
from torch import nn

from trainables.optim import (
    build_optimizer,
    lr_at_step,
    param_groups,
    scaled_lr,
    scaling_factor,
)


@pytest.mark.parametrize(
    "rule, expected", [("none", 0.1), ("linear", 0.8), ("sqrt", 0.1 * math.sqrt(8))]
)
def test_scaled_lr_goyal_reference(rule, expected):
    # Goyal et al.: lr 0.1 at batch 256; batch 2048 is k = 8.
    assert scaled_lr(0.1, rule, 2048, 256) == pytest.approx(expected)


def test_scaling_below_reference_shrinks_lr():
    assert scaling_factor("linear", 64, 256) == pytest.approx(0.25)
    assert scaling_factor("sqrt", 64, 256) == pytest.approx(0.5)


def test_unknown_rule_names_the_known_ones():
    with pytest.raises(ValueError, match="none, linear, sqrt"):
        scaling_factor("cubic", 64, 256)


def test_gradual_warmup_ramps_from_zero_to_peak():
    kw = dict(peak_lr=0.8, warmup_steps=10, total_steps=100, schedule="cosine")
    assert lr_at_step(0, **kw) == pytest.approx(0.08)
    assert lr_at_step(4, **kw) == pytest.approx(0.4)
    assert lr_at_step(9, **kw) == pytest.approx(0.8)  # the peak at the last warmup step
    assert lr_at_step(10, **kw) == pytest.approx(0.8)  # and the decay starts from it
    ramp = [lr_at_step(s, **kw) for s in range(11)]
    assert ramp == sorted(ramp)


def test_no_warmup_starts_at_peak_and_cosine_decays_to_floor():
    kw = dict(peak_lr=1.0, warmup_steps=0, total_steps=100, final_factor=0.01)
    assert lr_at_step(0, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at_step(50, schedule="cosine", **kw) == pytest.approx(0.505)
    assert lr_at_step(100, schedule="cosine", **kw) == pytest.approx(0.01)
    assert lr_at_step(50, schedule="linear", **kw) == pytest.approx(0.505)
    assert lr_at_step(99, schedule="constant", **kw) == 1.0


def test_warmup_ramps_below_the_reference_batch_too():
    """One protocol at every batch size (issue 32): a batch size whose scaled lr is below the
    reference lr ramps as a larger one does (Goyal et al.'s ramp from the reference lr would
    leave it nothing to ramp)."""
    ramp = [lr_at_step(s, peak_lr=0.05, warmup_steps=10, total_steps=100) for s in range(10)]
    assert ramp[0] == pytest.approx(0.005) and ramp[-1] == pytest.approx(0.05)


def test_no_weight_decay_on_biases_and_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert len(no_decay["params"]) == 4  # conv bias, bn weight, bn bias, linear bias


@pytest.mark.parametrize(
    "name, cls_name", [("sgd", "SGD"), ("adamw", "AdamW"), ("lars", "Lars"), ("lamb", "Lamb")]
)
def test_optimizers_build_and_step(name, cls_name):
    model = nn.Linear(3, 2)
    opt = build_optimizer(name, param_groups(model, 1e-4), lr=0.1)
    assert type(opt).__name__ == cls_name
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_adam_family_takes_its_beta2_and_momentum_as_beta1():
    """A searched beta2 (issue 32, item 5) reaches AdamW's and LAMB's second-moment decay; the
    momentum is their beta1 and SGD's momentum."""
    model = torch.nn.Linear(3, 2)
    for name in ("adamw", "lamb"):
        opt = build_optimizer(name, model.parameters(), lr=0.01, momentum=0.85, beta2=0.95)
        assert opt.param_groups[0]["betas"] == (0.85, 0.95), name
    sgd = build_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.97)
    assert sgd.param_groups[0]["momentum"] == 0.97
