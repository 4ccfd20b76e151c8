"""Steps and examples to target, pooled over the trials of a batch size (Shallue et al.).

Of every evaluation of every non-diverged trial of a batch size (search and confirmation runs
alike), the first, in optimizer steps, whose study metric reaches the target (an accuracy at or
above it, a validation loss at or below it). A batch
size where none does is *censored*: its steps to target are more than the most steps any of its
trials ran, and it enters the critical-batch fit as that lower bound, not as a gap. Trials
evaluate every `eval_every` steps, so a crossing is known to that resolution, which is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.trials import flag


def first_crossings(
    table: pd.DataFrame, target: float, metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """Per non-diverged trial with at least one evaluation: its first point at the target or
    beyond (infinite steps if none), the most steps it ran, and its evaluation interval
    there."""
    columns = [
        "trial_id",
        "batch_size",
        "cell",
        "scaling_rule",
        "steps",
        "examples",
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
        reached = group[[metric.reached(v, target) for v in group["_value"]]]
        steps = group["optimizer_steps"].to_numpy(dtype=float)
        first = reached.iloc[0] if len(reached) else None
        if first is not None:
            at = int(np.searchsorted(steps, float(first["optimizer_steps"])))
            resolution = steps[at] - (steps[at - 1] if at > 0 else 0.0)
        else:
            resolution = math.nan
        rows.append(
            {
                "trial_id": trial_id,
                "batch_size": int(group["batch_size"].iloc[0]),
                "cell": group["cell"].iloc[0],
                "scaling_rule": group["scaling_rule"].iloc[0],
                "steps": float(first["optimizer_steps"]) if first is not None else math.inf,
                "examples": float(first["examples_seen"]) if first is not None else math.inf,
                "ran_steps": float(steps[-1]),
                "resolution": resolution,
            }
        )
    return pd.DataFrame(rows, columns=columns)


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
        "target_trial",
        "candidates",
        "reached",
        "censored_at",
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
            "target_trial": None,
            "candidates": len(group),
            "reached": len(reached),
            "censored_at": math.nan,
            "diverged_excluded": int(trials[in_group]["diverged"].astype(bool).sum()),
        }
        if len(reached):
            first = reached.sort_values(["steps", "examples"], kind="stable").iloc[0]
            row.update(
                steps=float(first["steps"]),
                examples=float(first["examples"]),
                steps_resolution=float(first["resolution"]),
                target_trial=first["trial_id"],
            )
        elif len(group):
            row["censored_at"] = float(group["ran_steps"].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).sort_values(by).reset_index(drop=True)
