"""The critical batch size: a fit of S(B) = S_min (1 + B_crit / B), its bootstrap, and regimes.

The fit is linear in 1/B: S = S_min + E_min / B with E_min = S_min * B_crit (McCandlish et al.).
Residuals are relative (steps span orders of magnitude). A batch size that never reached the
target enters as a lower bound: its residual counts only when the curve predicts fewer steps
than its trials ran without reaching the target (a one-sided, censored residual), so a batch
size that is too short for the target pushes the fit up instead of silently leaving it. One
whose run was past the target at its first evaluation enters as an upper bound (at most that
many steps; left-censored), likewise one-sided. The point and every bootstrap replicate are the
same exact solver (`censored_fits`), and the interval always holds the point
(`estimate_critical_batch`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuner.analysis.accuracy import N_BOOT
from tuner.analysis.steps import BUDGET_FREE

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
    at_most: int = 0  # batch sizes entered as upper bounds (past the target at once)

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
    at_most: Sequence[float] | None = None,
) -> CriticalFit | None:
    """Least squares of S against 1/B with S_min, E_min >= 0, on relative residuals, with
    censored batch sizes as one-sided residuals: `censored_at` a lower bound (never reached the
    target: more than that many steps), `at_most` an upper bound (past the target at its first
    evaluation: at most that many steps); their steps are NaN. The same estimator as every
    bootstrap replicate (`fit_many`). None with fewer than 2 batch sizes that reached the
    target at a known step."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    nan = np.full_like(b, np.nan)
    low = nan if censored_at is None else np.asarray(censored_at, dtype=float)
    high = nan if at_most is None else np.asarray(at_most, dtype=float)
    seen = np.isfinite(b) & np.isfinite(s) & (b > 0) & (s > 0)
    if np.unique(b[seen]).size < 2:
        return None
    s_min, e_min = (float(v[0]) for v in censored_fits(b, s[None, :], low[None, :], high[None, :]))
    if not (math.isfinite(s_min) and math.isfinite(e_min)) or (s_min <= 0 and e_min <= 0):
        return None
    bs, ss = b[seen], s[seen]
    b_crit = math.inf if s_min <= 0 else e_min / s_min
    predicted = s_min + e_min / bs
    log_s, log_p = np.log(ss), np.log(np.maximum(predicted, 1e-300))
    total = float(((log_s - log_s.mean()) ** 2).sum())
    r2 = 1.0 - float(((log_s - log_p) ** 2).sum()) / total if total > 0 else 1.0
    bounded = lambda v: int((~seen & np.isfinite(b) & np.isfinite(v) & (v > 0)).sum())  # noqa: E731
    return CriticalFit(
        s_min=float(s_min),
        e_min=float(e_min),
        b_crit=float(b_crit),
        points=int(bs.size),
        censored=bounded(low),
        r2=r2,
        residuals=tuple((int(x), float(r)) for x, r in zip(bs, log_s - log_p, strict=True)),
        at_most=bounded(high),
    )


def censored_fits(
    batches: np.ndarray,
    steps: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `steps` (replicates x batch sizes): S_min, E_min >= 0 minimising the squared
    relative residuals (S_fit / S - 1 at a batch size that reached the target at S; at a lower
    bound L, max(0, 1 - S_fit / L); at an upper bound U, max(0, S_fit / U - 1)). NaN where
    fewer than 2 batch sizes reached the target at a known step.

    Exact and vectorised, where a general solver would run once per replicate: every residual
    is a S_min + c E_min - 1 with (a, c) = (1 / v, 1 / (B v)) for its value v, and a bound's
    counts only where the curve breaks it. The objective is convex, so its minimum is the least
    of the candidates "these bounds count as points, the others not", each solved over
    S_min, E_min >= 0 by its KKT cases (both free, either alone) and scored on the objective
    itself."""
    rows, width = steps.shape
    nan = np.full((rows, width), np.nan)
    lower = nan if lower is None else lower
    upper = nan if upper is None else upper
    exact = np.isfinite(steps) & (steps > 0)
    below = ~exact & np.isfinite(lower) & (lower > 0)
    above = ~exact & ~below & np.isfinite(upper) & (upper > 0)
    value = np.where(exact, steps, np.where(below, lower, np.where(above, upper, 1.0)))
    a = 1.0 / value
    c = 1.0 / (batches[None, :] * value)

    def objective(s_min: np.ndarray, e_min: np.ndarray) -> np.ndarray:
        r = a * s_min[:, None] + c * e_min[:, None] - 1.0
        return (
            np.where(exact, r * r, 0.0)
            + np.where(below, np.minimum(r, 0.0) ** 2, 0.0)
            + np.where(above, np.maximum(r, 0.0) ** 2, 0.0)
        ).sum(axis=1)

    bounds = below | above
    columns = np.flatnonzero(bounds.any(axis=0))
    best = np.full(rows, np.inf)
    s_best, e_best = np.full(rows, np.nan), np.full(rows, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for subset in itertools.product((False, True), repeat=columns.size):
            counted = exact.copy()
            for column, on in zip(columns, subset, strict=True):
                if on:
                    counted[:, column] |= bounds[:, column]
            wa, wc = np.where(counted, a, 0.0), np.where(counted, c, 0.0)
            saa, scc, sac = (wa * wa).sum(1), (wc * wc).sum(1), (wa * wc).sum(1)
            sa, sc = wa.sum(1), wc.sum(1)
            det = saa * scc - sac * sac
            both_s, both_e = (scc * sa - sac * sc) / det, (saa * sc - sac * sa) / det
            candidates = (
                (both_s, both_e, (det > 1e-12 * saa * scc) & (both_s >= 0) & (both_e >= 0)),
                (sa / saa, np.zeros(rows), saa > 0),
                (np.zeros(rows), sc / scc, scc > 0),
            )
            for s_min, e_min, valid in candidates:
                score = np.where(
                    valid, objective(np.nan_to_num(s_min), np.nan_to_num(e_min)), np.inf
                )
                better = score < best
                best = np.where(better, score, best)
                s_best, e_best = np.where(better, s_min, s_best), np.where(better, e_min, e_best)
    largest = np.where(exact, batches[None, :], 0.0).max(axis=1)
    # An S_min that adds under a billionth to the largest batch size's steps is zero: steps
    # fall as 1/B throughout, and B_crit is beyond the grid.
    s_best = np.where(s_best <= 1e-9 * e_best / np.maximum(largest, 1.0), 0.0, s_best)
    enough = np.array([np.unique(batches[row]).size >= 2 for row in exact])
    return np.where(enough, s_best, np.nan), np.where(enough, e_best, np.nan)


@dataclass(frozen=True)
class CriticalEstimate:
    """The fit and its 95% interval, from one estimator: the point is `fit_critical_batch` on
    the pooled steps to target, the interval the percentiles of the same fit over the smoothed
    bootstrap's replicates (`bootstrap_critical_batch`), both with the same bounds (never
    reached: lower; past the target at the first evaluation: upper). Where the point still lies
    outside the replicates' 95% (a fit the data barely pin down), the interval reaches out to
    it (`stretched`): an interval never leaves out its own estimate."""

    fit: CriticalFit | None
    low: float = math.nan
    high: float = math.nan
    replicates: int = 0
    stretched: bool = False


def estimate_critical_batch(
    steps: pd.DataFrame, crossings: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0
) -> CriticalEstimate:
    """B_crit and its interval from a batch size's pooled steps to target (`steps_to_target`'s
    columns) and the runs' crossings (`first_crossings`); no interval below
    MIN_POINTS_FOR_CI batch sizes reached at a known step."""
    at_most = steps.get("steps_at_most")
    fit = fit_critical_batch(steps["batch_size"], steps["steps"], steps["censored_at"], at_most)
    if fit is None or int(steps["steps"].notna().sum()) < MIN_POINTS_FOR_CI:
        return CriticalEstimate(fit)
    low, high, replicates = bootstrap_critical_batch(crossings, n_boot, seed=seed)
    stretched = replicates > 0 and not low <= fit.b_crit <= high
    if stretched:
        low, high = min(low, fit.b_crit), max(high, fit.b_crit)
    return CriticalEstimate(fit, low, high, replicates, stretched)


def seed_spread(crossings: pd.DataFrame) -> tuple[float, int]:
    """The spread of log steps to target between runs of one configuration: its confirmation
    runs or its budget-free runs at one lr (seeds), pooled over cells; with its degrees of
    freedom (0: none to pool)."""
    seeds = crossings["phase"].isin(["confirm", BUDGET_FREE]) & np.isfinite(crossings["steps"])
    runs = crossings[seeds].assign(
        lr=crossings["base_lr"].fillna(0) if "base_lr" in crossings else 0
    )
    squares, df = 0.0, 0
    for _, group in runs.groupby(["cell", "phase", "lr"]):
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
    draw without any crossing is censored at its longest run; one with a run past the target
    at its first evaluation is an upper bound there, as the point fit has it), and the curve is
    refitted by the same estimator as the point (`censored_fits`).
    Coverage of its 95% interval on 200 simulated studies of a known S(B) (product-shaped:
    tests/test_critical_coverage.py, bench/critical_coverage.py): 91-99% across study shapes,
    where the plain bootstrap of the earliest crossing covered 50-79%. Returns (low, high,
    valid replicates).
    """
    estimates = bootstrap_replicates(crossings, n_boot, seed)
    if not estimates.size:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2
    # inverted_cdf returns sample values, so an infinite B_crit stays infinite (no inf - inf).
    low, high = np.quantile(estimates, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(low), float(high), int(estimates.size)


def bootstrap_replicates(crossings: pd.DataFrame, n_boot: int, seed: int = 0) -> np.ndarray:
    """The B_crit of every valid replicate of `bootstrap_critical_batch` (NaNs dropped)."""
    if crossings.empty:
        return np.array([])
    rng = np.random.default_rng(seed)
    spread, _ = seed_spread(crossings)
    batches, pooled, lower, upper = [], [], [], []
    for batch, group in crossings.groupby("batch_size", sort=True):
        steps = group["steps"].to_numpy(dtype=float)
        reached = np.isfinite(steps)
        before = np.where(reached, group["before"].to_numpy(dtype=float), 0.0)
        first = np.where(reached, group["first"].to_numpy(dtype=float), 0.0)
        at_once = reached & (before <= 0)  # past the target at its first evaluation
        ran = group["ran_steps"].to_numpy(dtype=float)
        draws = rng.integers(0, steps.size, size=(n_boot, steps.size))
        where = before[draws] + rng.random(draws.shape) * (first[draws] - before[draws])
        where *= np.exp(spread * rng.standard_normal(draws.shape))
        known = reached[draws] & ~at_once[draws]
        best = np.where(known & (where > 0), where, np.inf).min(axis=1)
        # A run past the target at its first evaluation says only "at most that many steps",
        # and so does the batch size's earliest crossing then (as `steps_to_target` says).
        bound = np.where(at_once[draws] | known, first[draws], np.inf).min(axis=1)
        some_at_once = at_once[draws].any(axis=1)
        batches.append(float(batch))
        pooled.append(np.where(~some_at_once & np.isfinite(best), best, np.nan))
        upper.append(np.where(some_at_once, bound, np.nan))
        lower.append(np.where(np.isfinite(best) | some_at_once, np.nan, ran[draws].max(axis=1)))
    estimates = fit_many(
        np.asarray(batches), np.column_stack(pooled), np.column_stack(lower), np.column_stack(upper)
    )
    return estimates[~np.isnan(estimates)]


def fit_many(
    batches: np.ndarray,
    steps: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """`fit_critical_batch`'s B_crit for each row of `steps` (replicates x batch sizes; NaN:
    not reached at a known step, with its bound in `lower` or `upper` where it has one), all
    at once (`censored_fits`). NaN where fewer than 2 batch sizes reached the target."""
    s_min, e_min = censored_fits(batches, steps, lower, upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_crit = np.where(s_min <= 0, np.inf, e_min / s_min)
    return np.where((s_min > 0) | (e_min > 0), b_crit, np.nan)


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
