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
