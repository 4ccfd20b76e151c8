"""A workload's own metric's sampling error over the validation examples: the metric computed
again on bootstrap resamples of them (issue 32).

An accuracy or a loss is a mean over examples, whose sampling error follows from the examples'
own values (`trainables.per_example`). A metric of the user's own (macro-F1, an MAE, ...) is a
function of the whole set: its error is read from the metric computed on resamples of the
validation examples, here, where the workload's code runs (the report never runs it). Every run
draws the same resamples (`SEED`), so replicate b of two runs is on the same examples: the
spread over b of their difference is the validation set's part of the difference, paired, as
the per-example records are for an accuracy (`tuner.analysis.accuracy`). `REPLICATES` values
per run, kept with the evaluations that keep per-example records (its last), as float32 text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

REPLICATES = 200  # the spread's relative error about 1 / sqrt(2 x 200): 5%
SEED = 20_261_207  # the same resamples in every run of every study: replicates pair up


def replicates(
    metric: Callable[[Any, Any], Any],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    count: int = REPLICATES,
    seed: int = SEED,
) -> np.ndarray:
    """The metric on `count` resamples (with replacement, of the validation set's size) of the
    examples, the same resamples for any run with as many examples."""
    n = len(targets)
    rng = np.random.default_rng(seed)
    values = np.empty(count)
    for b in range(count):
        rows = torch.from_numpy(rng.integers(0, n, n))
        values[b] = float(metric(outputs[rows], targets[rows]))
    return values
