"""The per-trial view of the trial table: one row per trial, and how trials ended."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric

OUTCOMES = ("completed", "target", "stopped", "diverged", "errored", "running")
FINAL = ("completed", "target")  # ran the whole budget, or ended at the target
PARAMS = (
    "cell",
    "scaling_rule",
    "optimizer",
    "base_lr",
    "actual_lr",
    "warmup_fraction",
    "weight_decay",
    "momentum",  # where searched (NaN where the workload's fixed value ran)
    "beta2",
)
NUMERIC = (
    "base_lr",
    "actual_lr",
    "warmup_fraction",
    "weight_decay",
    "momentum",
    "beta2",
    "workers",
    "steps",
    "budget_steps",
    "val_examples",
    "bn_batch",
    "final_val_loss",
    "final_val_loss_sd",
    "final_train_loss",
    "final_value",
    "best_value",
    "final_test_value",
    "test_examples",
    "seed",
)


def flag(series: pd.Series) -> pd.Series:
    """A boolean column that may hold NaN (errored rows) or strings (read back from CSV)."""
    return series.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def trial_summary(table: pd.DataFrame, metric: StudyMetric = ACCURACY) -> pd.DataFrame:
    """One row per trial: cell, phase, config, outcome, its last evaluation, and the study
    metric's final and best value (`final_value`, `best_value`: accuracy, or validation loss).

    `final` is true for a trial that ran its whole budget (or ended at the target) without
    diverging: only those have a final value that answers "how good is this configuration".
    """
    columns = [
        "trial_id",
        "optuna_number",
        "phase",
        "seed",
        "outcome",
        "batch_size",
        *PARAMS,
        "workers",
        "steps",
        "budget_steps",
        "val_examples",
        "bn_mode",
        "bn_batch",
        "final_val_acc",
        "final_val_loss",
        "final_val_loss_sd",
        "final_train_loss",
        "best_val_acc",
        "best_val_loss",
        "final_value",
        "best_value",
        "diverged",
        "final",
        "final_per_example",
        "final_metric_boot",
        "final_test_value",
        "test_examples",
    ]
    if table.empty:
        return pd.DataFrame(columns=columns)
    table = table.assign(_diverged=flag(table["diverged"]))
    rows = []
    for trial_id, group in table.groupby("trial_id", sort=False):
        group = group.sort_values("optimizer_steps", na_position="first")
        last = group.iloc[-1]
        # A trial is infeasible if it was told diverged or reported a diverged evaluation (a
        # running trial's outcome is only written when it ends).
        diverged = last["outcome"] == "diverged" or bool(group["_diverged"].any())
        accuracy = pd.to_numeric(group["val_acc"], errors="coerce")
        loss = pd.to_numeric(group["val_loss"], errors="coerce")
        values = pd.to_numeric(group[metric.key], errors="coerce")
        scores = values * metric.sign
        row = {
            "trial_id": trial_id,
            "optuna_number": last["optuna_number"],
            "phase": last["phase"],
            "seed": last["seed"],
            "outcome": last["outcome"],
            "batch_size": int(last["batch_size"]),
            **{p: last.get(p, math.nan) for p in PARAMS},  # (older tables lack some)
            "workers": last["workers"],
            "steps": last["optimizer_steps"],
            "budget_steps": last["budget_steps"],
            "val_examples": last["val_examples"],
            "bn_mode": last["bn_mode"],
            "bn_batch": last["bn_batch"],
            "final_val_acc": float(accuracy.iloc[-1]),
            "final_val_loss": last["val_loss"],
            "final_val_loss_sd": last.get("val_loss_sd", math.nan),
            "final_train_loss": last["train_loss"],
            "best_val_acc": float(accuracy.max()) if accuracy.notna().any() else math.nan,
            "best_val_loss": float(loss.min()) if loss.notna().any() else math.nan,
            "final_value": float(values.iloc[-1]),
            "best_value": metric.value(float(scores.max())) if scores.notna().any() else math.nan,
            "diverged": diverged,
            "final_per_example": _text(last.get("val_per_example")),
            "final_metric_boot": _text(last.get("val_metric_boot")),
            # the study metric on the test set (test_acc, test_loss, test_metric)
            "final_test_value": last.get("test" + metric.key[3:], math.nan),
            "test_examples": last.get("test_examples", math.nan),
        }
        row["final"] = (
            row["outcome"] in FINAL and not diverged and math.isfinite(row["final_value"])
        )
        rows.append(row)
    trials = pd.DataFrame(rows, columns=columns)
    for name in NUMERIC:
        trials[name] = pd.to_numeric(trials[name], errors="coerce")
    return trials.sort_values(["batch_size", "cell", "optuna_number"], kind="stable").reset_index(
        drop=True
    )


def _text(value) -> str | None:
    """A string cell, None where the table holds NaN (or nothing)."""
    return value if isinstance(value, str) and value else None


def outcome_counts(trials: pd.DataFrame, by: Sequence[str] = ("batch_size",)) -> pd.DataFrame:
    """Search trials per group and how they ended, and the group's confirmation runs."""
    by = list(by)
    columns = ["trials", *OUTCOMES, "confirmations"]
    if trials.empty:
        return pd.DataFrame(columns=[*by, *columns])
    index = trials[by].drop_duplicates().sort_values(by).set_index(by).index
    counts = pd.DataFrame(0, index=index, columns=columns)
    search = trials[trials["phase"] == "search"]
    # A trial with a diverged evaluation counts as diverged even while it is still running.
    outcome = search["outcome"].where(~search["diverged"].astype(bool), "diverged")
    for name, size in search.assign(_outcome=outcome).groupby([*by, "_outcome"]).size().items():
        *key, label = name
        counts.loc[tuple(key) if len(key) > 1 else key[0], label] += size
    counts["trials"] = counts[list(OUTCOMES)].sum(axis=1)
    confirm = trials[trials["phase"] == "confirm"].groupby(by).size()
    counts.loc[confirm.index, "confirmations"] = confirm
    return counts.reset_index()
