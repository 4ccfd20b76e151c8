"""Synthetic studies with known answers, for checking the coverage of the study's statistics
(tests/test_paired.py, bench/paired_coverage.py): no Ray, no training.

Paired comparisons: each validation example has a difficulty (a logit), each run (seed) a shift
of it, and the worse side a known drop in logit; correctness is a Bernoulli draw per run and
example. The true drop is the population one (over examples and seeds), computed exactly by
Gauss-Hermite quadrature; every simulated study draws its own examples and seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def expected_accuracy(mean: float, sd: float) -> float:
    """E[sigmoid(z)] for z ~ N(mean, sd), by 80-point Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float((weights / (1 + np.exp(-(mean + sd * nodes)))).sum() / math.sqrt(2 * math.pi))


# (name, examples, mean logit, its sd over examples, seed sd (logit), drop (logit))
REGIMES = {
    # digits: 359 examples at about 98%, runs close to one another
    "digits": (359, 5.0, 2.0, 0.15, 0.3),
    # mnist1d: 4000 examples at about 92%, seeds that spread about a point
    "mnist1d": (4000, 3.0, 1.5, 0.12, 0.2),
}


def true_drop(regime: str) -> float:
    _, mean, sd, seed_sd, drop = REGIMES[regime]
    spread = math.hypot(sd, seed_sd)
    return expected_accuracy(mean, spread) - expected_accuracy(mean - drop, spread)


def simulate_study(regime: str, seeds: int, rng: np.random.Generator):
    """The two sides' runs x examples correctness matrices of one simulated study."""
    size, mean, sd, seed_sd, drop = REGIMES[regime]
    logit = rng.normal(mean, sd, size)
    sides = []
    for shift in (0.0, drop):
        runs = logit[None, :] + rng.normal(0, seed_sd, (seeds, 1)) - shift
        sides.append((rng.random(runs.shape) < 1 / (1 + np.exp(-runs))).astype(float))
    return sides


# Steps to target: a known S(B) = S_MIN (1 + B_CRIT / B), in a study shaped like the product's.
S_MIN, B_CRIT = 40.0, 100.0
SCALING_BATCHES = (8, 32, 128, 512, 1024)


def simulate_scaling_study(
    rng: np.random.Generator,
    batch_sizes: tuple[int, ...] = SCALING_BATCHES,
    trials: int = 8,
    seeds: int = 3,
    seed_sd: float = 0.1,
    detuning: float = 0.4,
    floor: int = 300,
    target: float = 0.9,
    noise: float = 0.002,
) -> pd.DataFrame:
    """The trial table (the columns `tuner.analysis.steps` reads) of one simulated study.

    At each batch size, `trials` search trials with configurations off the best by a detuning
    (log steps, exponential with mean `detuning`) and a seed's variation (log-normal, `seed_sd`),
    and `seeds` confirmation runs of the best one (fresh seeds). A run's accuracy is
    1 - (1 - target) (t / c)^-0.8, reaching the target at its crossing c, with evaluation noise
    (`noise`), evaluated 20 times over a budget of 3 S(B) steps (at least `floor`), as the
    product's default budgets and evaluation cadence are shaped. Runs whose crossing lies past
    the budget never reach the target.
    """
    rows = []
    for batch in batch_sizes:
        truth = S_MIN * (1 + B_CRIT / batch)
        budget = max(int(round(3 * truth)), floor)
        every = budget / 20
        grid = np.arange(1, 21) * every
        offsets = rng.exponential(detuning, trials)
        runs = [("search", off) for off in offsets]
        runs += [("confirm", offsets.min())] * seeds
        for number, (phase, off) in enumerate(runs):
            crossing = truth * math.exp(off + seed_sd * rng.standard_normal())
            accuracy = 1 - (1 - target) * (grid / crossing) ** -0.8
            accuracy = np.clip(accuracy + noise * rng.standard_normal(grid.size), 0.0, 1.0)
            for step, value in zip(grid, accuracy, strict=True):
                rows.append(
                    {
                        "trial_id": f"b{batch}-{number}",
                        "batch_size": batch,
                        "cell": f"b{batch}",
                        "scaling_rule": "linear",
                        "phase": phase,
                        "optimizer_steps": float(step),
                        "examples_seen": float(step) * batch,
                        "val_acc": float(value),
                        "diverged": False,
                        "outcome": "completed",
                    }
                )
    return pd.DataFrame(rows)
