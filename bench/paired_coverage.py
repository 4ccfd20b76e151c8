"""Coverage and width of three ways to bound a drop between two sides scored on the same
validation examples (issue 20 item 2), on the synthetic studies of tuner.analysis.simulate:

- paired: the crossed random-effects variance (tuner.analysis.paired), Student's t
- unpaired: the two sides' binomial validation errors and seed spreads added (the old way)
- pigeonhole: the bootstrap of seeds (per side) and examples (shared) together, percentile

Usage: python bench/paired_coverage.py [--studies 200] [--boot 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.analysis.accuracy import compare, estimate  # noqa: E402
from tuner.analysis.simulate import REGIMES, simulate_study, true_drop  # noqa: E402


def judged(base: np.ndarray, other: np.ndarray, paired: bool):
    ests = [
        estimate(list(x.mean(1)), x.shape[1], "confirmed", per_example=x if paired else None)
        for x in (base, other)
    ]
    return compare(ests[0], ests[1], tolerance=0.01)


def pigeonhole(base: np.ndarray, other: np.ndarray, rng, boot: int) -> tuple[float, float]:
    """One-sided 95% bounds of mean(base) - mean(other) from resampling each side's runs and
    the shared examples (multinomial weights), the percentile way."""
    size = base.shape[1]
    drops = np.empty(boot)
    for start in range(0, boot, 100):
        k = min(100, boot - start)
        sides = []
        for x in (base, other):
            n = x.shape[0]
            runs = rng.multinomial(n, np.full(n, 1 / n), size=k) / n  # k x n
            sides.append(runs @ x)  # k x N: each replicate's seed mean per example
        weights = rng.multinomial(size, np.full(size, 1 / size), size=k) / size
        drops[start : start + k] = ((sides[0] - sides[1]) * weights).sum(1)
    return float(np.quantile(drops, 0.05)), float(np.quantile(drops, 0.95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()
    print("regime   seeds  true drop  method      coverage  mean half-width")
    for regime in REGIMES:
        truth = true_drop(regime)
        for seeds in (2, 3, 5):
            rng = np.random.default_rng(20)
            boot_rng = np.random.default_rng(1)
            found = {"paired": [], "unpaired": [], "pigeonhole": []}
            for _ in range(args.studies):
                base, other = simulate_study(regime, seeds, rng)
                for name, paired in (("paired", True), ("unpaired", False)):
                    r = judged(base, other, paired=paired)
                    found[name].append((r.low <= truth <= r.high, r.resolution))
                low, high = pigeonhole(base, other, boot_rng, args.boot)
                found["pigeonhole"].append((low <= truth <= high, (high - low) / 2))
            for name, rows in found.items():
                hits, widths = zip(*rows, strict=True)
                print(
                    f"{regime:8} {seeds:5}  {truth * 100:6.2f} pt  {name:10}  "
                    f"{np.mean(hits) * 100:6.1f}%   {np.mean(widths) * 100:5.2f} pt"
                )


if __name__ == "__main__":
    main()
