"""The gradient noise scale: the two-batch estimator on gradients with a known covariance, and
the loop's measurement (it leaves training unchanged and gives a finite B_simple)."""

import math

import pytest
import torch

from tests.test_loop import run
from trainables import loop
from trainables.noise_scale import NoiseScale, squared_norm, two_batch_estimates


def test_two_batch_estimator_recovers_a_known_noise_scale():
    """Per-example gradients G + e, e ~ N(0, diag(s^2)): B_simple = sum(s^2) / |G|^2."""
    generator = torch.Generator().manual_seed(0)
    dim = 50
    mean = torch.randn(dim, generator=generator, dtype=torch.float64) * 0.1
    scale = torch.rand(dim, generator=generator, dtype=torch.float64) + 0.5
    truth = float(scale.pow(2).sum() / mean.pow(2).sum())
    noise = NoiseScale(decay=0.99)
    small, big = 8, 64
    for _ in range(2000):
        examples = mean + scale * torch.randn(big, dim, generator=generator, dtype=torch.float64)
        small_sq = float(examples[:small].mean(0).pow(2).sum())
        big_sq = float(examples.mean(0).pow(2).sum())
        noise.add(small_sq, big_sq, small, big)
    assert noise.b_simple == pytest.approx(truth, rel=0.10)
    assert noise.trace == pytest.approx(float(scale.pow(2).sum()), rel=0.10)


def test_estimates_are_unbiased_formulas_and_nan_before_data():
    grad_sq, trace = two_batch_estimates(small_sq=2.0, big_sq=1.1, small_batch=10, big_batch=100)
    # E|g_B|^2 = |G|^2 + tr/B: both batches agree with |G|^2 = 1, tr = 10
    assert grad_sq == pytest.approx(1.0) and trace == pytest.approx(10.0)
    assert math.isnan(NoiseScale().b_simple)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 1.0, 8, 8)
    assert float(squared_norm([torch.ones(3), 2 * torch.ones(2)])) == pytest.approx(11.0)


def test_deferred_norms_and_checkpointed_state():
    noise = NoiseScale()
    noise.defer(
        torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.1, dtype=torch.float64), 10, 100
    )
    assert noise.steps == 0
    state = noise.state()  # flushes
    assert noise.steps == 1 and NoiseScale(**state).b_simple == pytest.approx(noise.b_simple)


def test_measurements_are_rarer_at_small_batches():
    """At least 4 steps apart, and at least 512 of a worker's examples apart."""
    assert [loop.noise_scale_interval(b) for b in (8, 32, 128, 512, 4096)] == [64, 16, 4, 4, 4]


@pytest.mark.parametrize(
    "extra",
    [
        {"max_device_batch": 64},  # no BatchNorm: the halves run as two micro-batches
        {"max_device_batch": 16},  # 4 micro-batches: the first against the step
        # BatchNorm over the whole batch: one forward, two backward passes
        {"max_device_batch": 64, "model": "resnet8", "bn_mode": "per_worker"},
    ],
)
def test_loop_measures_b_simple_without_changing_training(monkeypatch, extra):
    over = {"budget_unit": "steps", "budget_amount": 24, "eval_every": 12, "batch_size": 64}
    over |= {"bn_mode": "ghost", "ghost_batch": 16} | extra
    monkeypatch.setattr(loop, "NOISE_SCALE_EVERY", 1)
    monkeypatch.setattr(loop, "NOISE_SCALE_EXAMPLES", 0)
    measured, _ = run(over)
    monkeypatch.setattr(loop, "NOISE_SCALE_EVERY", 10**9)  # step 0 only
    plain, _ = run(over)
    # the same gradients up to float32 summation order (two backward passes), which 24 steps
    # of training amplify to about 1e-5; a wrong gradient (a half missing) would be off by far
    assert [r["train_loss"] for r in measured] == pytest.approx(
        [r["train_loss"] for r in plain], rel=1e-3
    )
    last = measured[-1]
    assert last["gns_steps"] == 24 and plain[-1]["gns_steps"] == 1
    assert 0 < last["gns_b_simple"] < 1e5 and last["gns_trace"] > 0 and last["gns_grad_sq"] > 0
