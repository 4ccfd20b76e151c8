"""The uncertainty of a difference between two sets of runs scored on the same examples.

Each side is a matrix X (runs x examples) of the study metric per validation example
(`trainables.per_example`). Runs (seeds) and examples are crossed random factors:

    X[r, e] = mu + a[e] + u[r] + eps[r, e]

and the difference of the two sides' grand means has variance

    Var(a_base - a_other) / N  +  sum over sides of (Var(u) / n + Var(eps) / (n N)).

The second part is exactly the variance of a side's run means over seeds divided by n (its
runs are scored on the same N examples), estimated with n - 1 degrees of freedom. The first is
the examples' part: what a new validation set of N examples would change. Because both sides
see the same examples, an example both get right (or both wrong) adds nothing to it; only their
disagreements do. It is estimated from the per-example difference of the seed means, whose
spread over examples also holds each side's eps / n, removed with the two-way residual
variance (the unbiased moment estimator of the crossed random-effects model).

Why not the bootstrap of seeds and examples together (Owen's pigeonhole bootstrap)? It counts
the runs' per-example noise twice where that dominates, and with the 2-3 seeds a study confirms
it gives the seeds' part (n - 1) / n of its variance and a normal-like quantile where Student's
t applies. Measured with `bench/paired_coverage.py` (200 synthetic studies per row, 90%
two-sided intervals): digits-like (359 examples at 98%), 2 / 3 / 5 seeds per side: these
cover 92.0 / 92.5 / 91.5% with half-widths 2.4 / 1.6 / 1.1 pt; the bootstrap 96-97% at 2.1 / 1.9
/ 1.5 pt; the old unpaired sum 99.5-100% at 3.2 / 2.7 / 2.5 pt. mnist1d-like (4000 examples at
92%, seeds a point apart): these 88.5 / 89.0 / 92.5% at 2.9 / 1.7 / 1.1 pt; the bootstrap 78.5 /
87.5 / 94.0%; unpaired 93.5-99% at 2.9 / 2.0 / 1.6 pt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from trainables.per_example import decode

Term = tuple[float, float]  # (variance, degrees of freedom)


def per_example_matrix(records: Sequence[object]) -> np.ndarray | None:
    """Runs x examples from the runs' `final_per_example` records; None unless every run has
    one and all are of the same length."""
    if not len(records) or not all(isinstance(r, str) and r for r in records):
        return None
    rows = [decode(r) for r in records]  # type: ignore[arg-type]
    if len({row.size for row in rows}) != 1 or rows[0].size < 2:
        return None
    return np.vstack(rows)


def residual_variance(x: np.ndarray) -> float:
    """Var(eps) of the crossed model: the two-way residual mean square (NaN below 2 runs)."""
    n, size = x.shape
    if n < 2:
        return math.nan
    residual = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    return float((residual**2).sum() / ((n - 1) * (size - 1)))


def paired_terms(base: np.ndarray, other: np.ndarray) -> list[Term]:
    """The variance terms of mean(base) - mean(other), each with its degrees of freedom.

    Per side with two or more runs, its seeds' part splits in two: the runs' own noise on the
    examples, Var(eps) / (n N), known from n N values (high degrees of freedom), and a shift
    common to a run's whole evaluation, Var(u) / n, known only from its n runs (n - 1). With
    2-3 seeds that split matters: a study whose runs differ only by per-example noise is not
    charged Student's t with 1-2 degrees of freedom for it. The shared examples' part comes
    last."""
    size = base.shape[1]
    terms: list[Term] = []
    example_var = float(np.var(base.mean(0) - other.mean(0), ddof=1))
    for side in (base, other):
        n = side.shape[0]
        if n < 2:
            continue  # its noise stays in the examples' part; its shift is unknown
        noise = residual_variance(side)
        shift = float(np.var(side.mean(1), ddof=1)) - noise / size
        terms.append((max(shift, 0.0) / n, n - 1))
        terms.append((noise / (n * size), (n - 1) * (size - 1)))
        example_var -= noise / n
    terms.append((max(example_var, 0.0) / size, size - 1))
    return terms
