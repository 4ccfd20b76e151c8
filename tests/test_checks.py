"""The study's own checks without Ray: the more-steps decision on synthetic curves, and the rule
test's configurations."""

from __future__ import annotations

import math

import pytest

from search_spaces.checks import (
    CAPPED,
    DEGRADED,
    DIVERGED,
    EXTEND,
    HOLDS,
    RULE_TEST_WARMUP,
    budget_check,
    rule_test_params,
)
from trainables.optim import scaled_lr

TOL = 0.01


def saturating(steps: int, ceiling: float, rate: float = 300.0) -> float:
    """A final accuracy that rises with the budget and flattens at `ceiling` (as mnist1d's did
    in bench/inprocess_check.py: batch 256 0.835, 0.920, 0.929, 0.934 at 300-2400 steps)."""
    return ceiling * (1 - math.exp(-steps / rate))


def decide(ceiling: float, budget: int, cap: int, baseline: float = 0.967, rate: float = 300.0):
    """Double a batch size's budget as the study does until the decision stops; return the
    final decision and the levels it ran."""
    levels = [(budget, saturating(budget, ceiling, rate))]
    while True:
        check = budget_check(baseline, levels, TOL, cap)
        if check.state != EXTEND:
            return check, levels
        levels.append((check.next_steps, saturating(check.next_steps, ceiling, rate)))


def test_a_plateau_short_of_the_baseline_is_degraded_at_the_budget_where_doubling_stopped():
    check, levels = decide(ceiling=0.93, budget=300, cap=5000)
    assert check.state == DEGRADED
    # 0.588, 0.804, 0.913, 0.930: the doubling to 2400 gained 1.7 pt, to 4800 no more than 1.
    assert [s for s, _ in levels] == [300, 600, 1200, 2400, 4800]
    assert check.steps == 4800 and 0 <= check.gain <= TOL


def test_an_under_trained_batch_size_holds_at_the_budget_that_saves_it():
    check, levels = decide(ceiling=0.97, budget=300, cap=5000, rate=600)
    assert check.state == HOLDS
    assert check.steps == levels[-1][0] > 300
    assert 0.967 - levels[-1][1] <= TOL


def test_still_improving_at_the_cap_is_not_degraded():
    check, levels = decide(ceiling=0.97, budget=300, cap=1000, rate=2000)
    assert check.state == CAPPED and check.improving
    assert [s for s, _ in levels] == [300, 600]
    assert check.gain > TOL
    assert "still improving at the cap" in check.describe("1 pt")


def test_a_budget_the_cap_leaves_no_room_to_double_is_said_unchecked():
    check = budget_check(0.967, [(600, 0.90)], TOL, cap=1000)
    assert check.state == CAPPED and math.isnan(check.gain)
    assert "not checked with more steps" in check.describe("1 pt")


def test_within_the_tolerance_it_holds_at_once_and_a_loss_counts_downwards():
    assert budget_check(0.967, [(300, 0.960)], TOL, cap=5000).state == HOLDS
    # A loss: lower is better; 2.10 against a baseline of 2.00 is 0.10 nats worse.
    loss = budget_check(2.00, [(300, 2.10)], 0.02, cap=5000, sign=-1)
    assert loss.state == EXTEND and loss.next_steps == 600
    plateau = budget_check(2.00, [(300, 2.10), (600, 2.09)], 0.02, cap=5000, sign=-1)
    assert plateau.state == DEGRADED and plateau.gain == pytest.approx(0.01)


def test_a_level_without_a_final_value_stops_the_doubling():
    assert budget_check(0.967, [(300, 0.8), (600, math.nan)], TOL, cap=5000).state == DIVERGED


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
        # The baseline (below the reference batch) had no warmup to give: Goyal et al.'s.
        assert params["warmup_fraction"] == (0.0 if rule == "none" else RULE_TEST_WARMUP)
    searched = rule_test_params({**best, "warmup_fraction": 0.12}, 16, 64, "linear", 32)
    assert searched["warmup_fraction"] == 0.12
