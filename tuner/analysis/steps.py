"""Steps and examples to target, pooled over the trials of a batch size (Shallue et al.).

Each non-diverged trial's crossing: where its study metric first reaches the target (an accuracy
at or above it, a validation loss at or below it). Trials evaluate every `eval_every` steps, so a
crossing is known to lie between the last evaluation short of the target and the first past it;
its estimate interpolates the metric linearly between the two, and the interval is kept: the
critical batch size's bootstrap draws the crossing within it (`tuner.analysis.critical`). A run
already past the target at its very first evaluation crossed it somewhere before: its batch
size's steps to target are only bounded above (`steps_at_most`, left-censored) and enter the
critical-batch fit as that upper bound. A batch size's steps
to target are the earliest crossing of any of its runs (search and confirmation alike: Shallue
et al.'s best over metaparameters). A batch size where none reaches the target is *censored*:
its steps to target are more than the most steps any of its trials ran, and it enters the
critical-batch fit as that lower bound, not as a gap.

Where the study ran budget-free runs (phase `budget_free`: a warmup in steps, then a constant lr,
judged on a moving average of the weights, `trainables.budget_free`), steps to target come
from them alone (`measured_runs`): a run on a schedule that decays over its own budget reaches
a target in its decay later when the budget is longer (issue 32), so pooling both would let the
budget back in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.trials import flag

BUDGET_FREE = "budget_free"  # the phase of the budget-free runs (search_spaces.runs.BUDGET_FREE)


def started_ahead_unused(table: pd.DataFrame) -> pd.Series:
    """Rows of checks stopped unused: ASHA never stops a check, so a stopped one was the
    baseline's, started ahead of the checks (--speculate), that no check then used."""
    if "outcome" not in table or "phase" not in table:
        return pd.Series(False, index=table.index)
    return (table["phase"] == "extend") & (table["outcome"] == "stopped")


def measured_runs(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows steps to target are read from, and how they were measured: the budget-free
    runs where there are any, else every run (studies without them). Of a batch size's
    budget-free runs, those at an lr where every seed reached the target, where it has one:
    an lr that misses it on one seed (diverged, or too slow) is no lr to reach it at. Never
    a check stopped unused (the baseline's, started ahead: --speculate), which a study without
    speculation would not have run."""
    if "phase" not in table or not (table["phase"] == BUDGET_FREE).any():
        return table[~started_ahead_unused(table)], "budget"
    free = table[table["phase"] == BUDGET_FREE]
    runs = free.groupby("trial_id", sort=False).agg(
        batch=("batch_size", "first"), lr=("base_lr", "first"), outcome=("outcome", "first")
    )
    runs["reliable"] = runs.groupby(["batch", "lr"])["outcome"].transform(
        lambda s: bool((s == "target").all())
    )
    runs["any_reliable"] = runs.groupby("batch")["reliable"].transform("any")
    keep = runs.index[runs["reliable"] | ~runs["any_reliable"]]
    return free[free["trial_id"].isin(set(keep))], "budget-free"


def first_crossings(
    table: pd.DataFrame, target: float, metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """Per non-diverged trial with at least one evaluation: its crossing (interpolated; infinite
    steps if it never reached the target), the evaluations around it (`before`, `first`), the
    most steps it ran, and the interval between the two (`resolution`)."""
    columns = [
        "trial_id",
        "batch_size",
        "cell",
        "scaling_rule",
        "phase",
        "base_lr",
        "steps",
        "examples",
        "before",
        "first",
        "ran_steps",
        "resolution",
    ]
    if table.empty:
        return pd.DataFrame(columns=columns)
    diverged = table.groupby("trial_id")["diverged"].transform(lambda s: flag(s).any())
    told = table["outcome"] == "diverged"
    points = table[~diverged.astype(bool) & ~told].copy()
    points["_value"] = pd.to_numeric(points[metric.key], errors="coerce")
    points["optimizer_steps"] = pd.to_numeric(points["optimizer_steps"], errors="coerce")
    points = points[points["_value"].notna() & points["optimizer_steps"].notna()]
    rows = []
    for trial_id, group in points.groupby("trial_id", sort=False):
        group = group.sort_values("optimizer_steps")
        hits = [metric.reached(v, target) for v in group["_value"]]
        steps = group["optimizer_steps"].to_numpy(dtype=float)
        values = group["_value"].to_numpy(dtype=float)
        batch = int(group["batch_size"].iloc[0])
        crossing = before = first = resolution = math.nan
        if any(hits):
            at = hits.index(True)
            first = steps[at]
            before = steps[at - 1] if at > 0 else 0.0
            resolution = first - before
            crossing = _interpolated(
                before, first, values[at - 1] if at else None, values[at], target
            )
        rows.append(
            {
                "trial_id": trial_id,
                "batch_size": batch,
                "cell": group["cell"].iloc[0],
                "scaling_rule": group["scaling_rule"].iloc[0],
                "phase": group["phase"].iloc[0] if "phase" in group else "search",
                "base_lr": float(group["base_lr"].iloc[0]) if "base_lr" in group else math.nan,
                "steps": crossing if any(hits) else math.inf,
                "examples": crossing * batch if any(hits) else math.inf,
                "before": before,
                "first": first,
                "ran_steps": float(steps[-1]),
                "resolution": resolution,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _interpolated(
    before: float, first: float, short: float | None, past: float, target: float
) -> float:
    """Where the metric, linear between the evaluation short of the target (`short`, at step
    `before`) and the first past it (`past`, at `first`), meets the target; the interval's
    middle where the first evaluation is already past it."""
    if short is None or not math.isfinite(short) or past == short:
        return (before + first) / 2
    share = min(max((target - short) / (past - short), 0.0), 1.0)
    return before + share * (first - before)


def steps_to_target(
    crossings: pd.DataFrame, trials: pd.DataFrame, by: Sequence[str] = ("batch_size",)
) -> pd.DataFrame:
    """Pooled steps and examples to target per group; `censored_at` where none reached it."""
    by = list(by)
    columns = [
        *by,
        "steps",
        "examples",
        "steps_resolution",
        "steps_before",
        "steps_first",
        "target_trial",
        "candidates",
        "reached",
        "censored_at",
        "steps_at_most",
        "diverged_excluded",
    ]
    keys = trials[by].drop_duplicates() if not trials.empty else pd.DataFrame(columns=by)
    rows = []
    for key in keys.itertuples(index=False):
        in_group = np.logical_and.reduce([trials[c] == v for c, v in zip(by, key, strict=True)])
        group = crossings
        if len(crossings):
            mask = np.logical_and.reduce([crossings[c] == v for c, v in zip(by, key, strict=True)])
            group = crossings[mask]
        reached = group[np.isfinite(group["steps"].astype(float))] if len(group) else group
        row = {
            **dict(zip(by, key, strict=True)),
            "steps": math.nan,
            "examples": math.nan,
            "steps_resolution": math.nan,
            "steps_before": math.nan,
            "steps_first": math.nan,
            "target_trial": None,
            "candidates": len(group),
            "reached": len(reached),
            "censored_at": math.nan,
            "steps_at_most": math.nan,
            "diverged_excluded": int(trials[in_group]["diverged"].astype(bool).sum()),
        }
        at_once = reached[reached["before"].astype(float) <= 0] if len(reached) else reached
        if len(at_once):
            # A run past the target at its first evaluation crossed it somewhere before: the
            # earliest crossing of the batch size is only bounded above (left-censored), by the
            # earliest evaluation at the target of any of its runs.
            first = reached.sort_values(["first", "steps"], kind="stable").iloc[0]
            row.update(
                steps_at_most=float(first["first"]),
                steps_before=0.0,
                steps_first=float(first["first"]),
                target_trial=first["trial_id"],
            )
        elif len(reached):
            first = reached.sort_values(["steps", "examples"], kind="stable").iloc[0]
            row.update(
                steps=float(first["steps"]),
                examples=float(first["examples"]),
                steps_resolution=float(first["resolution"]),
                steps_before=float(first["before"]),
                steps_first=float(first["first"]),
                target_trial=first["trial_id"],
            )
        elif len(group):
            row["censored_at"] = float(group["ran_steps"].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).sort_values(by).reset_index(drop=True)
