"""The local critical batch size from branched runs (Merrill et al. 2025, arXiv:2505.23971).

From a checkpoint of one run at batch B, branches train at k B (k = 1, 2, 4, ...; k = 1 is the
run itself going on) for a window of the same number of examples, each with its lr by the
scaling rule and a small search around it. At the window's end, that is at equal data, each
is scored on the whole validation split with the study metric. The local critical batch size
is the largest k B that keeps within the study's tolerance of every smaller k: up to it, a
larger batch loses (almost) nothing per example, so it needs k times fewer steps; beyond it, it
does. Measured at several checkpoints it shows how the critical batch size grows over
training, and suggests a batch-size schedule (Merrill et al.'s batch-size warmup).

Merrill et al. compare EMA-smoothed training losses, because a language model's step loss is
a noisy estimate; here every branch ends on the same full validation split, which is no
estimate to smooth, and the comparison is the product's own: the drop of one rung from the
best smaller rung with one-sided bounds from the runs' seeds and the shared validation
examples (`tuner.analysis.accuracy.compare`, paired example by example). The interval of the
local critical batch follows from those bounds: its low end is where every rung so far is
shown to hold, its high end the rung before the first shown degraded.

Plain numpy and pandas (no Ray): tested on a noisy quadratic with a known answer
(`tuner.analysis.simulate.NoisyQuadratic`, tests/test_branch.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.metrics import ACCURACY, StudyMetric
from trainables.per_example import encode
from tuner.analysis.accuracy import Comparison, Estimate, compare, estimate
from tuner.analysis.paired import per_example_matrix


@dataclass(frozen=True)
class BranchRun:
    """One run through the window from one checkpoint, as its trial recorded it."""

    checkpoint: float  # the base run's progress (fraction of its budget) where it branched
    multiplier: int  # k: it trains at k x the base batch (1: the base run going on)
    candidate: str  # which lr: a rule's ("sqrt"), or the searched one around it ("sqrt x2")
    lr: float
    seed: int
    phase: str  # "search" (one seed per candidate) or "confirm" (fresh seeds of the best)
    value: float  # the study metric at the window's end (NaN: diverged)
    val_examples: int = 0
    val_sd: float = math.nan  # of the per-example loss (a loss metric's sampling error)
    per_example: str | None = None  # trainables.per_example record of the metric

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BranchRun:
        """From a rung trial's record of one run (tuner.branch.trial.run_record)."""
        sd = record.get("val_loss_sd")
        return cls(
            checkpoint=float(record["checkpoint"]),
            multiplier=int(record["multiplier"]),
            candidate=str(record["candidate"]),
            lr=float(record["lr"]),
            seed=int(record["seed"]),
            phase=str(record["phase"]),
            value=float(record["value"]),
            val_examples=int(record["val_examples"]),
            val_sd=float(sd) if sd is not None else math.nan,
            per_example=record.get("per_example"),
        )


@dataclass(frozen=True)
class Rung:
    """One multiplier at one checkpoint: its best candidate's confirmed estimate and how it
    compares with the best smaller rung."""

    multiplier: int
    batch: int
    candidate: str  # the lr candidate that won the rung's search
    lr: float
    estimate: Estimate
    comparison: Comparison | None  # None for k = 1 (the reference)


@dataclass(frozen=True)
class LocalCritical:
    """The local critical batch size at one checkpoint, with its interval."""

    checkpoint: float
    batch: int  # largest k B within the tolerance of every smaller rung (point estimate)
    low: int  # largest k B up to which every rung is shown to hold
    high: int  # the rung before the first shown degraded (or the last measured)
    censored: bool  # no rung was shown degraded: the high end is "at least"
    rungs: tuple[Rung, ...]
    tolerance: float = math.nan  # what the rungs were judged by (NaN: k = 1 made no progress)
    note: str = ""  # why the ladder ended early, where it did (a failed rung)
    # The largest k B up to which every rung is shown to lose at most `strict` (the schedule's
    # criterion: a batch size that loses (almost) nothing at equal data).
    efficient: int = 0


# The default tolerance of a checkpoint: this share of what k = 1 gains over the window. A rung
# within it makes at least half of k = 1's progress on the same examples, so it needs at most
# about twice the examples: McCandlish et al.'s critical batch size, where E(B) = 2 E_min
# (E(B) = E_min (1 + B / B_noise)), which the grid's critical batch size fits too. Scale-free,
# so it needs no measured default for a user's own model; --tolerance gives a fixed one.
GAIN_SHARE = 0.5
# A suggested schedule asks more: a rung it doubles to must be shown to make at least 90% of
# k = 1's progress (about 10% more examples, inside the perfect-scaling regime). By the
# critical batch itself (half the progress) the schedules fell 3-4 pt short of their base runs
# when verified (digits, mnist1d): at the critical batch a run needs twice the data, which a
# schedule at equal data does not have.
SCHEDULE_SHARE = 0.1


def best_candidate(runs: Sequence[BranchRun], metric: StudyMetric = ACCURACY) -> str | None:
    """The candidate whose search run ended best (diverged runs never win)."""
    search = [r for r in runs if r.phase == "search" and math.isfinite(r.value)]
    if not search:
        return None
    return max(search, key=lambda r: metric.sign * r.value).candidate


def rung_estimate(runs: Sequence[BranchRun], candidate: str) -> Estimate:
    """The candidate's estimate from its confirmation runs (fresh seeds: the search run that
    chose it reads high), falling back to the search run where none was confirmed."""
    chosen = [r for r in runs if r.candidate == candidate and r.phase == "confirm"]
    if not chosen:
        chosen = [r for r in runs if r.candidate == candidate]
    records = [r.per_example for r in chosen]
    matrix = per_example_matrix(records) if all(records) else None
    sds = [r.val_sd for r in chosen if math.isfinite(r.val_sd)]
    return estimate(
        [r.value for r in chosen],
        chosen[0].val_examples,
        "confirmed",
        float(np.mean(sds)) if sds else math.nan,
        matrix,
    )


ERRORED = "errored"  # the candidate of a rung whose trial failed (no run to judge)


def ladder(
    runs: Sequence[BranchRun],
    base_batch: int,
    tolerance: float,
    metric: StudyMetric = ACCURACY,
) -> list[Rung]:
    """The rungs of one checkpoint, ascending, each compared with the best smaller rung. A
    rung that diverged (every candidate, or every run of its winner) is degraded; one whose
    trial errored is `ERRORED`; either ends the ladder there (as does k = 1 failing)."""
    rungs: list[Rung] = []
    best: Estimate | None = None
    for k in sorted({r.multiplier for r in runs}):
        mine = [r for r in runs if r.multiplier == k]
        failed = estimate([], mine[0].val_examples, "confirmed")
        if all(r.candidate == ERRORED for r in mine):
            errored = Comparison(math.nan, math.nan, math.nan, 0.0, math.inf, ERRORED)
            rungs.append(Rung(k, k * base_batch, ERRORED, math.nan, failed, errored))
            break
        candidate = best_candidate(mine, metric)
        value = rung_estimate(mine, candidate) if candidate is not None else failed
        if not math.isfinite(value.mean):  # it cannot keep up at any lr tried
            lr = min(r.lr for r in mine)
            drop = Comparison(math.inf, math.inf, math.inf, 0.0, math.inf, "degraded")
            rungs.append(Rung(k, k * base_batch, "diverged", lr, failed, drop))
            break
        lr = next(r.lr for r in mine if r.candidate == candidate)
        comparison = None if best is None else compare(best, value, tolerance, metric=metric)
        rungs.append(Rung(k, k * base_batch, str(candidate), lr, value, comparison))
        if best is None or metric.sign * (value.mean - best.mean) > 0:
            best = value
    return rungs


def checkpoint_tolerance(
    runs: Sequence[BranchRun],
    start: float | None,
    metric: StudyMetric = ACCURACY,
    tolerance: float = 0.0,
) -> float:
    """`tolerance` where given (> 0); else GAIN_SHARE of what the k = 1 rung gained over the
    window from `start` (the base run's value at the checkpoint); NaN where it gained nothing."""
    if tolerance > 0:
        return tolerance
    reference = [r for r in runs if r.multiplier == 1]
    candidate = best_candidate(reference, metric)
    if candidate is None or start is None or not math.isfinite(start):
        return math.nan
    gain = metric.sign * (rung_estimate(reference, candidate).mean - start)
    return GAIN_SHARE * gain if gain > 0 else math.nan


def measure(
    runs: Sequence[BranchRun],
    base_batch: int,
    tolerance: float = 0.0,
    metric: StudyMetric = ACCURACY,
    start: dict[float, float] | None = None,
) -> list[LocalCritical]:
    """The local critical batch size at every checkpoint the runs branched from, judged by
    `tolerance` (> 0) or by each checkpoint's share of its k = 1 gain from `start` (the base
    run's value at each checkpoint)."""
    out = []
    for checkpoint in sorted({r.checkpoint for r in runs}):
        mine = [r for r in runs if r.checkpoint == checkpoint]
        rungs, tol = judged_ladder(
            mine, base_batch, (start or {}).get(checkpoint), tolerance, metric
        )
        strict = tolerance if tolerance > 0 else tol * SCHEDULE_SHARE / GAIN_SHARE
        out.append(walk(rungs, checkpoint, tol, strict))
    return out


def judged_ladder(
    runs: Sequence[BranchRun],
    base_batch: int,
    start: float | None,
    tolerance: float = 0.0,
    metric: StudyMetric = ACCURACY,
) -> tuple[list[Rung], float]:
    """One checkpoint's rungs, compared by its tolerance (`checkpoint_tolerance`), and that."""
    tol = checkpoint_tolerance(runs, start, metric, tolerance)
    return ladder(runs, base_batch, tol, metric), tol


def walk(
    rungs: Sequence[Rung], checkpoint: float, tolerance: float, strict: float = math.nan
) -> LocalCritical:
    """Walk up the rungs: the point estimate ends at the first drop beyond the tolerance, the
    low end at the first rung not shown to hold, the high end before the first shown
    degraded."""
    base = rungs[0].batch
    if rungs[0].comparison is not None:  # k = 1 itself diverged or errored: nothing to judge by
        what = "errored" if rungs[0].comparison.status == ERRORED else "diverged"
        note = f"k=1 (batch {base}) {what}: not measured"
        return LocalCritical(checkpoint, base, base, base, False, tuple(rungs), math.nan, note)
    point = low = high = base
    point_open = low_open = True
    degraded, note = False, ""
    for rung in rungs[1:]:
        c = rung.comparison
        assert c is not None
        if c.status == ERRORED:
            note = f"the rung at batch {rung.batch} errored: the ladder ends below it"
            break
        if point_open and c.drop <= tolerance + 1e-9:
            point = rung.batch
        else:
            point_open = False
        if low_open and c.status == "holds":
            low = rung.batch
        else:
            low_open = False
        if c.status == "degraded":
            degraded = True
            break
        high = rung.batch
    high = max(high, point)
    efficient = base
    for rung in rungs[1:]:
        if not rung.comparison.high <= strict + 1e-9:  # NaN (no criterion) stops it too
            break
        efficient = rung.batch
    found = LocalCritical(checkpoint, point, low, high, not degraded, tuple(rungs), tolerance, note)
    return dataclasses.replace(found, efficient=efficient)


def needs_next_rung(rungs: Sequence[Rung], tolerance: float) -> bool:
    """Whether the ladder of a checkpoint goes on: until a rung is shown degraded (the
    interval's high end) or, where none can be, two rungs in a row fall beyond the tolerance;
    not at all where there is no tolerance (k = 1 made no progress to judge by)."""
    if not math.isfinite(tolerance) or rungs[0].comparison is not None:
        return False
    if any(r.comparison is not None and r.comparison.status == ERRORED for r in rungs):
        return False
    if any(r.comparison is not None and r.comparison.status == "degraded" for r in rungs):
        return False
    beyond = [r.comparison is not None and r.comparison.drop > tolerance for r in rungs]
    return not (len(beyond) >= 2 and beyond[-1] and beyond[-2])


# A constant batch's critical batch read at a later checkpoint than this reads high (the local
# critical batch grows over training: mnist1d 64 at 1-5%, 128 at 10%, 256 at 25%).
START_OF_TRAINING = 0.05


def late_start_caution(point: LocalCritical) -> str:
    """What to say where the earliest checkpoint judged is past the start of training."""
    if point.checkpoint <= START_OF_TRAINING:
        return ""
    return (
        f"the earliest checkpoint judged is at {point.checkpoint:.0%}, past the start of "
        "training: this reads high (the local critical batch grows as training goes on); "
        "branch from an early checkpoint too (--branch-at 0.01,...)"
    )


def constant_batch(measured: Sequence[LocalCritical]) -> LocalCritical | None:
    """The critical batch size of a constant batch size, the one a grid study fits: the local
    critical batch at the earliest checkpoint measured (one whose k = 1 gained, so it had a
    tolerance), with its interval; None where none was. The local critical batch grows as
    training goes on (Merrill et al.; mnist1d: 64 at 1%, 128 at 10%, 256 at 25% and 50%), and
    a run at one batch size all through is held back at the start, where it spends its first
    steps whatever its batch: the grid's fit to steps to the target read 41.6 on mnist1d and
    22.2 on digits; the ladders at 1% read 64 and 32, the geometric mean of those at the
    checkpoints before the base run reached the target (10%, 25%) 128 (3.1x) and 32. The later
    checkpoints say how far a batch that grows with training can go (`batch_schedule`)."""
    judged = [p for p in measured if math.isfinite(p.tolerance)]
    return min(judged, key=lambda p: p.checkpoint) if judged else None


def batch_schedule(measured: Sequence[LocalCritical], base: int) -> list[tuple[float, int]]:
    """A batch-size warmup (Merrill et al.): from each checkpoint on, the largest doubling of
    `base` shown to lose (almost) nothing at equal data (`LocalCritical.efficient`), never
    shrinking. [(progress, batch), ...], starting at (0, base)."""
    schedule = [(0.0, base)]
    for point in sorted(measured, key=lambda p: p.checkpoint):
        allowed = base * 2 ** int(math.floor(math.log2(max(point.efficient, base) / base) + 1e-9))
        if allowed > schedule[-1][1]:
            schedule.append((point.checkpoint, allowed))
    return schedule


def smoothed_end(history: list[dict[str, Any]], key: str, metrics: dict[str, Any]) -> dict:
    """A branch's end, smoothed: the mean of its evaluations over the window's second half,
    value and every validation example's, in place of the last evaluation alone. At a
    constant lr a small batch's weights keep moving with its gradient noise, and one
    evaluation catches them wherever they are: measured on digits, the k = 1 branch's last
    evaluation differed by up to 7 pt between two seeds. (Merrill et al. smooth their training
    loss with an EMA for the same reason.)"""
    total = int(metrics.get("optimizer_steps", 0))
    late = [h for h in history if 2 * h["step"] > total]
    if not late or any(h["diverged"] for h in history):
        return metrics
    smoothed = {**metrics, key: float(np.mean([h["value"] for h in late]))}
    records = [h.get("per_example") for h in late]
    matrix = per_example_matrix(records) if all(records) else None
    if matrix is not None:  # a workload's own metric has none: its value alone is averaged
        smoothed["val_per_example"] = encode(matrix.mean(0))
    smoothed["smoothed_over"] = len(late)
    return smoothed
