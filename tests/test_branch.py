"""The branched measurement (`--method branch`) without Ray: the ladder on a noisy quadratic
with a known answer, the walk's interval, the plan, the schedule, and the loop's branch start."""

import copy
import math

import numpy as np
import pytest

from tests.test_config import base_config
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.metrics import ACCURACY, get_metric
from trainables.per_example import decode, encode
from tuner.analysis.accuracy import Comparison, estimate
from tuner.analysis.branch import (
    BranchRun,
    LocalCritical,
    Rung,
    batch_schedule,
    checkpoint_tolerance,
    constant_batch,
    ladder,
    late_start_caution,
    measure,
    needs_next_rung,
    smoothed_end,
    walk,
)
from tuner.analysis.simulate import nqm_expected_critical, nqm_runs
from tuner.branch import plan as planning
from tuner.options import build_parser
from tuner.resolve import build_spec

LOSS = get_metric("loss")


def test_the_ladder_finds_the_noisy_quadratics_local_critical_batch():
    """On a noisy quadratic the expected dynamics give the local critical batch exactly (it
    grows over training, 2 -> 16 here); branches of 3 seeds find it: the interval holds it at
    nearly every checkpoint and the point estimate is within 2x at most."""
    tolerance, held, near, truths = 0.05, 0, 0, []
    for rep in range(4):
        for _fraction, expected, runs, _, _ in nqm_runs(1000, 3, np.random.default_rng(rep)):
            truth = nqm_expected_critical(expected, tolerance)
            point = measure(runs, 1, tolerance, LOSS)[0]
            held += point.low <= truth <= point.high
            near += truth / 2 <= point.batch <= truth * 2
            if rep == 0:
                truths.append(truth)
    assert truths == sorted(truths) and truths[-1] >= 4 * truths[0]  # it grows
    assert held >= 18  # of 20 checkpoints (measured: 49 of 50 over 10 repeats)
    assert near >= 13  # (measured: 38 of 50)


def test_by_default_the_ladder_finds_the_noisy_quadratics_noise_scale():
    """Judged by half of what k=1 gains (the default), the local critical batch is McCandlish
    et al.'s critical batch: on the noisy quadratic it lands within 3x of the noise scale
    B_noise = tr(HC) / G^T H G at every checkpoint (measured: 0.9-2.3x over 3 x 5 checkpoints;
    progress is concave in examples, so a batch at B_noise makes more than half of k=1's
    progress and the estimate reads a little high) and grows with it."""
    for rep in range(3):
        found = []
        for fraction, _, runs, start, noise in nqm_runs(1000, 3, np.random.default_rng(rep)):
            point = measure(runs, 1, 0.0, LOSS, start={fraction: start})[0]
            assert noise / 3 <= point.batch <= 3 * noise, (rep, fraction, point.batch, noise)
            found.append((noise, point.batch))
        assert [b for _, b in found] == sorted(b for _, b in found)  # it grows over training


def rung(k, drop, status, tolerance=0.01):
    c = Comparison(drop, drop - 0.005, drop + 0.005, 0.005, math.inf, status)
    return Rung(k, 8 * k, "sqrt", 0.1, estimate([0.9], 100, "confirmed"), c)


def test_the_walk_gives_a_point_a_shown_interval_and_says_when_it_is_open():
    reference = Rung(1, 8, "sqrt", 0.1, estimate([0.9], 100, "confirmed"), None)
    rungs = [
        reference,
        rung(2, 0.002, "holds"),
        rung(4, 0.008, "unresolved"),
        rung(8, 0.02, "unresolved"),
        rung(16, 0.05, "degraded"),
        rung(32, 0.0, "holds"),  # past a degraded rung: never read
    ]
    point = walk(rungs, 0.25, 0.01, strict=0.008)
    assert (point.batch, point.low, point.high, point.censored) == (32, 16, 64, False)
    assert point.efficient == 16  # rung 4's drop may reach 0.013, beyond the strict 0.008
    open_ended = walk(rungs[:4], 0.25, 0.01)
    assert (open_ended.batch, open_ended.high, open_ended.censored) == (32, 64, True)
    assert not needs_next_rung(rungs[:5], 0.01)  # a degraded rung ends the ladder
    assert needs_next_rung(rungs[:3], 0.01)
    two_beyond = [reference, rung(2, 0.02, "unresolved"), rung(4, 0.03, "unresolved")]
    assert not needs_next_rung(two_beyond, 0.01)


def run_(k, candidate, seed, phase, value):
    return BranchRun(0.5, k, candidate, 0.1 * k, seed, phase, value, val_examples=1000)


def test_a_rung_is_its_searched_winner_judged_by_fresh_seeds_and_diverged_runs_lose():
    runs = [
        run_(1, "sqrt", 0, "search", 0.90),
        run_(1, "sqrt", 1, "confirm", 0.91),
        run_(1, "sqrt", 2, "confirm", 0.90),
        run_(2, "sqrt", 0, "search", 0.80),
        run_(2, "sqrt x2", 0, "search", math.nan),  # diverged
        run_(2, "sqrt x0.5", 0, "search", 0.95),  # wins the search: reads high
        run_(2, "sqrt x0.5", 1, "confirm", 0.85),
        run_(2, "sqrt x0.5", 2, "confirm", 0.86),
        run_(4, "sqrt", 0, "search", math.nan),
    ]
    rungs = ladder(runs, 8, 0.01, ACCURACY)
    assert [r.candidate for r in rungs] == ["sqrt", "sqrt x0.5", "diverged"]
    assert rungs[1].estimate.mean == pytest.approx(0.855)  # the confirmations, not the search
    assert rungs[1].comparison.drop == pytest.approx(0.05)
    assert rungs[2].comparison.status == "degraded"
    assert measure(runs, 8, 0.01, ACCURACY)[0].batch == 8


def test_the_schedule_doubles_where_the_local_critical_batch_allows_and_never_shrinks():
    points = [
        LocalCritical(0.1, 64, 24, 64, False, (), efficient=24),  # doubles to 16
        LocalCritical(0.25, 32, 8, 32, False, (), efficient=8),  # never shrinks
        LocalCritical(0.5, 256, 130, 256, True, (), efficient=130),
    ]
    assert batch_schedule(points, 8) == [(0.0, 8), (0.1, 16), (0.5, 128)]
    assert batch_schedule(points[1:2], 8) == [(0.0, 8)]


def test_a_constant_batch_is_read_at_the_earliest_checkpoint_that_was_judged():
    unjudged = LocalCritical(0.01, 8, 8, 8, False, (), math.nan, "k=1 (batch 8) errored")
    early = LocalCritical(0.1, 32, 16, 64, False, (), 0.05)
    later = LocalCritical(0.25, 256, 128, 512, True, (), 0.02)
    assert constant_batch([later, early, unjudged]) is early  # not the mean, not the largest
    assert constant_batch([unjudged]) is None and constant_batch([]) is None
    # read past the start of training, it says so
    assert "past the start of training" in late_start_caution(early)
    assert late_start_caution(LocalCritical(0.01, 32, 16, 64, False, (), 0.05)) == ""


def branch_spec(*args):
    cli = ["simple_cnn", "--dataset", "digits", "--method", "branch", "--rules", "sqrt", *args]
    return build_spec(build_parser().parse_args(cli), gpus_available=False)


def test_the_plan_gives_every_rung_the_same_examples():
    spec = branch_spec()
    plan = planning.make_plan(spec, 1437)
    assert plan.base_steps == 358 and plan.checkpoints == (4, 36, 90, 179)
    # a tenth of 2864 examples: batch 64 takes 4 steps in it, 128 would take 2
    assert plan.base_batch == 8 and plan.multipliers == (1, 2, 4, 8)
    assert plan.window == 320  # rounded up to whole batches of 64
    assert {plan.window_steps(k) * k * 8 for k in plan.multipliers} == {plan.window}
    own = planning.make_plan(branch_spec("--window", "5000"), 1437)
    assert own.multipliers[-1] == 64 and own.window == 5120  # up to the grid's 512
    tiny = planning.make_plan(branch_spec("--window", "1"), 1437)
    assert tiny.multipliers == (1, 2) and tiny.window == 64  # k=2 with its 4 steps at least
    labels = [c.label for c in planning.candidates(plan, 0.1, 4)]
    assert labels == ["sqrt", "sqrt x0.5", "sqrt x2"]
    assert planning.candidates(plan, 0.1, 4)[0].lr == pytest.approx(0.2)
    three = planning.make_plan(branch_spec("--rules", "none,linear,sqrt"), 1437)
    # k = 1 is searched as every rung is: the rules' lrs bracketed by x0.5 and x2
    at_one = planning.candidates(three, 0.1, 1)
    assert [c.label for c in at_one] == ["none", "none x0.5", "none x2"]
    assert [c.lr for c in at_one] == pytest.approx([0.1, 0.05, 0.2])
    at_four = {c.label: c.lr for c in planning.candidates(three, 0.1, 4)}
    assert at_four == pytest.approx(
        {"none": 0.1, "linear": 0.4, "sqrt": 0.2, "none x0.5": 0.05, "linear x2": 0.8}
    )
    assert spec.seeds == 2


def test_a_branch_starts_from_the_base_runs_state_with_its_own_lr():
    """Branched with lr 0, a run ends exactly where its start state was; with its own lr it
    trains on from there, not from a fresh model."""
    values = base_config(budget_unit="steps", budget_amount=40, eval_every=20)
    states, reports = [], []

    def keep(metrics, state):
        reports.append(metrics)
        states.append(copy.deepcopy(state))

    train(TrialConfig.from_dict(values), report=keep, keep_steps=(7,))
    assert [r["optimizer_steps"] for r in reports] == [7, 20, 40]  # kept step 7 evaluated
    start = states[0]

    def branch(lr, batch):
        out = []
        config = TrialConfig.from_dict(
            {**values, "batch_size": batch, "budget_amount": 5, "eval_every": 5}
        )
        train(config, report=lambda m, s: out.append(m), start_state=start, lr_fn=lambda _: lr)
        return out[-1]

    frozen = branch(0.0, 64)
    assert frozen["val_loss"] == pytest.approx(reports[0]["val_loss"], rel=1e-6)
    assert frozen["optimizer_steps"] == 5 and frozen["lr"] == 0.0
    moved = branch(0.05, 64)
    assert moved["val_loss"] != pytest.approx(reports[0]["val_loss"], rel=1e-3)
    fresh = []
    train(
        TrialConfig.from_dict({**values, "budget_amount": 5, "eval_every": 5}),
        report=lambda m, s: fresh.append(m),
        lr_fn=lambda _: 0.0,
    )
    assert fresh[-1]["val_loss"] != pytest.approx(reports[0]["val_loss"], rel=1e-3)


def test_by_default_a_checkpoint_is_judged_by_half_of_what_k1_gains_over_the_window():
    runs = [
        run_(1, "sqrt", 0, "search", 0.90),
        run_(1, "sqrt", 1, "confirm", 0.91),
        run_(1, "sqrt", 2, "confirm", 0.89),
        run_(2, "sqrt", 0, "search", 0.86),
        run_(2, "sqrt", 1, "confirm", 0.87),
        run_(2, "sqrt", 2, "confirm", 0.85),
    ]
    # k=1 went from 0.80 to 0.90: a 10 pt gain, so 5 pt of tolerance; k=2 is 4 pt behind
    assert checkpoint_tolerance(runs, 0.80, ACCURACY) == pytest.approx(0.05)
    assert measure(runs, 8, 0.0, ACCURACY, start={0.5: 0.80})[0].batch == 16
    # from 0.87 it gained 3 pt: 1.5 pt of tolerance, and k=2 falls behind it
    point = measure(runs, 8, 0.0, ACCURACY, start={0.5: 0.87})[0]
    assert point.batch == 8 and point.tolerance == pytest.approx(0.015)
    assert checkpoint_tolerance(runs, 0.80, ACCURACY, tolerance=0.01) == 0.01  # --tolerance
    # k=1 gained nothing: nothing to judge by, and the ladder stops
    assert math.isnan(checkpoint_tolerance(runs, 0.95, ACCURACY))
    rungs = ladder(runs, 8, math.nan, ACCURACY)
    assert not needs_next_rung(rungs, math.nan)


def test_a_branchs_end_is_the_mean_of_its_windows_second_half():
    """Value and every example's: the paired comparison then sees the same smoothing."""
    rows = [[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]]  # steps 6, 8 (kept) and 2 (not)
    history = [
        {"step": 2, "value": 0.1, "per_example": None, "diverged": False},
        {"step": 6, "value": 0.75, "per_example": encode(np.array(rows[0])), "diverged": False},
        {"step": 8, "value": 0.5, "per_example": encode(np.array(rows[1])), "diverged": False},
    ]
    end = {"optimizer_steps": 8, "val_acc": 0.5, "val_per_example": history[-1]["per_example"]}
    smoothed = smoothed_end(history, "val_acc", end)
    assert smoothed["val_acc"] == pytest.approx(0.625) and smoothed["smoothed_over"] == 2
    assert decode(smoothed["val_per_example"]).tolist() == [0.5, 0.0, 1.0, 1.0]
    diverged = [*history[:2], {**history[2], "diverged": True}]
    assert smoothed_end(diverged, "val_acc", end) == end  # a diverged run is not smoothed
