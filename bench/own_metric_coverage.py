"""Coverage of the bounds a study puts on a drop in a workload's own metric (issue 32).

A metric of the user's own (here macro-F1 over three unbalanced classes) gets its validation
set's part of the uncertainty from bootstrap replicates that every run computes on the same
resamples of the validation examples (`trainables.metric_boot`), and its seeds' part from the
spread of the runs (`tuner.analysis.accuracy.compare`). This script simulates whole
comparisons whose truth is known: a validation set drawn from a population, two configurations
(per-class recalls; each seed shifts them), three runs a side; and counts how often the 90%
interval the study reports (its two one-sided 95% bounds) holds the true drop: the difference
in expected macro-F1, over seeds, on the whole population (from a 200,000-example set and 200
seeds a side). Target: 90-99% of 200 studies.

    python bench/own_metric_coverage.py [--studies 200] [--val 1000] [--seeds 3]

The replicates are computed vectorised here (the script runs 200 x 6 runs x 200 replicates);
`replicate_indices` draws exactly the resamples `trainables.metric_boot.replicates` does,
which tests/test_metric_boot.py checks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.metric_boot import REPLICATES, SEED  # noqa: E402
from tuner.analysis.accuracy import compare, estimate  # noqa: E402

CLASSES = np.array([0.6, 0.3, 0.1])  # the population's class shares
RECALL_BASE = np.array([0.92, 0.85, 0.70])  # the baseline configuration's per-class recall
RECALL_OTHER = np.array([0.92, 0.84, 0.62])  # the other's: worse on the rare class
SEED_SD = 0.005  # a seed moves each class's recall by about this
JITTER = 0.05  # and each example's chance by about this (runs agree on most examples)


def replicate_indices(n: int, count: int = REPLICATES, seed: int = SEED) -> np.ndarray:
    """count x n resample indices, drawn as `trainables.metric_boot.replicates` draws them."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(count)])


def macro_f1(pred: np.ndarray, label: np.ndarray, k: int = len(CLASSES)) -> np.ndarray:
    """Macro-F1 along the last axis (rows: replicates)."""
    pred, label = np.atleast_2d(pred), np.atleast_2d(label)
    rows = np.arange(pred.shape[0])[:, None] * k
    size = pred.shape[0] * k
    tp = np.bincount((rows + pred)[pred == label], minlength=size).reshape(-1, k)
    predicted = np.bincount((rows + pred).ravel(), minlength=size).reshape(-1, k)
    actual = np.bincount((rows + label).ravel(), minlength=size).reshape(-1, k)
    denominator = predicted + actual
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return f1.mean(-1)


def predictions(
    label: np.ndarray, hard: np.ndarray, recall: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A run's predictions: an example is right where its hardness (shared by every run, as
    real networks share their hard examples) is below its class's recall, give or take this
    run's own jitter; else another class at random."""
    right = hard + rng.normal(0, JITTER, label.size) < recall[label]
    other = (label + rng.integers(1, len(CLASSES), label.size)) % len(CLASSES)
    return np.where(right, label, other)


def run_recall(recall: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(recall + rng.normal(0, SEED_SD, recall.size), 0, 1)


def true_drop(rng: np.random.Generator, n: int = 200_000, seeds: int = 200) -> float:
    label, hard = rng.choice(len(CLASSES), n, p=CLASSES), rng.random(n)
    means = []
    for recall in (RECALL_BASE, RECALL_OTHER):
        runs = [
            macro_f1(predictions(label, hard, run_recall(recall, rng), rng), label)[0]
            for _ in range(seeds)
        ]
        means.append(np.mean(runs))
    return float(means[0] - means[1])


def one_study(
    rng: np.random.Generator, val: int, seeds: int, indices: np.ndarray, boot: bool = True
):
    """The comparison a study makes of the two configurations on one validation set."""
    label, hard = rng.choice(len(CLASSES), val, p=CLASSES), rng.random(val)
    sides, use = [], boot
    for recall in (RECALL_BASE, RECALL_OTHER):
        values, boot = [], []
        for _ in range(seeds):
            pred = predictions(label, hard, run_recall(recall, rng), rng)
            values.append(float(macro_f1(pred, label)[0]))
            boot.append(macro_f1(pred[indices], label[indices]))
        found = estimate(values, 0, "confirmed")
        sides.append(
            found.__class__(**{**found.__dict__, "boot": np.vstack(boot) if use else None})
        )
    return compare(sides[0], sides[1], tolerance=0.01)


def coverage(
    studies: int = 200, val: int = 1000, seeds: int = 3, seed: int = 0, boot: bool = True
) -> dict:
    rng = np.random.default_rng(seed)
    truth = true_drop(rng)
    indices = replicate_indices(val)
    results = [one_study(rng, val, seeds, indices, boot) for _ in range(studies)]
    covered = [r.low <= truth <= r.high for r in results]
    return {
        "studies": studies,
        "true_drop": truth,
        "coverage": float(np.mean(covered)),
        "below": float(np.mean([truth < r.low for r in results])),
        "above": float(np.mean([truth > r.high for r in results])),
        "mean_half_width": float(np.mean([r.resolution for r in results])),
        "paired": all(r.paired for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-boot", action="store_true", help="the seeds' spread alone")
    args = parser.parse_args()
    print(coverage(args.studies, args.val, args.seeds, boot=not args.no_boot))


if __name__ == "__main__":
    main()
