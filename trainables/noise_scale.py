"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), measured online.

The two-batch estimator (science.md section 5): with |g_s|^2 the squared norm of a gradient over
B_s examples and |g_b|^2 that over B_b > B_s examples of the same step,

    |G|^2     ~ (B_b |g_b|^2 - B_s |g_s|^2) / (B_b - B_s)
    tr(Sigma) ~ (|g_s|^2 - |g_b|^2) / (1/B_s - 1/B_b)

are unbiased; their ratio is not, so each is smoothed by its own bias-corrected exponential
moving average and only the averages are divided (negative averages, possible early on, give no
estimate). Where the two gradients come from is the loop's business (`trainables.loop`): the
first micro-batch and the accumulated gradient of a step, or one worker's gradient and the
all-reduced one. Both are taken before any clipping (the loop clips nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

EMA_DECAY = 0.95  # about 20 steps of memory: enough to average out one step's noise


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of every tensor, as one float64 scalar on their device (no host sync)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm([t.detach().float() for t in tensors])
    return torch.stack(norms).double().pow(2).sum()


def two_batch_estimates(
    small_sq: float, big_sq: float, small_batch: int, big_batch: int
) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) from one step's two squared gradient norms."""
    if big_batch <= small_batch:
        raise ValueError(f"big batch {big_batch} must exceed small batch {small_batch}")
    grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace = (small_sq - big_sq) / (1 / small_batch - 1 / big_batch)
    return grad_sq, trace


@dataclass
class NoiseScale:
    """Bias-corrected EMAs of |G|^2 and tr(Sigma); `b_simple` is their ratio."""

    decay: float = EMA_DECAY
    steps: int = 0
    _grad_sq: float = 0.0
    _trace: float = 0.0
    pending: list[tuple[torch.Tensor, torch.Tensor, int, int]] = field(default_factory=list)

    def add(self, small_sq: float, big_sq: float, small_batch: int, big_batch: int) -> None:
        grad_sq, trace = two_batch_estimates(small_sq, big_sq, small_batch, big_batch)
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            return
        self.steps += 1
        self._grad_sq = self.decay * self._grad_sq + (1 - self.decay) * grad_sq
        self._trace = self.decay * self._trace + (1 - self.decay) * trace

    def defer(self, small_sq: torch.Tensor, big_sq: torch.Tensor, small: int, big: int) -> None:
        """Keep a step's norms as device tensors; `flush` reads them (one host sync) later."""
        self.pending.append((small_sq, big_sq, small, big))

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([torch.stack([s, b]) for s, b, _, _ in self.pending]).tolist()
        for (small_sq, big_sq), (_, _, small, big) in zip(values, self.pending, strict=True):
            self.add(small_sq, big_sq, small, big)
        self.pending.clear()

    def state(self) -> dict[str, float | int]:
        """What a checkpoint keeps, so a resumed run continues the same averages."""
        self.flush()
        return {
            "decay": self.decay,
            "steps": self.steps,
            "_grad_sq": self._grad_sq,
            "_trace": self._trace,
        }

    @property
    def grad_sq(self) -> float:
        """Bias-corrected EMA of |G|^2 (nan before the first step)."""
        return self._grad_sq / (1 - self.decay**self.steps) if self.steps else math.nan

    @property
    def trace(self) -> float:
        """Bias-corrected EMA of tr(Sigma) (nan before the first step)."""
        return self._trace / (1 - self.decay**self.steps) if self.steps else math.nan

    @property
    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2, nan while either average is not positive."""
        grad_sq, trace = self.grad_sq, self.trace
        if not (grad_sq > 0 and trace > 0):
            return math.nan
        return trace / grad_sq
