"""Learning-rate scaling rules, warmup + decay schedule, and optimiser construction.

Hyperparameters are searched in batch-independent units (a base lr defined at the workload's
reference batch size, warmup in epochs); `scaled_lr` is the one place that turns them into the
actual lr. No Ray here: everything is unit-tested in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

SCALING_RULES = ("none", "linear", "sqrt")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")


def scaling_factor(rule: str, batch_size: int, reference_batch: int) -> float:
    """Factor by which the base lr is multiplied at `batch_size` (Goyal et al.; Hoffer et al.)."""
    k = batch_size / reference_batch
    if rule == "none":
        return 1.0
    if rule == "linear":
        return k
    if rule == "sqrt":
        return math.sqrt(k)
    raise ValueError(f"unknown scaling rule {rule!r}; known: {', '.join(SCALING_RULES)}")


def scaled_lr(base_lr: float, rule: str, batch_size: int, reference_batch: int) -> float:
    """Actual peak lr: base lr (at the reference batch) times the rule's factor."""
    return base_lr * scaling_factor(rule, batch_size, reference_batch)


def lr_at_step(
    step: int,
    *,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
    final_factor: float = 0.0,
) -> float:
    """Lr for optimizer step `step` (0-based): gradual warmup, then decay.

    Warmup ramps linearly per step from 0 to `peak_lr`, reaching it at the last warmup step,
    at every batch size alike (issue 32: one protocol; Goyal et al.'s ramp starts at the
    reference lr instead, which leaves nothing to ramp at or below the reference batch, so the
    baseline could never have a warmup that the larger batch sizes had). After warmup,
    `schedule` decays the peak to `final_factor * peak_lr` at `total_steps`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    floor = final_factor * peak_lr
    if schedule == "linear":
        return floor + (peak_lr - floor) * (1.0 - progress)
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; biases and normalisation parameters without.

    Goyal et al. do not decay BN gamma/beta; every 0-d or 1-d parameter (biases, norm scales
    and shifts) falls in that group. timm's LARS also skips trust-ratio adaptation for
    parameters whose weight decay is 0, which excludes them as You et al. do.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    name: str,
    groups: Iterable[dict],
    *,
    lr: float,
    momentum: float = 0.9,
    beta2: float = 0.999,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, AdamW, or timm's LARS / LAMB (`momentum` is AdamW's and
    LAMB's beta1, `beta2` their second-moment decay).

    `fused` selects torch's one-kernel step for SGD and AdamW (CUDA parameters only); timm's
    LARS and LAMB have no fused form and ignore it.

    torch's SGD keeps the momentum buffer without the lr (buf = m*buf + g; w -= lr*buf), so
    Goyal et al.'s momentum correction on lr changes is not needed.
    """
    groups = list(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, beta2), fused=fused or None)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=momentum, nesterov=True, trust_coeff=0.001)
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=(momentum, beta2))
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the same lr on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
