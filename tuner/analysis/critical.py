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


def bootstrap_critical_batch(
    crossings: pd.DataFrame, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile CI of B_crit, resampling each batch size's trials with replacement.

    Each replicate redraws every batch size's non-diverged trials, pools their first crossings
    again (minimum over the draw; censored at the draw's longest run if none reached) and
    refits. Returns (low, high, valid replicates).
    """
    if crossings.empty:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    batches, pooled, bounds = [], [], []
    for batch, group in crossings.groupby("batch_size", sort=True):
        firsts = group["steps"].to_numpy(dtype=float)
        ran = group["ran_steps"].to_numpy(dtype=float)
        draws = rng.integers(0, firsts.size, size=(n_boot, firsts.size))
        best = firsts[draws].min(axis=1)
        batches.append(float(batch))
        pooled.append(np.where(np.isfinite(best), best, np.nan))
        bounds.append(np.where(np.isfinite(best), np.nan, ran[draws].max(axis=1)))
    pooled, bounds = np.column_stack(pooled), np.column_stack(bounds)
    estimates = []
    for steps, censored in zip(pooled, bounds, strict=True):
        fit = fit_critical_batch(batches, steps, censored)
        if fit is not None:
            estimates.append(fit.b_crit)
    if not estimates:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2
    # inverted_cdf returns sample values, so an infinite B_crit stays infinite (no inf - inf).
    low, high = np.quantile(np.asarray(estimates), [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(low), float(high), len(estimates)


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
