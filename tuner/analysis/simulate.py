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
    s_min: float = S_MIN,
    b_crit: float = B_CRIT,
) -> pd.DataFrame:
    """The trial table (the columns `tuner.analysis.steps` reads) of one simulated study of
    S(B) = s_min (1 + b_crit / B).

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
        truth = s_min * (1 + b_crit / batch)
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


class NoisyQuadratic:
    """The noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which
    batch sizes?"): loss 1/2 sum h_i theta_i^2, per-example gradients with noise covariance
    diag(h) (C = H), so its critical batch size is known: McCandlish et al.'s noise scale
    B_noise = tr(HC) / (G^T H G) = sum h^2 / sum h^3 theta^2, which grows as theta shrinks.
    Plain SGD (no momentum) at a constant lr, stochastic or in expectation (E[theta^2] obeys
    m' = (1 - lr h)^2 m + lr^2 h / B exactly)."""

    def __init__(self, dims: int = 100, low: float = 1e-3, high: float = 1.0):
        self.h = np.geomspace(low, high, dims)

    def loss(self, squares: np.ndarray) -> float:
        """1/2 sum h theta^2 (of theta^2, or of its expectation)."""
        return float(0.5 * (self.h * squares).sum())

    def noise_scale(self, squares: np.ndarray) -> float:
        return float((self.h**2).sum() / (self.h**3 * squares).sum())

    def sgd(
        self, theta: np.ndarray, batch: int, lr: float, steps: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[float]]:
        """`steps` SGD steps from theta: the end, and the loss after each step (inf once it
        has blown up)."""
        losses = []
        for _ in range(steps):
            noise = rng.standard_normal(self.h.size) * np.sqrt(self.h / batch)
            theta = theta - lr * (self.h * theta + noise)
            losses.append(self.loss(theta**2))
            if not math.isfinite(losses[-1]) or losses[-1] > 1e12:
                losses[-1] = math.inf
                break
        return theta, losses

    def expected_loss(self, squares: np.ndarray, batch: int, lr: float, steps: int) -> float:
        """E[loss] after `steps` SGD steps from E[theta^2] = `squares`."""
        decay = (1 - lr * self.h) ** 2
        drift = lr**2 * self.h / batch
        for _ in range(steps):
            squares = decay * squares + drift
        value = self.loss(squares)
        return value if math.isfinite(value) else math.inf


NQM_LADDER = tuple(2**i for i in range(9))  # k = 1 ... 256 (base batch 1)
NQM_FACTORS = (0.5, 1.0, 2.0)  # the lr search around the linear rule


def nqm_runs(
    dims: int,
    seeds: int,
    rng: np.random.Generator,
    checkpoints: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25, 0.5),
    total: int = 4000,
    window: int = 256,
    lr0: float = 0.5,
):
    """A branch study of the noisy quadratic: plain SGD at batch 1 from theta = 3 with lr
    lr0 / (1 + t / 200) (held over each stretch between checkpoints); at every checkpoint,
    branches at k = 1 ... 256 over `window` examples with lrs k x NQM_FACTORS x the base lr
    (seed 0 their search, seeds 1.. their confirmation). Yields (fraction, expected ends per
    k, runs, the loss at the checkpoint, its noise scale B_noise), every loss relative to the
    expected k = 1 end (so a tolerance is relative)."""
    from tuner.analysis.branch import BranchRun

    quadratic = NoisyQuadratic(dims)
    theta, done = np.full(dims, 3.0), 0
    for fraction in checkpoints:
        steps = int(fraction * total) - done
        theta, _ = quadratic.sgd(theta, 1, lr0 / (1 + done / 200), steps, rng)
        done += steps
        lr = lr0 / (1 + done / 200)
        squares = theta**2
        expected = [
            min(quadratic.expected_loss(squares, k, lr * k * f, window // k) for f in NQM_FACTORS)
            for k in NQM_LADDER
        ]
        scale = expected[0]
        runs = []
        for k in NQM_LADDER:
            for f in NQM_FACTORS:
                for seed in range(seeds + 1):
                    _, losses = quadratic.sgd(theta.copy(), k, lr * k * f, window // k, rng)
                    phase = "search" if seed == 0 else "confirm"
                    label = f"linear x{f:g}"
                    runs.append(
                        BranchRun(fraction, k, label, lr * k * f, seed, phase, losses[-1] / scale)
                    )
        start = quadratic.loss(squares) / scale
        yield fraction, [e / scale for e in expected], runs, start, quadratic.noise_scale(squares)


def nqm_expected_critical(expected: list[float], tolerance: float) -> int:
    """The local critical batch of the expected ends: the largest k within `tolerance` of
    every smaller k's (base batch 1)."""
    best, critical = expected[0], NQM_LADDER[0]
    for k, value in zip(NQM_LADDER[1:], expected[1:], strict=True):
        if not value <= best + tolerance:
            break
        critical, best = k, min(best, value)
    return critical
