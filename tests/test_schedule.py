"""The study as a graph of jobs and its wall time on N slots (tuner.analysis.schedule). No Ray."""

from __future__ import annotations

import pytest

from tuner.analysis.schedule import Job, asha_share, simulate, study_jobs
from tuner.options import build_parser
from tuner.resolve import build_spec


def test_list_scheduling_meets_the_bounds_it_must():
    """Four 10 s jobs, then one 30 s job that waits for the first: on one slot the work (70 s);
    on many the chain (10 + 30 s); on two, the chain first (its head starts at once)."""
    jobs = [Job(f"a{i}", 10.0) for i in range(4)] + [Job("b", 30.0, ("a0",))]
    one, two, many = simulate(jobs, 1), simulate(jobs, 2), simulate(jobs, 64)
    assert one.wall_s == 70 and one.critical_path_s == 40 and one.utilisation == 1
    assert many.wall_s == 40 == many.critical_path_s
    assert two.wall_s == 40  # a0 first (the longest chain behind it), b beside a1..a3
    assert simulate([], 4).wall_s == 0


def test_asha_runs_a_third_past_each_rung():
    """Rungs at 1/9 and 1/3 with factor 3: all to 1/9, a third on to 1/3, a ninth to the end."""
    assert asha_share([1 / 9, 1 / 3], 3) == pytest.approx(1 / 9 + (2 / 9) / 3 + (2 / 3) / 9)
    assert asha_share([], 3) == 1.0


def test_a_studys_jobs_wait_for_what_the_searcher_waits_for():
    """Search at once; confirmations after their cell's search; the baseline's lr check after
    its confirmations; equal data after that and its own confirmations; the rule test after
    the baseline's search. On enough slots the wall time is that chain."""
    spec = build_spec(
        build_parser().parse_args(
            ["simple_cnn", "--dataset", "digits", "--batch-sizes", "8,128", "--seeds", "2",
             "--rules", "sqrt"]
        ),
        gpus_available=False,
    )  # fmt: skip
    steps = {8: 358, 128: 150}
    jobs = study_jobs(spec, steps.__getitem__, lambda b, s: s * b / 1000)
    by = {j.name: j for j in jobs}
    names = list(by)
    search8 = [n for n in names if n.startswith("b8/search")]
    assert len(search8) == 8 and all(not by[n].after for n in search8)
    assert set(by["b8/confirm0"].after) == set(search8)
    assert set(by["base/lr-1-0"].after) == {"b8/confirm0", "b8/confirm1"}
    equal = [n for n in names if n.startswith("b128/equal")]
    assert len(equal) == 6  # its lr and half and twice it, 2 seeds: 22 steps each
    assert by[equal[0]].seconds == pytest.approx(22 * 128 / 1000)
    assert {"base/lr1-1", "b128/confirm1"} <= set(by[equal[0]].after)
    rule = [n for n in names if n.startswith("rule/")]
    assert len(rule) == 2 and set(by[rule[0]].after) == set(search8)
    # each batch size's budget-free runs once its search has ended: 3 lrs x 2 seeds, priced
    # at their bound (twice the budget)
    free = [n for n in names if n.startswith("free/128")]
    assert len(free) == 6 and set(by[free[0]].after) == {f"b128/search{i}" for i in range(8)}
    assert by[free[0]].seconds == pytest.approx(2 * 150 * 128 / 1000)
    # the longest chain: batch 128's (its trials are 19.2 s, the baseline's 2.9 s): its
    # search (ASHA's share of its budget), then its budget-free runs (twice its budget)
    full = {8: 358 * 8 / 1000, 128: 150 * 128 / 1000}
    share = by["b128/search0"].seconds / full[128]
    chains = {
        8: share * full[8] + 2 * full[8] + 22 * 128 / 1000,  # search, confirm, lr check, equal
        128: share * full[128] + full[128] + 22 * 128 / 1000,
        "free128": share * full[128] + 2 * full[128],
    }
    found = simulate(jobs, 64)
    assert found.critical_path_s == pytest.approx(max(chains.values()))
    assert found.wall_s == pytest.approx(max(chains.values()))
    assert simulate(jobs, 1).wall_s == pytest.approx(sum(j.seconds for j in jobs))
