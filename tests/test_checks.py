"""The study's own checks without Ray: the more-steps decision on synthetic curves, and the rule
test's configurations."""

from __future__ import annotations

import math

import pytest

from search_spaces.checks import (
    CAPPED,
    DEGRADED,
    DIVERGED,
    HOLDS,
    RUN,
    budget_check,
    rule_test_params,
)
from trainables.optim import scaled_lr

TOL = 0.01


def accuracy(steps: int, k: int, ceiling: float, rate: float = 300.0, best_k: int = 0) -> float:
    """A final accuracy that rises with the budget and flattens at `ceiling` (as mnist1d's did
    in bench/inprocess_check.py: batch 256 0.835, 0.920, 0.929, 0.934 at 300-2400 steps), and
    falls 4 pt per factor 2 of lr away from the best lr (k: the lr x 2^k)."""
    return (ceiling - 0.04 * abs(k - best_k)) * (1 - math.exp(-steps / rate))


def decide(ceiling, budget, cap, baseline=0.967, rate=300.0, best_k=0):
    """Run the levels the check asks for, as the study does, until it decides; return the
    decision and every level run."""
    results = {(budget, 0): accuracy(budget, 0, ceiling, rate, best_k)}
    while True:
        check = budget_check(baseline, results, budget, TOL, cap)
        if check.state != RUN:
            return check, results
        for steps, k in check.runs:
            results[(steps, k)] = accuracy(steps, k, ceiling, rate, best_k)


def test_a_plateau_short_of_the_baseline_is_degraded_where_neither_lr_nor_steps_help():
    check, results = decide(ceiling=0.93, budget=300, cap=5000)
    assert check.state == DEGRADED
    # 0.588, 0.804, 0.913, 0.930: the doubling to 2400 gained 1.7 pt, to 4800 no more than 1;
    # at every budget on the way, half and twice the lr were tried and lost.
    assert sorted({s for s, _ in results}) == [300, 600, 1200, 2400, 4800]
    assert {(s, k) for s in (300, 600, 1200, 2400, 4800) for k in (-1, 1)} <= set(results)
    assert check.center == (4800, 0) and 0 <= check.gain <= TOL


def test_a_longer_budget_is_judged_at_its_own_best_lr():
    """A high lr that suits a short run can be unstable over a longer one (digits at 11 steps
    wanted 8x the lr, which collapsed at 44): twice the steps is not a plateau until half and
    twice the lr were tried there too."""
    results = {
        (100, 0): 0.80, (100, -1): 0.70, (100, 1): 0.75,
        (200, 0): 0.79,  # the same lr, twice the steps: worse
    }  # fmt: skip
    check = budget_check(0.967, results, 100, TOL, cap=5000)
    assert check.state == RUN and check.runs == ((200, -1), (200, 1))
    results |= {(200, -1): 0.90, (200, 1): 0.5}
    check = budget_check(0.967, results, 100, TOL, cap=5000)
    assert check.state == RUN and check.center == (200, -1)  # moved there; its lr next
    assert check.runs == ((200, -2),)


def test_a_better_lr_saves_a_batch_size_the_search_gave_too_high_an_lr():
    check, results = decide(ceiling=0.97, budget=2400, cap=5000, best_k=-1)
    assert check.state == HOLDS and check.center == (2400, -1)
    assert check.lr_factor == 0.5 and "with the lr x0.5" in check.describe("1 pt")
    far = decide(ceiling=0.97, budget=2400, cap=5000, best_k=-3)[0]
    assert far.state == HOLDS and far.center == (2400, -3)  # the line search goes on


def test_an_under_trained_batch_size_holds_at_the_budget_that_saves_it():
    check, results = decide(ceiling=0.97, budget=300, cap=5000, rate=600)
    assert check.state == HOLDS
    assert check.steps > 300 and check.center[1] == 0
    assert 0.967 - results[check.center] <= TOL


def test_still_improving_at_the_cap_is_not_degraded():
    check, results = decide(ceiling=0.97, budget=300, cap=1000, rate=2000)
    assert check.state == CAPPED and check.center == (600, 0)
    assert check.gain > TOL
    assert "still improving at the cap" in check.describe("1 pt")


def test_a_budget_the_cap_leaves_no_room_to_double_is_said_unchecked():
    results = {(600, 0): 0.90, (600, -1): 0.89, (600, 1): 0.88}
    check = budget_check(0.967, results, 600, TOL, cap=1000)
    assert check.state == CAPPED and math.isnan(check.gain)
    assert "not checked with more steps" in check.describe("1 pt")


def test_within_the_tolerance_it_holds_at_once_and_a_loss_counts_downwards():
    assert budget_check(0.967, {(300, 0): 0.960}, 300, TOL, cap=5000).state == HOLDS
    # A loss: lower is better; 2.10 against a baseline of 2.00 is 0.10 nats worse.
    loss = budget_check(2.00, {(300, 0): 2.10}, 300, 0.02, cap=5000, sign=-1)
    assert loss.state == RUN and loss.runs == ((300, -1), (300, 1))
    levels = {(300, 0): 2.10, (300, -1): 2.12, (300, 1): 2.11, (600, 0): 2.09}
    assert budget_check(2.00, levels, 300, 0.02, 5000, -1).runs == ((600, -1), (600, 1))
    levels |= {(600, -1): 2.095, (600, 1): 2.2}
    plateau = budget_check(2.00, levels, 300, 0.02, cap=5000, sign=-1)
    assert plateau.state == DEGRADED and plateau.gain == pytest.approx(0.01)


def test_a_confirmation_without_a_final_value_is_not_checked():
    assert budget_check(0.967, {(300, 0): math.nan}, 300, TOL, cap=5000).state == DIVERGED


def test_the_rule_test_moves_the_baselines_peak_lr_by_the_rule_alone():
    best = {
        "base_lr": 0.05,
        "scaling_rule": "sqrt",
        "optimizer": "sgd",
        "weight_decay": 3e-4,
        "warmup_fraction": 0.0,
    }
    peak16 = scaled_lr(0.05, "sqrt", 16, 32)
    for rule, factor in (("none", 1.0), ("sqrt", 8.0), ("linear", 64.0)):
        params = rule_test_params(best, 16, 1024, rule, 32)
        peak = scaled_lr(params["base_lr"], rule, 1024, 32)
        assert peak == pytest.approx(peak16 * factor)
        assert params["weight_decay"] == 3e-4 and params["optimizer"] == "sgd"
        # the baseline's own warmup (none here), whatever the rule (issue 32)
        assert params["warmup_fraction"] == 0.0
    for rule in ("none", "linear"):
        searched = rule_test_params({**best, "warmup_fraction": 0.12}, 16, 64, rule, 32)
        assert searched["warmup_fraction"] == 0.12
