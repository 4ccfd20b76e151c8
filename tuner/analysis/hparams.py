"""The best hyperparameters per batch size, lr predictions, and search-range edge warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from search_spaces.spaces import EDGE_FRACTION, GAP_PARAMS, range_position
from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.accuracy import best_row
from tuner.analysis.trials import PARAMS

# Searched ranges sampled on a log scale (search_spaces.spaces.suggest uses log=True for these).
LOG_PARAMS = ("base_lr", "weight_decay")


def best_hyperparameters(
    trials: pd.DataFrame, by: Sequence[str] = ("batch_size",), metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """The best search trial's hyperparameters per group (of those that ran their whole
    budget), with lr predictions per batch size.

    Predictions scale the smallest batch size's best actual lr linearly and by the square
    root of the batch ratio (Goyal et al.; Hoffer et al.).
    """
    by = list(by)
    params = [p for p in PARAMS if p not in by]
    columns = [*by, "trial_id", "val_acc", "value", *params, "lr_linear", "lr_sqrt"]
    scored = trials[trials["final"] & (trials["phase"] == "search")] if not trials.empty else trials
    rows = []
    for key, group in scored.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        best = best_row(group, metric)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "trial_id": best["trial_id"],
                "val_acc": float(best["final_val_acc"]),
                "value": float(best["final_value"]),  # of the study metric
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


def boundary_warnings(
    best: pd.DataFrame, ranges: dict[str, Any], edge: float = EDGE_FRACTION
) -> list[dict[str, Any]]:
    """Best trials whose searched value sits within `edge` of a range bound (widen the range).

    Log-sampled parameters are compared in log space; the base lr against its optimiser's range.
    A lower bound of exactly 0 on a linear range (no warmup) is a hard limit that cannot be
    widened, so it is not flagged.
    """
    warnings = []
    for row in best.itertuples(index=False):
        for name in ("base_lr", "weight_decay", "warmup_fraction", *GAP_PARAMS):
            bounds, value = ranges.get(name), getattr(row, name, None)
            if isinstance(bounds, dict):  # per optimizer
                bounds = bounds.get(row.optimizer)
            if bounds is None or value is None or not math.isfinite(float(value)):
                continue
            low, high = float(bounds[0]), float(bounds[1])
            log = name in LOG_PARAMS or name in GAP_PARAMS
            if log and (value <= 0 or low <= 0):
                continue
            if name in GAP_PARAMS:  # searched as 1 - value on a log scale (spaces.suggest)
                position = 1 - range_position(1 - float(value), 1 - high, 1 - low, log)
            else:
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
