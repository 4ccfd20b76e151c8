"""A run whose steps to target do not depend on its budget (issue 32 item 6; Zhang et al. 2024,
arXiv:2410.21676): its lr ramps over a warmup given in steps, then stays constant (nothing is a
fraction of the budget), it is judged on an exponential moving average of its weights (which
does what a decay would, without knowing where the run ends), and it evaluates on a grid that
grows geometrically (the same steps under any budget, each crossing known to within
`GROWTH` - 1 of its step).

The average's horizon grows with the step (timm's `ModelEmaV3` with its warmup: decay
1 - t^(-2/3) at step t, a horizon of about t^(2/3) steps; the first step is copied): it
forgets the early weights at any run length and needs no horizon chosen per workload, which
a fixed decay (Zhang et al.'s 0.998, 500 steps) would, on runs of 40 steps to target as much
as of 40,000.
"""

from __future__ import annotations

import math

from torch import nn

GROWTH = 1.1  # each evaluation about 10% later than the one before
FIRST = 5  # the first evaluation (steps)


def evaluation_grid(total_steps: int, growth: float = GROWTH, first: int = FIRST) -> list[int]:
    """Steps after which a budget-free run evaluates: `first`, then each ~`growth` x the last
    (at least one step later), and its end: the grid up to any step is the same whatever the
    budget."""
    if total_steps < 1 or growth <= 1 or first < 1:
        raise ValueError(f"total {total_steps}, growth {growth} and first {first} must be valid")
    steps, at = [], first
    while at < total_steps:
        steps.append(at)
        at = max(at + 1, math.ceil(at * growth))
    return [*steps, total_steps]


def weight_average(model: nn.Module) -> nn.Module:
    """The model's weight average (buffers averaged alike), updated by `.update(model, step)`."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=0.9999, use_warmup=True, warmup_power=2 / 3)
