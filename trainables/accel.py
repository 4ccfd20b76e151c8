"""How a model runs fast on its device: precision, memory format, fused optimizer steps, compile.

One place decides every speed setting, so the loop, the benchmarks and the tests agree:

- bf16 autocast on CUDA (CPU autocast slows the small CPU models down);
- TF32 for what stays fp32 on CUDA (matmul and cuDNN convolutions);
- channels_last for models with 2-D convolutions on CUDA (cuDNN's fast NHWC kernels; the issue
  10 measurement on an H100 was 2235 -> 3978 images/s for ResNet-50 in bf16);
- fused optimizer steps (one kernel per step) for SGD and AdamW on CUDA; torch's default
  foreach path elsewhere;
- cudnn.benchmark only for long runs with fixed shapes: it cost 9-16 s on a fresh process's first
  trial, which a short trial never earns back;
- torch.compile when asked (`--compile`); its compile time is measured by the loop (the first
  step's extra time) and reported.

None of this changes what is computed beyond floating-point rounding: the CPU tests check that
channels_last and compile give the same losses as the plain eager model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

# Steps below which cudnn.benchmark's autotuning (seconds per new shape) is not worth it.
BENCHMARK_MIN_STEPS = 500


@dataclass(frozen=True)
class Acceleration:
    """The speed settings one trial runs with (reported in its metrics)."""

    autocast_bf16: bool
    channels_last: bool
    tf32: bool
    fused_optimizer: bool
    cudnn_benchmark: bool
    compiled: bool

    def as_metrics(self) -> dict[str, bool]:
        return {f"accel_{name}": value for name, value in self.__dict__.items()}


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose(
    model: nn.Module, device: torch.device, total_steps: int, compile_model: bool
) -> Acceleration:
    """The settings for `model` on `device` for a run of `total_steps` optimizer steps."""
    cuda = device.type == "cuda"
    return Acceleration(
        autocast_bf16=cuda,
        channels_last=cuda and has_conv2d(model),
        tf32=cuda,
        fused_optimizer=cuda,
        cudnn_benchmark=cuda and total_steps >= BENCHMARK_MIN_STEPS,
        compiled=compile_model,
    )


def configure_backends(accel: Acceleration) -> None:
    """Process-wide backend flags, set for every trial: a reused trial actor runs many."""
    torch.backends.cuda.matmul.allow_tf32 = accel.tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default; fp32 convolutions use TF32
    torch.backends.cudnn.benchmark = accel.cudnn_benchmark


def prepare_model(model: nn.Module, accel: Acceleration) -> nn.Module:
    """The model in its memory format (in place; parameters keep their identity)."""
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, accel: Acceleration) -> nn.Module:
    """torch.compile'd `model` when asked; the eager model otherwise."""
    return torch.compile(model) if accel.compiled else model


def prepare_input(x: torch.Tensor, accel: Acceleration) -> torch.Tensor:
    """A batch in the model's memory format (a no-op for contiguous NCHW models)."""
    if accel.channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(accel: Acceleration):
    """The forward pass's autocast context."""
    if accel.autocast_bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
