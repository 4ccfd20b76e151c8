"""The gradient noise scale: the two-batch estimator on gradients with a known covariance, and
the loop's measurement (it leaves training unchanged and gives a finite B_simple)."""

import math

import pytest
import torch
from torch import nn

from tests.test_config import base_config, model_on
from tests.test_loop import run
from trainables import accel, loop, trial_data
from trainables.batchnorm import apply_bn_mode, bn_label
from trainables.config import TrialConfig
from trainables.data import BatchSource
from trainables.noise_scale import NoiseScale, squared_norm, two_batch_estimates
from trainables.optim import build_optimizer, param_groups


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


# The three ways a step is measured. "same computation" marks the one whose measured step runs
# exactly the plain step's arithmetic (accumulation: the first micro-batch's gradient is read on
# the way); the others sum the same terms in another order (halves as two micro-batches; two
# backward passes through one forward when BatchNorm spans the halves).
MEASURED_PATHS = [
    pytest.param({"max_device_batch": 64}, False, id="halves-as-micro-batches"),
    pytest.param({"max_device_batch": 16}, True, id="accumulation"),
    pytest.param(
        {
            "max_device_batch": 64,
            "workload": model_on("resnet8", "digits"),
            "bn_mode": "per_worker",
        },
        False,
        id="bn-over-batch-two-backward",
    ),
    pytest.param(
        {"max_device_batch": 64, "workload": model_on("resnet8", "digits"), "bn_mode": "ghost"},
        False,
        id="ghost-bn-halves",
    ),
]
MEASURED_RUN = {"budget_unit": "steps", "budget_amount": 24, "eval_every": 12, "batch_size": 64}
MEASURED_RUN |= {"bn_mode": "ghost", "ghost_batch": 16}


def _one_step(extra: dict, measure: bool, dtype: torch.dtype):
    """One optimizer step of the loop's `_train_step` from the same weights and batch: the
    gradients it applied, the state after it, and how many noise-scale measurements it made."""
    config = TrialConfig.from_dict(base_config(**(MEASURED_RUN | extra)))
    layout = config.layout()
    splits = trial_data.open_splits(config)
    torch.manual_seed(0)
    model = trial_data.trial_workload(config).build_model(splits.input_shape, splits.num_classes)
    model = apply_bn_mode(model, config.bn_mode, config.ghost_batch, 1).to(dtype)
    cpu = torch.device("cpu")
    source = BatchSource(splits, config.batch_size, 0, 1, 0, cpu, micro_batch=layout.micro_batch)
    batches = [(x.to(dtype), y) for x, y in next(iter(source.train_batches(0)))]
    no_bn = bn_label(model, config.bn_mode, 16, layout.micro_batch, 1) == "none"
    independent = loop.halves_are_independent(layout.micro_batch, config.bn_mode, 16, no_bn)
    optimizer = build_optimizer("sgd", param_groups(model, 1e-4), lr=0.2, momentum=0.9)
    applied = {}

    def capture_then_step():
        applied.update({n: p.grad.clone() for n, p in model.named_parameters()})
        plain_step()

    plain_step, optimizer.step = optimizer.step, capture_then_step
    noise = NoiseScale() if measure else None
    speed = accel.choose(model, cpu, 24, False)
    loop._train_step(
        model, optimizer, nn.CrossEntropyLoss(), iter(batches), source.per_step, cpu, speed,
        noise, 1, independent,
    )  # fmt: skip
    measured = noise.state()["steps"] if noise else 0
    return applied, {k: v.clone() for k, v in model.state_dict().items()}, measured


@pytest.mark.parametrize(("extra", "same_computation"), MEASURED_PATHS)
def test_a_measured_step_applies_the_plain_steps_update(extra, same_computation):
    """One measured step against one plain step from the same weights and batch: the same
    gradients and the same parameters and BatchNorm buffers after it. In float64 a different
    summation order shows at ~1e-15 and a changed computation (a half gradient left in, running
    statistics updated twice) at 1e-3 or more, so the check is the same on every machine; where
    the arithmetic is the same it must be exact, in float32 too."""
    dtype = torch.float32 if same_computation else torch.float64
    grads, state, measured = _one_step(extra, True, dtype)
    plain_grads, plain_state, _ = _one_step(extra, False, dtype)
    assert measured == 1  # the step really measured the noise scale
    tolerance = 0.0 if same_computation else 1e-10
    for name, grad in plain_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((grads[name] - grad).abs().max()) <= tolerance * scale, name
    for name, value in plain_state.items():
        if value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            assert float((state[name] - value).abs().max()) <= tolerance * scale, name
        else:  # BatchNorm's num_batches_tracked: updated once per forward pass
            assert torch.equal(state[name], value), name


@pytest.mark.parametrize(("extra", "same_computation"), MEASURED_PATHS)
def test_loop_measures_b_simple_on_every_path(monkeypatch, extra, same_computation):
    over = MEASURED_RUN | extra
    monkeypatch.setattr(loop, "NOISE_SCALE_EVERY", 1)
    monkeypatch.setattr(loop, "NOISE_SCALE_EXAMPLES", 0)
    measured, _ = run(over)
    monkeypatch.setattr(loop, "NOISE_SCALE_EVERY", 10**9)  # step 0 only
    plain, _ = run(over)
    last = measured[-1]
    assert last["gns_steps"] == 24 and plain[-1]["gns_steps"] == 1
    assert 0 < last["gns_b_simple"] < 1e5 and last["gns_trace"] > 0 and last["gns_grad_sq"] > 0
