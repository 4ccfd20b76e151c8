"""The study metric: what "better" means for a workload, in one place.

Classification workloads are judged by validation accuracy (maximised); language models by
validation loss, the cross-entropy in nats per token (minimised; perplexity and bits per byte
are the same number in other units). The search (Optuna, ASHA), steps-to-target, the
degradation verdict, the report and TensorBoard all ask this object instead of assuming
accuracy. Analysis works on *scores*, oriented so that higher is better (`score`), and shows
*values* (`value`): a drop in score is a fall in accuracy or a rise in loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StudyMetric:
    """One way of judging a trial."""

    name: str  # "accuracy" or "loss": saved in study.json
    key: str  # the loop's reported metric that is judged
    mode: str  # "max" or "min", as Ray Tune and the ASHA scheduler take it
    label: str  # in sentences: "validation accuracy"
    noun: str  # what holds or degrades: "accuracy", "validation loss"
    unit: str  # of a difference: "pt" (percentage points) or "nats"
    default_tolerance: float  # degradation tolerance, in the metric's own units (0.01 = 1 pt)
    # How one value's validation-set sampling error is known: "binomial" (0/1 per example),
    # "sd" (the per-example spread the loop reports), "" (a metric of the user's own: unknown,
    # so only the spread over seeds counts).
    sampling: str = "binomial"

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0

    def score(self, value: float) -> float:
        """Oriented so that higher is better."""
        return self.sign * value

    def value(self, score: float) -> float:
        """The metric's own value of a score."""
        return self.sign * score

    def reached(self, value: float, target: float) -> bool:
        """At or beyond the target (first evaluation there: steps-to-target)."""
        return value >= target if self.mode == "max" else value <= target

    @property
    def worse(self) -> str:
        """The word for a change for the worse: 'drop' (accuracy) or 'rise' (loss)."""
        return "drop" if self.mode == "max" else "rise"

    @property
    def beyond(self) -> str:
        """Where a reached target lies: 'at or above' (accuracy) or 'at or below' (loss)."""
        return "at or above" if self.mode == "max" else "at or below"

    def target_problem(self, target: float) -> str | None:
        """Why `target` cannot be a target of this metric, or None."""
        if not math.isfinite(target):
            return f"--target {target:g} is not a number"
        if self.name == "accuracy" and not 0 < target <= 1:
            return f"--target {target:g} is not an accuracy in (0, 1] (write 0.95, not 95)"
        if self.name == "loss" and target <= 0:
            return f"--target {target:g} is not a validation loss in nats (> 0, e.g. 1.5)"
        return None


ACCURACY = StudyMetric(
    name="accuracy",
    key="val_acc",
    mode="max",
    label="validation accuracy",
    noun="accuracy",
    unit="pt",
    default_tolerance=0.01,
)
# A tolerance of 0.02 nats is a 2% rise in perplexity.
LOSS = StudyMetric(
    name="loss",
    key="val_loss",
    mode="min",
    label="validation loss",
    noun="validation loss",
    unit="nats",
    default_tolerance=0.02,
    sampling="sd",
)
METRICS = {m.name: m for m in (ACCURACY, LOSS)}
CUSTOM_KEY = "val_metric"  # the loop's report of a workload's own metric


def custom_metric(name: str, mode: str, tolerance: float = 0.01) -> StudyMetric:
    """A metric of a workload's own (`trainables.workload.Metric`), as the study judges it."""
    if mode not in ("max", "min"):
        raise KeyError(f"metric {name!r} has no direction (mode 'max' or 'min')")
    return StudyMetric(
        name=name,
        key=CUSTOM_KEY,
        mode=mode,
        label=f"validation {name}",
        noun=name,
        unit="",
        default_tolerance=tolerance,
        sampling="",
    )


def get_metric(name: str, mode: str = "") -> StudyMetric:
    """A built-in metric by name, or (with `mode`) a workload's own."""
    if mode:
        return custom_metric(name, mode)
    if name not in METRICS:
        raise KeyError(f"unknown study metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]
