"""How a trial ended, decided in one place for the searcher, the trial table and the report,
and what each of its evaluations reports (the curves TensorBoard and MLflow show)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OUTCOMES = ("completed", "target", "stopped", "diverged", "errored", "running")
# A trial's reported numbers drawn as curves against optimizer steps (TensorBoard, MLflow).
TRIAL_SCALARS = (
    "val_acc",
    "val_metric",
    "val_loss",
    "train_loss",
    "lr",
    "epoch",
    "examples_seen",
    "progress",
    "samples_per_second",
    "tokens_per_second",
    "window_time_s",
    "gns_b_simple",
    "diverged",
)
FULL_BUDGET = 1 - 1e-9  # progress at which a trial has run its whole budget (float-safe)


def trial_outcome(last: Mapping[str, Any] | None, *, error: bool, finished: bool = True) -> str:
    """`completed` (full budget), `target` (ended at the target, --stop-at-target), `stopped`
    (early, by ASHA), `diverged`, `errored`, or `running`."""
    if error:
        return "errored"
    if last is not None and bool(last.get("diverged", False)):
        return "diverged"
    if not finished:
        return "running"
    if last is None or "progress" not in last:
        return "errored"  # finished without a single report: nothing was measured
    if bool(last.get("reached_target", False)):
        return "target"
    return "completed" if float(last["progress"]) >= FULL_BUDGET else "stopped"
