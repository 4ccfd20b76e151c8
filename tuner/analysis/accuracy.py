"""Accuracy (or, for language models, validation loss) per cell and batch size, with honest
uncertainty, and degradation against the baseline.

Everything here is in the study metric's own values (`trainables.metrics`); "better" and a
"drop" follow its direction: a drop is a fall in accuracy or a rise in loss.

- A cell's accuracy is the mean over its *confirmation runs*: its best search configuration
  trained again with fresh seeds. The best search trial itself is the maximum of several noisy
  runs and reads high (and a bootstrap of a best-of-k only reproduces the observed maximum,
  science.md section 8); it is used, flagged, only where no confirmation ran.
- Its uncertainty has two parts: the spread over seeds (s^2 / n) and the validation set's own
  sampling error (p (1 - p) / n_val for an accuracy; for a loss, the per-example loss's
  variance / n_val; more seeds do not shrink it: every run is scored on the same examples).
- Where both sides kept every validation example's value (`trainables.per_example`) the
  comparison is *paired*: the examples' part of the uncertainty comes from the two sides'
  per-example disagreements (`tuner.analysis.paired`), not from two independent binomials, and
  the seeds' part from each side's spread of run means. A workload's own metric (a function
  of the whole set, not a mean over examples) gets the examples' part from bootstrap
  replicates every run computes on the same resamples (`trainables.metric_boot`): the spread
  of the two sides' difference over the replicates, beside each side's spread over seeds
  (coverage of the 90% interval: 94% in 200 simulated macro-F1 studies, where the seeds alone
  gave 84.5%: bench/own_metric_coverage.py). Runs without those records (older studies) fall
  back to the unpaired sum above.
- A batch size's drop below the baseline (the smallest batch size measured) is judged against
  the tolerance with one-sided 95% bounds, as an equivalence test (TOST) does: *holds* when the
  drop's upper bound is within the tolerance, *degraded* when its lower bound exceeds it, and
  *unresolved* otherwise: the study cannot tell, and says how large a drop it could resolve.
  Degrees of freedom are Welch-Satterthwaite's over the seed terms (the validation terms count
  as known).
- A judged run that diverged is a result, not a gap (issue 32): it counts at its last
  evaluation (the one at the step it was found diverged: chance level or worse; where that is not
  finite, the worst value any run of the batch size reached), the estimate says how many of its
  runs diverged, and the batch size is *unstable*: never holds, whatever its mean.
- With one run on a side (`--seeds 1`, an unconfirmed search trial) the spread over seeds is
  unknown, and seeds move a value far more than the validation set's sampling error does: no
  interval is claimed and the comparison is *no interval*, never holds or degraded (issue 32).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.paired import paired_terms, per_example_matrix
from tuner.analysis.trials import FINAL

CONFIDENCE = 0.95  # one-sided, for the bounds of a drop (a 90% two-sided interval)
N_BOOT = 2000
MIN_EVIDENCE = 3  # finished runs a cell needs before a per-rule verdict speaks of it
NO_INTERVAL = "no interval"  # one run on a side: its seed spread unknown, nothing claimed
UNSTABLE = "unstable"  # a judged run diverged
STATUSES = (
    "holds",
    "unresolved",
    "degraded",
    "under-trained",
    "under-searched",
    NO_INTERVAL,
    UNSTABLE,
)


@dataclass(frozen=True)
class Estimate:
    """A value of the study metric with what its uncertainty is made of."""

    mean: float
    std: float  # over seeds; NaN with fewer than two
    n: int  # runs averaged
    val_examples: int
    source: str  # "confirmed": fresh-seed runs; "search": the best search trial (reads high)
    # Standard deviation of the per-example metric over the validation set (a loss); NaN for
    # an accuracy, whose per-example values are 0/1 (binomial).
    val_sd: float = math.nan
    # Runs x validation examples: each run's value at every example (None where not kept).
    per_example: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The same runs on the data set's official test set (`_test_scores`; None: not known).
    test: dict[str, float] | None = field(default=None, compare=False, repr=False)
    diverged: int = 0  # of the n runs, those that diverged (counted at their last evaluation)
    # Runs x bootstrap replicates of a workload's own metric on the same resamples of the
    # validation examples (`trainables.metric_boot`; None where not kept).
    boot: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Each run's value by its seed (None where not known): two levels of the checks run the
    # same seeds, so a gain between them is bounded on paired runs (`checks.gain_upper`).
    by_seed: dict[int, float] | None = field(default=None, compare=False, repr=False)

    @property
    def val_var(self) -> float:
        """Variance of the value from the validation set's finite sample (an own metric's: the
        spread of the runs' mean over the bootstrap's resamples)."""
        if self.boot is not None:
            return float(np.var(self.boot.mean(0), ddof=1))
        if self.val_examples <= 0:
            return math.nan
        if math.isfinite(self.val_sd):
            return self.val_sd**2 / self.val_examples
        p = min(max(self.mean, 0.0), 1.0)
        return p * (1 - p) / self.val_examples

    @property
    def seed_var(self) -> float:
        """Variance of the mean over seeds (NaN below two runs: it cannot be estimated)."""
        return self.std**2 / self.n if self.n >= 2 and math.isfinite(self.std) else math.nan

    @property
    def val_se(self) -> float:
        return math.sqrt(self.val_var) if math.isfinite(self.val_var) else math.nan


@dataclass(frozen=True)
class Comparison:
    """A batch size's (or cell's) drop from the baseline (positive: worse), its one-sided
    bounds, the verdict."""

    drop: float
    low: float
    high: float
    resolution: float  # the bounds' half-width: drops smaller than this are not resolved
    df: float
    status: str  # holds, unresolved, degraded, or no interval (one run on a side)
    paired: bool = False  # example by example on the same validation examples


def estimate(
    final_values: list[float],
    val_examples: int,
    source: str,
    val_sd: float = math.nan,
    per_example: np.ndarray | None = None,
) -> Estimate:
    values = [v for v in final_values if math.isfinite(v)]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else math.nan
    if per_example is not None and per_example.shape[0] != n:
        per_example = None  # a run without a finite value: the records do not match
    return Estimate(mean, std, n, int(val_examples), source, val_sd, per_example)


def runs_estimate(
    runs: pd.DataFrame, val_examples: int, source: str, metric: StudyMetric
) -> Estimate:
    """The estimate of finished runs (rows of `trial_summary`; diverged ones at their kept
    value, `judged_runs`), with their per-example records where the metric has a sampling
    error over examples."""
    matrix = None
    if val_examples and "final_per_example" in runs:
        matrix = per_example_matrix(runs["final_per_example"].tolist())
    found = estimate(
        runs["final_value"].tolist(), val_examples, source, _val_sd(runs, metric), matrix
    )
    diverged = int(runs["diverged"].astype(bool).sum()) if "diverged" in runs else 0
    boot = None
    if not metric.sampling and "final_metric_boot" in runs:
        boot = per_example_matrix(runs["final_metric_boot"].tolist())
        if boot is not None and boot.shape[0] != found.n:
            boot = None  # a run without a final value (diverged): no replicates to pair
    by_seed = None
    if "seed" in runs:
        by_seed = {int(s): float(v) for s, v in zip(runs["seed"], runs["final_value"], strict=True)}
    return dataclasses.replace(
        found, test=_test_scores(runs), diverged=diverged, boot=boot, by_seed=by_seed
    )


def judged_runs(runs: pd.DataFrame, metric: StudyMetric) -> pd.DataFrame:
    """The runs a value is judged by: those that ran their budget, and those that diverged, each
    at its last evaluation (where that is not finite, the worst value of any of `runs`)."""
    diverged = runs["diverged"].astype(bool)
    kept = runs[runs["final"] | diverged].copy()
    if not diverged.any():
        return kept
    scores = pd.concat([runs["final_value"], runs["best_value"]]) * metric.sign
    finite_scores = scores[np.isfinite(scores.astype(float))]
    worst = metric.value(float(finite_scores.min())) if len(finite_scores) else math.nan
    if metric.mode == "max" and not len(finite_scores):
        worst = 0.0
    blown = kept["diverged"].astype(bool)
    value = pd.to_numeric(kept["final_value"], errors="coerce")
    kept.loc[blown, "final_value"] = value[blown].where(np.isfinite(value[blown]), worst)
    return kept


def _booted(base: Estimate, other: Estimate) -> bool:
    """Both sides have an own metric's replicates on the same resamples."""
    return (
        base.boot is not None
        and other.boot is not None
        and base.boot.shape[1] == other.boot.shape[1]
    )


def _paired(base: Estimate, other: Estimate) -> bool:
    return (
        base.per_example is not None
        and other.per_example is not None
        and base.per_example.shape[1] == other.per_example.shape[1]
    )


def compare(
    base: Estimate,
    other: Estimate,
    tolerance: float,
    confidence: float = CONFIDENCE,
    metric: StudyMetric = ACCURACY,
) -> Comparison:
    """The drop (base - other for an accuracy, other - base for a loss) with one-sided
    `confidence` bounds, and what it says."""
    drop = metric.sign * (base.mean - other.mean)
    paired = _paired(base, other)
    booted = _booted(base, other)
    paired = paired or booted
    if min(base.n, other.n) < 2:
        return Comparison(drop, math.nan, math.nan, math.nan, math.nan, NO_INTERVAL, paired)
    if booted:  # an own metric: the examples' part from the replicates' paired differences
        difference = base.boot.mean(0) - other.boot.mean(0)  # type: ignore[union-attr]
        terms = [(float(np.var(difference, ddof=1)), math.inf)]
        terms += [(e.seed_var, e.n - 1) for e in (base, other) if math.isfinite(e.seed_var)]
    elif paired:
        terms = paired_terms(base.per_example, other.per_example)  # type: ignore[arg-type]
    else:
        terms = [(base.val_var, math.inf), (other.val_var, math.inf)]
        for e in (base, other):
            if math.isfinite(e.seed_var):
                terms.append((e.seed_var, e.n - 1))
    terms = [(v, d) for v, d in terms if math.isfinite(v)]
    variance = sum(v for v, _ in terms)
    finite = sum(v * v / d for v, d in terms if math.isfinite(d))
    df = variance * variance / finite if finite > 0 else math.inf
    quantile = stats.norm.ppf(confidence) if math.isinf(df) else stats.t.ppf(confidence, df)
    half = float(quantile) * math.sqrt(variance)
    low, high = drop - half, drop + half
    # 1e-9: a drop of exactly the tolerance counts as within it despite float rounding.
    status = (
        "holds" if high <= tolerance + 1e-9 else "degraded" if low > tolerance else "unresolved"
    )
    return Comparison(drop, low, high, half, df, status, paired)


def cell_accuracy(
    trials: pd.DataFrame, by: str = "cell", metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """Per cell: the best search trial, its confirmation runs, and the cell's estimate."""
    columns = [
        by,
        "batch_size",
        "scaling_rule",
        "optimizer",
        "final_search",
        "search_best",
        "best_trial",
        "confirmed_n",
        "confirmed_mean",
        "confirmed_std",
        "confirm_failed",
        "confirm_diverged",
        "test_mean",
        "test_std",
        "test_n",
        "test_examples",
        "evidence",
        "estimate",
    ]
    rows = []
    for key, group in trials.groupby(by, sort=False):
        search = group[(group["phase"] == "search") & group["final"]]
        confirm = group[group["phase"] == "confirm"]
        done = judged_runs(confirm, metric)  # a diverged seed counts: never a fallback
        val_examples = group["val_examples"].max()
        val_examples = sampled(val_examples, metric)
        best = best_row(search, metric) if len(search) else None
        if len(done):
            est = runs_estimate(done, val_examples, "confirmed", metric)
        elif best is not None:
            est = runs_estimate(
                search[search["trial_id"] == best["trial_id"]], val_examples, "search", metric
            )
        else:
            est = None
        rows.append(
            {
                by: key,
                "batch_size": int(group["batch_size"].iloc[0]),
                "scaling_rule": best["scaling_rule"]
                if best is not None
                else _only(group, "scaling_rule"),
                "optimizer": best["optimizer"] if best is not None else _only(group, "optimizer"),
                "final_search": len(search),
                "search_best": float(best["final_value"]) if best is not None else math.nan,
                "best_trial": best["trial_id"] if best is not None else None,
                "confirmed_n": len(done),
                "confirmed_mean": est.mean if est and est.source == "confirmed" else math.nan,
                "confirmed_std": est.std if est and est.source == "confirmed" else math.nan,
                "confirm_failed": int(
                    ((confirm["outcome"] != "running") & ~confirm["final"]).sum()
                ),
                "confirm_diverged": int(confirm["diverged"].astype(bool).sum()),
                **_test_scores(done),
                "evidence": len(search) + len(done),
                "estimate": est,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _test_scores(done: pd.DataFrame) -> dict[str, float]:
    """The confirmation runs' mean, sd and count on the test set (NaN where there is none)."""
    if "final_test_value" not in done:
        return {"test_mean": math.nan, "test_std": math.nan, "test_n": 0, "test_examples": math.nan}
    scores = pd.to_numeric(done["final_test_value"], errors="coerce").dropna()
    examples = pd.to_numeric(done["test_examples"], errors="coerce")
    return {
        "test_mean": float(scores.mean()) if len(scores) else math.nan,
        "test_std": float(scores.std()) if len(scores) >= 2 else math.nan,
        "test_n": len(scores),
        "test_examples": float(examples.max()) if len(scores) else math.nan,
    }


def _only(group: pd.DataFrame, column: str):
    values = group[column].dropna().unique()
    return values[0] if len(values) == 1 else None


def sampled(val_examples: Any, metric: StudyMetric) -> int:
    """The validation examples behind one value, 0 where its sampling error is unknown (a
    workload's own metric: then only the spread over seeds bounds a drop)."""
    if not metric.sampling or not pd.notna(val_examples):
        return 0
    return int(val_examples)


def _val_sd(runs: pd.DataFrame, metric: StudyMetric) -> float:
    """The per-example spread of a loss on the validation set (mean over the runs); NaN for an
    accuracy (binomial)."""
    if metric.name != "loss" or "final_val_loss_sd" not in runs:
        return math.nan
    sd = pd.to_numeric(runs["final_val_loss_sd"], errors="coerce").dropna()
    return float(sd.mean()) if len(sd) else math.nan


def best_row(group: pd.DataFrame, metric: StudyMetric = ACCURACY) -> pd.Series:
    """The best trial of a group: best final value (highest accuracy, lowest loss); ties go to
    the earliest trial."""
    ordered = group.assign(_score=group["final_value"] * metric.sign).sort_values(
        ["_score", "optuna_number"], ascending=[False, True], kind="stable"
    )
    return ordered.drop(columns="_score").iloc[0]


def final_search_trials(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials["phase"] == "search") & trials["outcome"].isin(FINAL) & trials["final"]]
