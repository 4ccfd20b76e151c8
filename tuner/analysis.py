"""The degradation map as pure functions over the tidy trial table (`tuner.results`).

No Ray and no plotting here: every function takes a DataFrame (or arrays) and returns one, so
the whole analysis is tested in milliseconds on hand-built tables. `degradation_map` runs all of
it; `tuner.report` writes the result, `tuner.plots` draws it.

Definitions (science.md sections 1, 2, 5, 6):
- A trial's *final* accuracy is its validation accuracy at its last reported epoch. Only
  finished, non-diverged trials (outcome completed or stopped) have one; running trials are
  counted but not scored, diverged trials are counted as infeasible.
- *Steps to target* per batch size is pooled as Shallue et al. do: of every evaluation point of
  every non-diverged trial of that batch size, the first (fewest optimizer steps) whose
  validation accuracy reaches the target. Evaluations happen once per epoch, so steps to target
  are measured at epoch granularity.
- The *baseline* is the best final accuracy at the smallest batch size with a scored trial; a
  batch size is *degraded* when its best is below the baseline by more than the tolerance.
- The *critical batch size* comes from a fit of S(B) = S_min (1 + B_crit / B) (McCandlish et
  al.), which is linear in 1/B: S = S_min + E_min / B with E_min = S_min * B_crit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

OUTCOMES = ("completed", "stopped", "diverged", "errored", "running")
SCORED = ("completed", "stopped")  # outcomes with a final accuracy
PARAMS = ("scaling_rule", "optimizer", "base_lr", "actual_lr", "warmup_epochs", "weight_decay")
# Searched ranges sampled on a log scale (search_spaces.define_by_run uses log=True for these).
LOG_PARAMS = ("base_lr", "weight_decay")
EDGE_FRACTION = 0.05  # a best value within 5% of its range's width from a bound is "on the edge"
# Regimes from the local slope of log S vs log B, which for the fitted curve is
# -B_crit / (B + B_crit): steeper than -0.8 (B <= B_crit / 4) is perfect scaling, flatter than
# -0.2 (B >= 4 B_crit) is maximal data parallelism, anything between is diminishing returns.
PERFECT_SCALING_MAX = 0.25  # B / B_crit at or below which scaling is (nearly) perfect
MAXIMAL_PARALLELISM_MIN = 4.0  # B / B_crit at or above which more batch buys ~no fewer steps
REGIMES = ("perfect scaling", "diminishing returns", "maximal data parallelism")
N_BOOT = 2000
MIN_POINTS_FOR_CI = 3  # batch sizes reaching the target before B_crit gets an interval
CONFIDENCE = 0.95


# --- per-trial view -------------------------------------------------------------------------


def _flag(series: pd.Series) -> pd.Series:
    """A boolean column that may hold NaN (errored rows) or strings (read back from CSV)."""
    return series.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def trial_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: config, outcome, last epoch's metrics, best accuracy, divergence."""
    columns = [
        "trial_id",
        "optuna_number",
        "outcome",
        "batch_size",
        *PARAMS,
        "workers",
        "epochs",
        "final_val_acc",
        "final_val_loss",
        "final_train_loss",
        "best_val_acc",
        "diverged",
        "scored",
    ]
    if table.empty:
        return pd.DataFrame(columns=columns)
    table = table.assign(_diverged=_flag(table["diverged"]))
    rows = []
    for trial_id, group in table.groupby("trial_id", sort=False):
        group = group.sort_values("epoch", na_position="first")
        last = group.iloc[-1]
        # A trial is infeasible if it was told diverged or reported a diverged epoch (a running
        # trial's outcome is only written when it ends).
        diverged = last["outcome"] == "diverged" or bool(group["_diverged"].any())
        accuracy = pd.to_numeric(group["val_acc"], errors="coerce")
        row = {
            "trial_id": trial_id,
            "optuna_number": last["optuna_number"],
            "outcome": last["outcome"],
            "batch_size": int(last["batch_size"]),
            **{p: last[p] for p in PARAMS},
            "workers": last["workers"],
            "epochs": last["epoch"],
            "final_val_acc": float(accuracy.iloc[-1]),
            "final_val_loss": last["val_loss"],
            "final_train_loss": last["train_loss"],
            "best_val_acc": float(accuracy.max()) if accuracy.notna().any() else math.nan,
            "diverged": diverged,
        }
        row["scored"] = (
            row["outcome"] in SCORED and not diverged and math.isfinite(row["final_val_acc"])
        )
        rows.append(row)
    trials = pd.DataFrame(rows, columns=columns)
    for name in (
        "base_lr",
        "actual_lr",
        "warmup_epochs",
        "weight_decay",
        "workers",
        "epochs",
        "final_val_loss",
        "final_train_loss",
    ):
        trials[name] = pd.to_numeric(trials[name], errors="coerce")
    return trials.sort_values("optuna_number", kind="stable").reset_index(drop=True)


def outcome_counts(trials: pd.DataFrame, by: Sequence[str] = ("batch_size",)) -> pd.DataFrame:
    """Trials per group and how they ended (completed / stopped / diverged / errored / running)."""
    by = list(by)
    if trials.empty:
        return pd.DataFrame(columns=[*by, "trials", *OUTCOMES])
    # A trial with a diverged epoch counts as diverged even while its outcome is still running.
    outcome = trials["outcome"].where(~trials["diverged"].astype(bool), "diverged")
    counts = pd.crosstab([trials[c] for c in by], outcome)
    counts = counts.reindex(columns=list(OUTCOMES), fill_value=0)
    counts.insert(0, "trials", counts.sum(axis=1))
    counts.columns.name = None
    return counts.reset_index()


# --- best accuracy and its bootstrap ------------------------------------------------------------


def bootstrap_best_of_k(
    values: Sequence[float],
    k: int | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the best of `k` trials drawn with replacement (k: all of them)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    k = k or values.size
    rng = np.random.default_rng(seed)
    best = rng.choice(values, size=(n_boot, k), replace=True).max(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(best, [alpha, 1.0 - alpha])
    return float(low), float(high)


def best_accuracy(
    trials: pd.DataFrame, by: Sequence[str] = ("batch_size",), n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Best final accuracy per group, its trial, and a bootstrap CI of the best-of-k."""
    by = list(by)
    columns = [*by, "scored", "best_val_acc", "ci_low", "ci_high", "best_trial"]
    scored = trials[trials["scored"]] if not trials.empty else trials
    rows = []
    for key, group in scored.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        best = _best_row(group)
        low, high = bootstrap_best_of_k(group["final_val_acc"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "scored": len(group),
                "best_val_acc": float(best["final_val_acc"]),
                "ci_low": low,
                "ci_high": high,
                "best_trial": best["trial_id"],
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _best_row(group: pd.DataFrame) -> pd.Series:
    """The best trial of a group: highest final accuracy; ties go to the earliest trial."""
    ordered = group.sort_values(
        ["final_val_acc", "optuna_number"], ascending=[False, True], kind="stable"
    )
    return ordered.iloc[0]


# --- steps and examples to target -----------------------------------------------------------


def first_crossings(table: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per non-diverged trial with at least one evaluation: its first point at or above target.

    Trials that never reach the target get infinite steps (they still count as resampling
    candidates in the bootstrap); diverged trials are left out, as Shallue et al. do.
    """
    columns = ["trial_id", "batch_size", "scaling_rule", "epoch", "steps", "examples"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    diverged = table.groupby("trial_id")["diverged"].transform(lambda s: _flag(s).any())
    diverged = diverged.astype(bool)
    told = table["outcome"] == "diverged"
    points = table[~diverged & ~told].copy()
    points["val_acc"] = pd.to_numeric(points["val_acc"], errors="coerce")
    points = points[points["val_acc"].notna()]
    rows = []
    for trial_id, group in points.groupby("trial_id", sort=False):
        reached = group[group["val_acc"] >= target].sort_values("optimizer_steps")
        first = reached.iloc[0] if len(reached) else None
        rows.append(
            {
                "trial_id": trial_id,
                "batch_size": int(group["batch_size"].iloc[0]),
                "scaling_rule": group["scaling_rule"].iloc[0],
                "epoch": first["epoch"] if first is not None else math.nan,
                "steps": float(first["optimizer_steps"]) if first is not None else math.inf,
                "examples": (float(first["examples_seen"]) if first is not None else math.inf),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def steps_to_target(
    crossings: pd.DataFrame, trials: pd.DataFrame, by: Sequence[str] = ("batch_size",)
) -> pd.DataFrame:
    """Pooled steps and examples to target per group, with trials reaching / left out."""
    by = list(by)
    columns = [
        *by,
        "steps",
        "examples",
        "target_trial",
        "target_epoch",
        "candidates",
        "reached",
        "diverged_excluded",
    ]
    keys = trials[by].drop_duplicates() if not trials.empty else pd.DataFrame(columns=by)
    rows = []
    for key in keys.itertuples(index=False):
        mask = (
            np.logical_and.reduce([crossings[c] == v for c, v in zip(by, key, strict=True)])
            if len(crossings)
            else np.zeros(0, dtype=bool)
        )
        group = crossings[mask] if len(crossings) else crossings
        in_group = np.logical_and.reduce([trials[c] == v for c, v in zip(by, key, strict=True)])
        row = {
            **dict(zip(by, key, strict=True)),
            "steps": math.nan,
            "examples": math.nan,
            "target_trial": None,
            "target_epoch": math.nan,
            "candidates": len(group),
            "reached": int(np.isfinite(group["steps"].astype(float)).sum()),
            "diverged_excluded": int(trials[in_group]["diverged"].astype(bool).sum()),
        }
        if row["reached"]:
            # Fewest steps first; at equal steps the fewer examples (same batch: a no-op).
            first = group.sort_values(["steps", "examples"], kind="stable").iloc[0]
            row.update(
                steps=float(first["steps"]),
                examples=float(first["examples"]),
                target_trial=first["trial_id"],
                target_epoch=first["epoch"],
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).sort_values(by).reset_index(drop=True)


# --- degradation ----------------------------------------------------------------------------


def baseline(best: pd.DataFrame) -> tuple[int, float] | None:
    """(smallest batch size with a scored trial, its best accuracy), or None without one."""
    if best.empty:
        return None
    row = best.sort_values("batch_size").iloc[0]
    return int(row["batch_size"]), float(row["best_val_acc"])


def mark_degraded(best: pd.DataFrame, baseline_acc: float, tolerance: float) -> pd.DataFrame:
    """Add `drop` (baseline minus best, a fraction) and `degraded` (drop beyond tolerance)."""
    best = best.copy()
    best["drop"] = baseline_acc - best["best_val_acc"]
    # 1e-9 keeps a drop of exactly the tolerance within it despite float rounding.
    best["degraded"] = best["drop"] > tolerance + 1e-9
    return best


def largest_within_tolerance(marked: pd.DataFrame) -> int | None:
    """Largest batch size up to which every measured batch size stays within tolerance.

    Batch sizes without a scored trial are no evidence either way and are skipped; the first
    degraded one ends the run. None when the smallest measured batch size is already degraded.
    """
    largest = None
    for row in marked.sort_values("batch_size").itertuples(index=False):
        if row.degraded:
            break
        largest = int(row.batch_size)
    return largest


# --- critical batch size --------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalFit:
    """S(B) = s_min (1 + b_crit / B): b_crit is inf when steps fall as 1/B throughout."""

    s_min: float
    e_min: float
    b_crit: float
    points: int
    r2: float

    def steps(self, batch: np.ndarray | float) -> np.ndarray | float:
        """Fitted steps to target at `batch`."""
        return self.s_min + self.e_min / np.asarray(batch, dtype=float)


def fit_critical_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> CriticalFit | None:
    """Least squares of S against 1/B with S_min, E_min >= 0; None with fewer than 2 points.

    Residuals are relative (each row divided by its S): steps span orders of magnitude, and
    plain least squares would let the smallest batch size decide the fit alone.
    """
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    keep = np.isfinite(b) & np.isfinite(s) & (b > 0) & (s > 0)
    b, s = b[keep], s[keep]
    if np.unique(b).size < 2:
        return None
    design = np.column_stack([1.0 / s, 1.0 / (b * s)])
    (s_min, e_min), _ = nnls(design, np.ones_like(s))
    if s_min <= 0 and e_min <= 0:
        return None
    b_crit = math.inf if s_min <= 0 else e_min / s_min  # S_min = 0: steps fall as 1/B throughout
    predicted = s_min + e_min / b
    log_s, log_p = np.log(s), np.log(np.maximum(predicted, 1e-300))
    total = float(((log_s - log_s.mean()) ** 2).sum())
    r2 = 1.0 - float(((log_s - log_p) ** 2).sum()) / total if total > 0 else 1.0
    return CriticalFit(
        s_min=float(s_min), e_min=float(e_min), b_crit=float(b_crit), points=int(b.size), r2=r2
    )


def bootstrap_critical_batch(
    crossings: pd.DataFrame, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile CI of B_crit, resampling each batch size's trials with replacement.

    Each replicate redraws every batch size's non-diverged trials, pools their first crossings
    again (minimum over the draw) and refits. Returns (low, high, valid replicates).
    """
    if crossings.empty:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    batches, pooled = [], []
    for batch, group in crossings.groupby("batch_size", sort=True):
        firsts = group["steps"].to_numpy(dtype=float)
        draws = rng.integers(0, firsts.size, size=(n_boot, firsts.size))
        batches.append(float(batch))
        pooled.append(firsts[draws].min(axis=1))
    pooled = np.column_stack(pooled)
    batches = np.asarray(batches)
    estimates = []
    for replicate in pooled:
        fit = fit_critical_batch(batches, replicate)
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


# --- best hyperparameters -------------------------------------------------------------------


def best_hyperparameters(trials: pd.DataFrame, by: Sequence[str] = ("batch_size",)) -> pd.DataFrame:
    """The best scored trial's hyperparameters per group, with lr predictions per batch size.

    Predictions scale the smallest batch size's best actual lr linearly and by the square
    root of the batch ratio (Goyal et al.; Hoffer et al.).
    """
    by = list(by)
    params = [p for p in PARAMS if p not in by]
    columns = [*by, "trial_id", "val_acc", *params, "lr_linear", "lr_sqrt"]
    scored = trials[trials["scored"]] if not trials.empty else trials
    rows = []
    for key, group in scored.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        best = _best_row(group)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "trial_id": best["trial_id"],
                "val_acc": float(best["final_val_acc"]),
                **{p: best[p] for p in params},
            }
        )
    best = pd.DataFrame(rows, columns=columns)
    if best.empty:
        return best
    # Anchor at the smallest batch size of each group of the other keys (e.g. per rule).
    others = [c for c in by if c != "batch_size"]
    groups = best.groupby(others, sort=False) if others else [(None, best)]
    for _, group in groups:
        anchor = group.sort_values("batch_size").iloc[0]
        ratio = group["batch_size"].astype(float) / float(anchor["batch_size"])
        best.loc[group.index, "lr_linear"] = float(anchor["actual_lr"]) * ratio
        best.loc[group.index, "lr_sqrt"] = float(anchor["actual_lr"]) * np.sqrt(ratio)
    return best


def range_position(value: float, low: float, high: float, log: bool) -> float:
    """Where `value` sits in [low, high]: 0 at the lower bound, 1 at the upper one."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low) if high > low else 0.5


def boundary_warnings(
    best: pd.DataFrame, ranges: dict[str, Any], edge: float = EDGE_FRACTION
) -> list[dict[str, Any]]:
    """Best trials whose searched value sits within `edge` of a range bound (widen the range).

    Log-sampled parameters are compared in log space. A lower bound of exactly 0 on a linear
    range (no warmup) is a hard limit that cannot be widened, so it is not flagged.
    """
    warnings = []
    for row in best.itertuples(index=False):
        for name in ("base_lr", "weight_decay", "warmup_epochs"):
            bounds, value = ranges.get(name), getattr(row, name)
            if bounds is None or value is None or not math.isfinite(float(value)):
                continue
            low, high = float(bounds[0]), float(bounds[1])
            log = name in LOG_PARAMS
            if log and (value <= 0 or low <= 0):
                continue
            position = range_position(float(value), low, high, log)
            side = "lower" if position <= edge else "upper" if position >= 1 - edge else None
            if side is None or (side == "lower" and not log and low == 0.0):
                continue
            scale = "log scale" if log else "linear scale"
            warnings.append(
                {
                    "batch_size": int(row.batch_size),
                    "trial_id": row.trial_id,
                    "param": name,
                    "value": float(value),
                    "low": low,
                    "high": high,
                    "side": side,
                    "message": f"batch {int(row.batch_size)}: best {name} {float(value):.3g} is at "
                    f"the {side} edge of its search range [{low:g}, {high:g}] "
                    f"({scale}); widen the range",
                }
            )
    return warnings


# --- throughput -----------------------------------------------------------------------------


def throughput(table: pd.DataFrame) -> pd.DataFrame:
    """Median samples/s and epoch time per batch size and worker count, over all epochs."""
    columns = ["batch_size", "workers", "samples_per_second", "epoch_time_s", "epochs", "trials"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = table.assign(
        samples_per_second=pd.to_numeric(table["samples_per_second"], errors="coerce"),
        epoch_time_s=pd.to_numeric(table["epoch_time_s"], errors="coerce"),
        workers=pd.to_numeric(table["workers"], errors="coerce"),
    )
    rows = rows[rows["samples_per_second"].notna() & rows["workers"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    # The median shrugs off the first epoch's start-up cost and a busy neighbour.
    result = (
        rows.groupby(["batch_size", "workers"])
        .agg(
            samples_per_second=("samples_per_second", "median"),
            epoch_time_s=("epoch_time_s", "median"),
            epochs=("epoch", "size"),
            trials=("trial_id", "nunique"),
        )
        .reset_index()
    )
    result["workers"] = result["workers"].astype(int)
    return result[columns]


# --- the whole map --------------------------------------------------------------------------


@dataclass
class DegradationMap:
    """Everything the report shows, as tables and a few numbers."""

    target: float
    tolerance: float
    batch_sizes: list[int]
    trials: pd.DataFrame
    frontier: pd.DataFrame
    by_rule: pd.DataFrame
    best_hparams: pd.DataFrame
    best_by_rule: pd.DataFrame
    throughput: pd.DataFrame
    crossings: pd.DataFrame
    baseline: tuple[int, float] | None
    largest_within: int | None
    largest_within_by_rule: dict[str, int | None]
    fit: CriticalFit | None
    b_crit_ci: tuple[float, float]
    b_crit_replicates: int
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _rule_frontier(
    trials: pd.DataFrame,
    crossings: pd.DataFrame,
    baseline_acc: float | None,
    tolerance: float,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """The per batch size x scaling rule table: counts, best, CI, degradation, steps."""
    by = ["batch_size", "scaling_rule"]
    table = outcome_counts(trials, by)
    table = table.merge(best_accuracy(trials, by, n_boot, seed), on=by, how="left")
    table = table.merge(
        steps_to_target(crossings, trials, by)[[*by, "steps", "examples"]], on=by, how="left"
    )
    if baseline_acc is not None:
        table = mark_degraded(table, baseline_acc, tolerance)
    else:
        table["drop"], table["degraded"] = math.nan, None
    table["degraded"] = _unknown_unless_measured(table)
    return table.sort_values(by).reset_index(drop=True)


def _unknown_unless_measured(table: pd.DataFrame) -> pd.Series:
    """`degraded` as True / False where a best accuracy exists, None (unknown) elsewhere."""
    return pd.Series(
        [
            bool(d) if pd.notna(a) else None
            for d, a in zip(table["degraded"], table["best_val_acc"], strict=True)
        ],
        index=table.index,
        dtype=object,
    )


def _accuracy_frontier(
    trials: pd.DataFrame, grid: list[int], tolerance: float, n_boot: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, tuple[int, float] | None]:
    """Per batch size: outcome counts, best accuracy + CI, degradation, best hyperparameters."""
    frontier = pd.DataFrame({"batch_size": grid})
    frontier = frontier.merge(outcome_counts(trials), on="batch_size", how="left")
    for name in ("trials", *OUTCOMES):
        frontier[name] = frontier[name].fillna(0).astype(int)
    best = best_accuracy(trials, n_boot=n_boot, seed=seed)
    base = baseline(best)
    if base is not None:
        best = mark_degraded(best, base[1], tolerance)
    frontier = frontier.merge(best, on="batch_size", how="left")
    frontier["scored"] = frontier["scored"].fillna(0).astype(int)
    if base is None:
        frontier["drop"], frontier["degraded"] = math.nan, None
    frontier["degraded"] = _unknown_unless_measured(frontier)
    hparams = best_hyperparameters(trials)
    frontier = frontier.merge(
        hparams[
            [
                "batch_size",
                "scaling_rule",
                "optimizer",
                "actual_lr",
                "warmup_epochs",
                "weight_decay",
                "lr_linear",
                "lr_sqrt",
            ]
        ].rename(
            columns={
                "scaling_rule": "best_rule",
                "optimizer": "best_optimizer",
                "actual_lr": "best_actual_lr",
                "warmup_epochs": "best_warmup_epochs",
                "weight_decay": "best_weight_decay",
            }
        ),
        on="batch_size",
        how="left",
    )
    return frontier, best, base


def _steps_frontier(
    frontier: pd.DataFrame, crossings: pd.DataFrame, trials: pd.DataFrame, n_boot: int, seed: int
) -> tuple[pd.DataFrame, CriticalFit | None, tuple[float, float, int]]:
    """Add steps/examples to target, the perfect-scaling line, the fit and regimes."""
    frontier = frontier.merge(steps_to_target(crossings, trials), on="batch_size", how="left")
    measured = frontier[frontier["steps"].notna()]
    fit = fit_critical_batch(measured["batch_size"], measured["steps"])
    # Two points fit the curve exactly; resampling them says nothing about the fit's error.
    interval = (
        bootstrap_critical_batch(crossings, n_boot, seed=seed)
        if fit is not None and fit.points >= MIN_POINTS_FOR_CI
        else (math.nan, math.nan, 0)
    )
    if len(measured):
        # Perfect scaling from the smallest measured batch size: steps_0 * B_0 / B.
        anchor = measured.iloc[0]
        frontier["steps_perfect"] = anchor["steps"] * anchor["batch_size"] / frontier["batch_size"]
    else:
        frontier["steps_perfect"] = math.nan
    frontier["steps_fit"] = fit.steps(frontier["batch_size"].to_numpy()) if fit else math.nan
    frontier["regime"] = [regime(b, fit.b_crit if fit else None) for b in frontier["batch_size"]]
    return frontier, fit, interval


def degradation_map(
    table: pd.DataFrame,
    *,
    target: float,
    tolerance: float,
    batch_sizes: Sequence[int] = (),
    ranges: dict[str, Any] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> DegradationMap:
    """Run the whole analysis on a trial table (see the module docstring for definitions)."""
    trials = trial_summary(table)
    grid = sorted(set(int(b) for b in batch_sizes) | set(trials["batch_size"].astype(int)))
    frontier, best, base = _accuracy_frontier(trials, grid, tolerance, n_boot, seed)
    crossings = first_crossings(table, target)
    frontier, fit, (low, high, replicates) = _steps_frontier(
        frontier, crossings, trials, n_boot, seed
    )
    speed = throughput(table)
    # A study has one worker count, so the fastest row per batch size is that count's speed.
    per_batch = (
        speed.groupby("batch_size")["samples_per_second"].max()
        if len(speed)
        else pd.Series(dtype=float)
    )
    frontier["samples_per_second"] = frontier["batch_size"].map(per_batch).astype(float)

    by_rule = _rule_frontier(trials, crossings, base[1] if base else None, tolerance, n_boot, seed)
    by_rule_within = {}
    for rule, group in by_rule.groupby("scaling_rule", sort=True):
        scored_rows = group[group["best_val_acc"].notna()]
        by_rule_within[rule] = largest_within_tolerance(scored_rows) if len(scored_rows) else None
    hparams = best_hyperparameters(trials)
    return DegradationMap(
        target=target,
        tolerance=tolerance,
        batch_sizes=grid,
        trials=trials,
        frontier=frontier,
        by_rule=by_rule,
        best_hparams=hparams,
        best_by_rule=best_hyperparameters(trials, ("batch_size", "scaling_rule")),
        throughput=speed,
        crossings=crossings,
        baseline=base,
        largest_within=largest_within_tolerance(best) if base is not None else None,
        largest_within_by_rule=by_rule_within,
        fit=fit,
        b_crit_ci=(low, high),
        b_crit_replicates=replicates,
        warnings=boundary_warnings(hparams, ranges or {}),
    )
