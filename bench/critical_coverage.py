"""Coverage of the critical batch size's 95% interval on simulated studies of a known
S(B) = 40 (1 + 100 / B) (issue 20 item 3; tuner.analysis.simulate), for the product's smoothed
bootstrap and for the plain bootstrap it replaced (the earliest first evaluation at the target,
its runs resampled), across study shapes; and (issue 36) with B_crit at the grid's largest
batch size and far beyond it, where the largest batch sizes pass the target at their first
evaluation: coverage, how often the interval had to reach out to its own estimate
(`estimate_critical_batch`), and how often it says "beyond the grid".

Usage: python bench/critical_coverage.py [--studies 200] [--boot 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.analysis.critical import estimate_critical_batch, fit_many  # noqa: E402
from tuner.analysis.simulate import B_CRIT, simulate_scaling_study  # noqa: E402
from tuner.analysis.steps import first_crossings, steps_to_target  # noqa: E402

SHAPES = [
    {},
    {"trials": 4, "seeds": 2},
    {"trials": 16},
    {"seed_sd": 0.05},
    {"seed_sd": 0.2},
    {"detuning": 0.1},
    {"detuning": 0.8},
    {"noise": 0.01},
    {"floor": 150},
    {"batch_sizes": (8, 32, 128, 512, 1024), "b_crit": 1024.0},
    {"batch_sizes": (32, 128, 512, 2048, 4096), "s_min": 2.0, "b_crit": 20000.0},
]


def plain_bootstrap(crossings, boot: int, rng) -> tuple[float, float]:
    """The old interval: each batch size's runs resampled, the earliest first evaluation at the
    target of the draw, refitted (no interval, no seed variation)."""
    batches, pooled = [], []
    for batch, group in crossings.groupby("batch_size", sort=True):
        first = group["first"].to_numpy(dtype=float)
        first = np.where(np.isfinite(first), first, np.inf)
        draws = rng.integers(0, first.size, size=(boot, first.size))
        best = first[draws].min(axis=1)
        batches.append(float(batch))
        pooled.append(np.where(np.isfinite(best), best, np.nan))
    estimates = fit_many(np.asarray(batches), np.column_stack(pooled))
    estimates = estimates[~np.isnan(estimates)]
    low, high = np.quantile(estimates, [0.025, 0.975], method="inverted_cdf")
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()
    print("shape    smoothed (median CI)    plain (median CI)    stretched  beyond the grid")
    for shape in SHAPES:
        rng, old_rng = np.random.default_rng(0), np.random.default_rng(1)
        truth, largest = shape.get("b_crit", B_CRIT), max(shape.get("batch_sizes", (1024,)))
        new, old, stretched, beyond = [], [], 0, 0
        for number in range(args.studies):
            table = simulate_scaling_study(rng, **shape)
            crossings = first_crossings(table, 0.9)
            trials = table.drop_duplicates("trial_id")[["trial_id", "batch_size", "diverged"]]
            found = estimate_critical_batch(
                steps_to_target(crossings, trials), crossings, args.boot, seed=number
            )
            low, high = found.low, found.high
            assert low <= found.fit.b_crit <= high  # the interval holds its estimate
            stretched += found.stretched
            beyond += low > largest
            new.append((low <= truth <= high, low, high))
            low, high = plain_bootstrap(crossings, args.boot, old_rng)
            old.append((low <= truth <= high, low, high))
        cells = []
        for rows in (new, old):
            hits, lows, highs = (np.asarray(c, dtype=float) for c in zip(*rows, strict=True))
            cells.append(
                f"{hits.mean() * 100:5.1f}% ({np.median(lows):5.4g}-{np.median(highs):5.4g})"
            )
        name = ", ".join(f"{k}={v}" for k, v in shape.items()) or "default"
        print(f"{name}\n    {cells[0]:26}  {cells[1]:26}  {stretched:4}  {beyond:4}")


if __name__ == "__main__":
    main()
