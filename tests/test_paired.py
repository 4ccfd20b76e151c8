"""Paired comparisons (issue 20 item 2): two sides scored on the same validation examples are
compared example by example, and their 90% interval covers a known drop about 90% of the time.

Synthetic studies (`tuner.analysis.simulate`), no Ray.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainables.per_example import decode, encode
from tuner.analysis.accuracy import compare, estimate
from tuner.analysis.paired import per_example_matrix
from tuner.analysis.simulate import REGIMES, simulate_study, true_drop


def judged(base: np.ndarray, other: np.ndarray, paired: bool = True):
    ests = [
        estimate(list(x.mean(1)), x.shape[1], "confirmed", per_example=x if paired else None)
        for x in (base, other)
    ]
    return compare(ests[0], ests[1], tolerance=0.01)


def coverage(regime: str, seeds: int, studies: int = 200, paired: bool = True):
    rng = np.random.default_rng(20)
    truth = true_drop(regime)
    hits, widths = 0, []
    for _ in range(studies):
        result = judged(*simulate_study(regime, seeds, rng), paired=paired)
        hits += result.low <= truth <= result.high
        widths.append(result.resolution)
    return hits / studies, float(np.mean(widths))


@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("seeds", [2, 3])
def test_paired_intervals_cover_a_known_drop(regime, seeds):
    covered, width = coverage(regime, seeds)
    # 90% two-sided (one-sided 95% bounds); 200 studies: +-2 standard errors is +-4 points
    assert 0.85 <= covered <= 0.96, (regime, seeds, covered)
    unpaired_covered, unpaired_width = coverage(regime, seeds, paired=False)
    # What pairing buys: a finer resolution where the validation examples' sampling limits it
    # (digits), about the same where the seeds' spread does (mnist1d).
    assert width < (0.8 if regime == "digits" else 1.05) * unpaired_width
    assert unpaired_covered >= covered - 0.02  # the unpaired bound was wide, not wrong


def test_only_disagreements_count():
    """Two sides (two identical seeds each: one run on a side gives no interval) that differ at
    2 of 359 examples: the paired bound is about those 2, where two independent binomials at
    98% would put it at about 1.7 points."""
    base = np.ones((2, 359))
    base[:, :7] = 0
    other = base.copy()
    other[:, 100:102] = 0
    result = judged(base, other)
    assert result.paired and result.drop == pytest.approx(2 / 359)
    assert result.resolution < 0.01
    assert judged(base, other, paired=False).resolution > 0.015


def test_records_round_trip_and_mismatches_fall_back_to_unpaired():
    rng = np.random.default_rng(0)
    bits = (rng.random(1001) < 0.9).astype(float)
    losses = rng.gamma(2.0, 0.3, 500)
    assert encode(bits).startswith("b:1001:") and (decode(encode(bits)) == bits).all()
    assert np.allclose(decode(encode(losses)), losses, rtol=1e-3)
    assert per_example_matrix([encode(bits), encode(bits)]).shape == (2, 1001)
    assert per_example_matrix([encode(bits), None]) is None  # a run without its record
    assert per_example_matrix([encode(bits), encode(bits[:1000])]) is None
    base = estimate([0.9], 1001, "search", per_example=bits[None, :])
    other = estimate([0.9], 1000, "search", per_example=bits[None, :1000])
    assert not compare(base, other, 0.01).paired
