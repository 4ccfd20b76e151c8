"""The critical batch size: a fit of S(B) = S_min (1 + B_crit / B), its bootstrap, and regimes.

The fit is linear in 1/B: S = S_min + E_min / B with E_min = S_min * B_crit (McCandlish et al.).
Residuals are relative (steps span orders of magnitude). A batch size that never reached the
target enters as a lower bound: its residual counts only when the curve predicts fewer steps
than its trials ran without reaching the target (a one-sided, censored residual), so a batch
size that is too short for the target pushes the fit up instead of silently leaving it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, nnls

from tuner.analysis.accuracy import N_BOOT

CONFIDENCE = 0.95
# Regimes from the local slope of log S vs log B, which for the fitted curve is
# -B_crit / (B + B_crit): steeper than -0.8 (B <= B_crit / 4) is perfect scaling, flatter than
# -0.2 (B >= 4 B_crit) is maximal data parallelism, anything between is diminishing returns.
PERFECT_SCALING_MAX = 0.25  # B / B_crit at or below which scaling is (nearly) perfect
MAXIMAL_PARALLELISM_MIN = 4.0  # B / B_crit at or above which more batch buys ~no fewer steps
REGIMES = ("perfect scaling", "diminishing returns", "maximal data parallelism")
MIN_POINTS_FOR_CI = 3  # batch sizes reaching the target before B_crit gets an interval


@dataclass(frozen=True)
class CriticalFit:
    """S(B) = s_min (1 + b_crit / B): b_crit is inf when steps fall as 1/B throughout."""

    s_min: float
    e_min: float
    b_crit: float
    points: int  # batch sizes that reached the target
    censored: int  # batch sizes entered as lower bounds
    r2: float  # of log steps, over the reached points
    residuals: tuple[tuple[int, float], ...]  # (batch, log(observed / fitted)), reached points

    def steps(self, batch: np.ndarray | float) -> np.ndarray | float:
        """Fitted steps to target at `batch`."""
        return self.s_min + self.e_min / np.asarray(batch, dtype=float)

    @property
    def max_abs_residual(self) -> float:
        return max((abs(r) for _, r in self.residuals), default=math.nan)


def fit_critical_batch(
    batch_sizes: Sequence[float],
    steps: Sequence[float],
    censored_at: Sequence[float] | None = None,
) -> CriticalFit | None:
    """Least squares of S against 1/B with S_min, E_min >= 0, on relative residuals, with
    censored batch sizes (steps NaN, `censored_at` their lower bound) as one-sided residuals.
    None with fewer than 2 batch sizes that reached the target."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    c = np.full_like(b, np.nan) if censored_at is None else np.asarray(censored_at, dtype=float)
    seen = np.isfinite(b) & np.isfinite(s) & (b > 0) & (s > 0)
    bound = np.isfinite(b) & ~seen & np.isfinite(c) & (c > 0)
    if np.unique(b[seen]).size < 2:
        return None
    bs, ss, bc, cc = b[seen], s[seen], b[bound], c[bound]
    # Start from the uncensored fit (nonnegative least squares on relative residuals).
    start, _ = nnls(np.column_stack([1.0 / ss, 1.0 / (bs * ss)]), np.ones_like(ss))

    def residuals(x: np.ndarray) -> np.ndarray:
        s_min, e_min = x
        observed = (s_min + e_min / bs) / ss - 1.0
        short = np.maximum(0.0, 1.0 - (s_min + e_min / bc) / cc)  # predicted below the bound
        return np.concatenate([observed, short])

    if bc.size:
        scale = max(float(start.max()), 1.0)
        fit = least_squares(residuals, start + 1e-9 * scale, bounds=(0.0, np.inf), x_scale=scale)
        s_min, e_min = fit.x
    else:
        s_min, e_min = start
    if s_min <= 0 and e_min <= 0:
        return None
    # An S_min that adds under a billionth to the largest batch size's steps is zero: steps
    # fall as 1/B throughout, and B_crit is beyond the grid.
    if s_min <= 1e-9 * e_min / float(bs.max()):
        s_min = 0.0
    b_crit = math.inf if s_min <= 0 else e_min / s_min
    predicted = s_min + e_min / bs
    log_s, log_p = np.log(ss), np.log(np.maximum(predicted, 1e-300))
    total = float(((log_s - log_s.mean()) ** 2).sum())
    r2 = 1.0 - float(((log_s - log_p) ** 2).sum()) / total if total > 0 else 1.0
    return CriticalFit(
        s_min=float(s_min),
        e_min=float(e_min),
        b_crit=float(b_crit),
        points=int(bs.size),
        censored=int(bc.size),
        r2=r2,
        residuals=tuple((int(x), float(r)) for x, r in zip(bs, log_s - log_p, strict=True)),
    )


def seed_spread(crossings: pd.DataFrame) -> tuple[float, int]:
    """The spread of log steps to target between runs of one configuration: its confirmation
    runs (fresh seeds), pooled over cells; with its degrees of freedom (0: none to pool)."""
    runs = crossings[(crossings["phase"] == "confirm") & np.isfinite(crossings["steps"])]
    squares, df = 0.0, 0
    for _, group in runs.groupby("cell"):
        logs = np.log(group["steps"].to_numpy(dtype=float))
        squares += float(((logs - logs.mean()) ** 2).sum())
        df += len(logs) - 1
    return (math.sqrt(squares / df), df) if df else (0.0, 0)


def bootstrap_critical_batch(
    crossings: pd.DataFrame, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile CI of B_crit from a smoothed bootstrap of the runs.

    A batch size's steps to target are the earliest crossing of its runs, and a plain bootstrap
    of that minimum mostly redraws the same run: its replicates seldom move and the interval
    does not cover (issue 20). Here each replicate redraws every batch size's non-diverged runs
    with replacement and, for each run drawn, a crossing where it could have been: anywhere in
    the interval between the evaluations around it (uniform), times a seed's variation
    (log-normal with the spread of confirmation runs of one configuration, `seed_spread`): a run
    drawn again is a run trained again. The earliest of the draw is the replicate's point (a
    draw without any crossing is censored at its longest run), and the curve is refitted.
    Coverage of its 95% interval on 200 simulated studies of a known S(B) (product-shaped:
    tests/test_critical_coverage.py, bench/critical_coverage.py): 91-99% across study shapes,
    where the plain bootstrap of the earliest crossing covered 50-79%. Returns (low, high,
    valid replicates).
    """
    if crossings.empty:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    spread, _ = seed_spread(crossings)
    batches, pooled, bounds = [], [], []
    for batch, group in crossings.groupby("batch_size", sort=True):
        steps = group["steps"].to_numpy(dtype=float)
        reached = np.isfinite(steps)
        before = np.where(reached, group["before"].to_numpy(dtype=float), 0.0)
        first = np.where(reached, group["first"].to_numpy(dtype=float), 0.0)
        ran = group["ran_steps"].to_numpy(dtype=float)
        draws = rng.integers(0, steps.size, size=(n_boot, steps.size))
        where = before[draws] + rng.random(draws.shape) * (first[draws] - before[draws])
        where *= np.exp(spread * rng.standard_normal(draws.shape))
        where = np.where(reached[draws] & (where > 0), where, np.inf)
        best = where.min(axis=1)
        batches.append(float(batch))
        pooled.append(np.where(np.isfinite(best), best, np.nan))
        bounds.append(np.where(np.isfinite(best), np.nan, ran[draws].max(axis=1)))
    pooled, bounds = np.column_stack(pooled), np.column_stack(bounds)
    estimates = fit_many(np.asarray(batches), pooled)
    censored = np.isfinite(bounds).any(axis=1)
    for row in np.flatnonzero(censored):  # lower bounds need the one-sided fit
        fit = fit_critical_batch(batches, pooled[row], bounds[row])
        estimates[row] = fit.b_crit if fit is not None else math.nan
    estimates = estimates[~np.isnan(estimates)]
    if not estimates.size:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2
    # inverted_cdf returns sample values, so an infinite B_crit stays infinite (no inf - inf).
    low, high = np.quantile(estimates, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(low), float(high), int(estimates.size)


def fit_many(batches: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """`fit_critical_batch`'s B_crit for each row of `steps` (replicates x batch sizes; NaN: not
    reached, no bound), all at once: with two coefficients the nonnegative least squares is
    the unconstrained solution when both are >= 0, else the better of the two one-coefficient
    fits (its KKT cases). NaN where fewer than 2 batch sizes reached."""
    seen = np.isfinite(steps) & (steps > 0)
    safe = np.where(seen, steps, 1.0)
    a = np.where(seen, 1.0 / safe, 0.0)  # coefficient of S_min in S_fit / S
    b = np.where(seen, 1.0 / (batches[None, :] * safe), 0.0)  # of E_min
    saa, sbb, sab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
    sa, sb = a.sum(1), b.sum(1)
    det = saa * sbb - sab * sab
    with np.errstate(divide="ignore", invalid="ignore"):
        s_min = (sbb * sa - sab * sb) / det
        e_min = (saa * sb - sab * sa) / det
        inside = (det > 0) & (s_min >= 0) & (e_min >= 0)
        # Either coefficient alone: the one that leaves the smaller residual (n - S^2 / G).
        only_s, only_e = sa / saa, sb / sbb
        use_s = sa * sa / saa >= sb * sb / sbb
        s_min = np.where(inside, s_min, np.where(use_s, only_s, 0.0))
        e_min = np.where(inside, e_min, np.where(use_s, 0.0, only_e))
        largest = np.where(seen, batches[None, :], 0.0).max(1)
        zero = s_min <= 1e-9 * e_min / largest  # as fit_critical_batch: steps fall as 1/B
        b_crit = np.where(zero, np.inf, e_min / s_min)
    enough = np.array([np.unique(batches[row]).size >= 2 for row in seen])
    return np.where(enough & ((s_min > 0) | (e_min > 0)), b_crit, np.nan)


def regime(batch: float, b_crit: float | None) -> str | None:
    """Perfect scaling, diminishing returns or maximal data parallelism; None without a fit."""
    if b_crit is None or math.isnan(b_crit):
        return None
    if math.isinf(b_crit):
        return REGIMES[0]
    if b_crit <= 0:
        return REGIMES[2]
    ratio = batch / b_crit
    if ratio <= PERFECT_SCALING_MAX:
        return REGIMES[0]
    if ratio >= MAXIMAL_PARALLELISM_MIN:
        return REGIMES[2]
    return REGIMES[1]
