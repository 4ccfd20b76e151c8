"""Speed settings (trainables.accel) are chosen per device and never change the numerics:
channels_last, fused optimizer steps and torch.compile give the eager model's losses on a CPU."""

import shutil

import pytest
import torch
from torch import nn

from trainables import accel
from trainables.models import build_model
from trainables.optim import build_optimizer, param_groups

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_settings_per_device_and_model():
    cnn = build_model("simple_cnn", (1, 8, 8), 10)
    conv1d = build_model("conv1d", (1, 40), 10)
    on_cpu = accel.choose(cnn, CPU, 10_000, compile_model=False)
    assert not any(on_cpu.as_metrics().values())
    gpu_short = accel.choose(cnn, CUDA, 100, compile_model=True)
    assert gpu_short.autocast_bf16 and gpu_short.tf32 and gpu_short.fused_optimizer
    assert gpu_short.channels_last and gpu_short.compiled
    assert not gpu_short.cudnn_benchmark  # a short trial never earns its autotuning back
    assert accel.choose(cnn, CUDA, accel.BENCHMARK_MIN_STEPS, False).cudnn_benchmark
    assert not accel.choose(conv1d, CUDA, 100, False).channels_last  # no 2-D convolutions
    assert set(on_cpu.as_metrics()) == {
        "accel_autocast_bf16",
        "accel_channels_last",
        "accel_tf32",
        "accel_fused_optimizer",
        "accel_cudnn_benchmark",
        "accel_compiled",
    }


def tiny_cnn(*_) -> nn.Module:
    """Small enough that torch.compile's C++ kernels build in seconds on a CPU."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _losses(model_name: str, speed: accel.Acceleration, fused: bool, steps: int = 4):
    torch.manual_seed(0)
    model = (tiny_cnn if model_name == "tiny" else build_model)(model_name, (3, 16, 16), 10)
    accel.prepare_model(model, speed)
    optimizer = build_optimizer("sgd", param_groups(model, 1e-4), lr=0.05, fused=fused)
    run = accel.compiled(model, speed)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 3, 16, 16, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        loss = nn.functional.cross_entropy(run(accel.prepare_input(x, speed)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, model


def _speed(**kwargs) -> accel.Acceleration:
    values = dict.fromkeys(accel.Acceleration.__dataclass_fields__, False)
    return accel.Acceleration(**(values | kwargs))


def test_channels_last_and_fused_sgd_train_as_the_plain_model_does():
    plain, _ = _losses("resnet8", _speed(), fused=False)
    fast, model = _losses("resnet8", _speed(channels_last=True), fused=True)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast == pytest.approx(plain, rel=1e-4)
    assert plain[-1] != plain[0]  # the steps did change the weights


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_model_trains_as_the_eager_model_does():
    eager, _ = _losses("tiny", _speed(), fused=False, steps=3)
    compiled, _ = _losses("tiny", _speed(compiled=True), fused=False, steps=3)
    assert compiled == pytest.approx(eager, rel=1e-4)
