"""The study's checks in a real small study on local Ray (issue 18): a search range set too low
is extended by the search itself, and a batch size given far too few steps is given more until
it holds, instead of being called degraded.

Digits with one epoch per trial: batch 8 trains 179 steps, batch 128 only 11 (its confirmed
accuracy about 45%); the lr range 0.003-0.01 lies below the optimum (~0.07 at the reference
batch). About 25 trials, 30 s of trials on 2 CPUs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from tests.conftest import run_cli
from tuner.store.table import collect_trials

pytestmark = pytest.mark.ray

LOW, HIGH = 0.003, 0.01


@pytest.fixture(scope="module")
def checks_study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("checks")
    run_cli(
        "tuner.search", "simple_cnn", "--dataset", "digits", "--batch-sizes", "8,128",
        "--budget", "epochs:1", "--min-steps", "0", "--lr-range", f"{LOW},{HIGH}",
        "--rules", "sqrt", "--trials", "8", "--seeds", "2", "--target", "0.9", "--seed", "0",
        # batch 128 doubles 11 -> 22 steps at most, and the baseline with it to 2x its 179
        # (8x: 1,432 steps x 2 seeds was a quarter of the study's CPU, issue 31; 4x, with its
        # fresh seeds, still 40% of the runs' steps, issue 33: CI under 20 minutes)
        "--max-steps", "22",
        "--storage", str(storage), "--name", "checks",
    )  # fmt: skip
    return storage / "checks"


def finals(study) -> pd.DataFrame:
    table = collect_trials(study)
    return table.sort_values("optimizer_steps").groupby("trial_id").tail(1)


def test_a_best_on_the_edge_of_the_lr_range_moves_the_range(checks_study):
    storage = optuna.storages.RDBStorage(f"sqlite:///{checks_study / 'optuna.db'}")
    stepped = 0
    for cell in ("b8", "b128"):
        trials = optuna.load_study(study_name=f"checks/{cell}", storage=storage).trials
        search = [t for t in trials if t.user_attrs["phase"] == "search"]
        edges = [t for t in search if t.user_attrs["edge"]]
        assert len(search) == 4 + len(edges) and len(edges) <= 3  # on top of its 4 trials
        for t in edges:  # x3 past the best lr finished before it
            before = [u for u in search if u.number < t.number and u.state.name == "COMPLETE"]
            best = max(before, key=lambda u: u.value)
            assert t.params["base_lr"] == pytest.approx(3 * best.params["base_lr"])
            stepped += t.params["base_lr"] > HIGH
    assert stepped >= 2  # the search left the range that was set too low
    b8 = finals(checks_study).query("cell == 'b8' and phase == 'confirm'")
    assert (b8["base_lr"] > HIGH).all()  # and its best, confirmed, lies outside it
    assert b8["val_acc"].mean() > 0.93


def test_a_batch_size_short_of_steps_is_given_more_until_it_holds(checks_study):
    """Batch 128 confirmed far short of the baseline: half and twice its lr are tried at its
    11 steps, then twice the steps, and so on (search_spaces.checks), until it holds or more
    steps stop helping: judged at the checks' best level, as `budget_check` documents."""
    runs = finals(checks_study)
    b128 = runs[runs["cell"] == "b128"]
    confirm = b128[b128["phase"] == "confirm"]
    checked = b128[b128["phase"] == "extend"]
    assert set(confirm["budget_steps"]) == {11}
    lr = float(confirm["base_lr"].iloc[0])
    steps = checked["budget_steps"].astype(int)
    k = (checked["base_lr"] / lr).map(lambda f: round(math.log2(f)))
    assert {-1, 1} <= set(k[steps == 11])  # the lr first, at its own budget
    budgets = sorted(set(steps))
    # then doubling (to 22 steps, the cap: the rule, not the number)
    assert budgets == [11 * 2**i for i in range(len(budgets))] and len(budgets) >= 2
    for (_, _), level in checked.groupby([steps, k]):  # the confirmed configuration, its seeds
        assert sorted(level["seed"]) == [1, 2]
        for name in ("weight_decay", "warmup_fraction", "scaling_rule"):
            assert set(level[name]) == set(confirm[name]), name
    baseline = runs.query("cell == 'b8' and phase == 'confirm'")["val_acc"].mean()
    assert confirm["val_acc"].mean() < baseline - 0.1  # far short at its own budget
    frontier = pd.read_csv(checks_study / "frontier.csv").set_index("batch_size")
    judged = int(frontier.loc[128, "judged_steps"])
    factor = frontier.loc[128, "judged_lr_factor"]
    at = checked[(steps == judged) & (checked["base_lr"] / lr).round(6).eq(round(factor, 6))]
    # judged at that level (the checks' best) by fresh seeds (3, 4: not the runs that chose
    # it) where it is not its confirmation, a diverged one at its last evaluation (issue 32),
    # against the baseline as the study judged it (at its own lr check's level, which may not
    # be its confirmation's), by fresh seeds too where that level was run again
    fresh = b128[
        (b128["phase"] == "judge")
        & (b128["budget_steps"].astype(int) == judged)
        & (b128["base_lr"] / lr).round(6).eq(round(factor, 6))
    ]
    if (judged, factor) != (11, 1.0):
        assert sorted(fresh["seed"]) == [3, 4]
        at = fresh
    done = at[at["outcome"].isin(["completed", "diverged"])]
    accuracy, base = frontier.loc[128, "accuracy"], frontier.loc[128, "baseline_accuracy"]
    assert accuracy == pytest.approx(done["val_acc"].mean())
    # against the baseline given the same multiple of its own budget (179 steps), same seeds
    multiple = judged // 11
    assert frontier.loc[128, "baseline_multiple"] == multiple
    b8 = runs.query("cell == 'b8' and phase in ('confirm', 'extend', 'judge')")
    b8 = b8[b8["budget_steps"].astype(int) == 179 * multiple]
    moved = frontier.get("baseline_lr_factor", pd.Series(dtype=float)).get(8, math.nan)
    factor = moved if math.isfinite(moved) else 1.0  # the baseline's lr after its own check
    confirmed_lr = float(runs.query("cell == 'b8' and phase == 'confirm'")["base_lr"].iloc[0])
    b8 = b8[(b8["base_lr"] / confirmed_lr).round(6).eq(round(factor, 6))]
    if (multiple, factor) != (1, 1.0):  # a level its checks chose: by its fresh seeds
        b8 = b8[b8["phase"] == "judge"]
        assert sorted(b8["seed"]) == [3, 4]
    else:
        assert sorted(b8["seed"]) == [1, 2]
    assert base == pytest.approx(
        b8.loc[b8["outcome"].isin(["completed", "diverged"]), "val_acc"].mean()
    )
    if (done["outcome"] == "diverged").any():  # a judged run diverged: unstable, never holds
        assert frontier.loc[128, "status"] == "unstable"
        return
    if (judged, factor) != (11, 1.0):  # a level is moved to only for a gain over 1 pt
        assert accuracy > confirm["val_acc"].mean() + 0.01
    check, status = frontier.loc[128, "budget_check"], frontier.loc[128, "status"]
    verdict = (checks_study / "report.md").read_text().split("## Verdict", 1)[1]
    if check.startswith(f"holds at {judged} steps"):  # within the tolerance once it had them
        # on the runs that chose the level; the fresh seeds' values judge it
        if accuracy >= base - 0.01:
            assert status in ("holds", "unresolved")
            assert "Degraded" not in verdict.split("Rule test")[0]
        else:
            assert status != "holds"
    else:
        # the doubling stopped short of the baseline: where a doubling (at the best of three
        # lrs) gained no more than the tolerance, or at the cap (seen: 22 steps, lr x4, 80.5%
        # against 96.9%, two seeds at 89% and 72%); it is degraded only on a plateau
        assert check.startswith((f"a plateau at {judged} steps", "still improving at the cap"))
        assert accuracy < base - 0.01 and status != "holds"
        assert status != "degraded" or check.startswith("a plateau")
    assert f"at {judged} steps (" in verdict and "x its budget" in verdict
    if multiple > 1:
        assert f"against the baseline given {multiple}x its steps too" in verdict
    data = json.loads((checks_study / "frontier.json").read_text())
    assert data["study"]["budget"].startswith("epochs:1")


def test_the_rule_test_ran_at_the_baselines_recipe(checks_study):
    runs = finals(checks_study)
    rule = runs[runs["phase"] == "rule"]
    base = runs.query("cell == 'b8' and phase == 'confirm'").iloc[0]
    assert sorted(rule["seed"]) == [1, 2] and set(rule["batch_size"]) == {128}
    assert set(rule["budget_steps"]) == {11}  # the batch size's own budget
    for row in rule.itertuples():  # sqrt from batch 8 to 128: x4, the baseline's warmup
        assert row.actual_lr == pytest.approx(4 * base["actual_lr"])
        assert row.warmup_fraction == pytest.approx(base["warmup_fraction"])
        assert row.weight_decay == pytest.approx(base["weight_decay"])


def test_trials_out_together_run_together_in_kept_processes(checks_study):
    """46 short trials, handed out a few at a time as the ones before end (confirmations after
    the search, each check level after the one before). Each ran in a kept process
    (tuner.study.actor_cache): no trial waited for a process busy with another, and no more
    processes ran trials than trials were ever out at once. Tune alone killed one of two
    actors that ended together, started a new process for the next trial and gave that trial
    the surviving actor before it came up: from the confirmations on, one trial at a time in
    one process (21 of 46 trials waited), and a process started in vain for each."""
    runs = finals(checks_study).sort_values("started")
    assert len(runs) > 40 and runs["pid"].notna().all()
    for _, trials in runs.groupby(["node_id", "pid"]):  # one trial at a time in a process
        waited = trials["started"].to_numpy()[1:] < trials["ended"].to_numpy()[:-1]
        assert not waited.any(), trials[["trial_id", "phase", "started", "ended"]]
    events = sorted([(t, 1) for t in runs["started"]] + [(t, -1) for t in runs["ended"]])
    out = most = 0
    for _, change in events:  # an end and a start at one instant: the end first
        out += change
        most = max(most, out)
    assert runs.groupby(["node_id", "pid"]).ngroups <= most


def test_steps_to_target_come_from_budget_free_runs_of_each_batch_sizes_best(checks_study):
    """Issue 32 item 6: each batch size's confirmed configuration runs again budget-free (no
    warmup by default, then a constant lr, ending at the target or at twice its budget), its
    lr line-searched for the fewest steps; steps to target are read from those runs alone."""
    from search_spaces.checks import FREE_LR_START, budget_free_next

    runs = finals(checks_study)
    frontier = pd.read_csv(checks_study / "frontier.csv").set_index("batch_size")
    assert set(frontier["steps_measure"]) == {"budget-free"}
    for batch, own in ((8, 179), (128, 11)):
        confirm = runs.query(f"batch_size == {batch} and phase == 'confirm'")
        free = runs.query(f"batch_size == {batch} and phase == 'budget_free'")
        lr = float(confirm["base_lr"].iloc[0])
        k = (free["base_lr"] / lr).map(lambda f: round(math.log2(f)))
        assert set(FREE_LR_START) <= set(k)
        for _, level in free.groupby(k):
            assert sorted(level["seed"]) == [1, 2]
        for name in ("weight_decay", "warmup_fraction", "scaling_rule", "cell"):
            assert set(free[name]) == set(confirm[name]), name
        assert set(free["budget_steps"]) == {2 * own} and set(free["warmup_steps"]) == {0}
        assert (free["lr"] == free["peak_lr"]).all()  # constant to its end
        reached = free["outcome"] == "target"
        assert (free.loc[reached, "val_acc"] >= 0.9).all()
        assert (free.loc[~reached, "optimizer_steps"] <= 2 * own).all()
        # the line search ended where the fewest steps were inside the lrs tried (or at none)
        ends = free.assign(k=k, end=free["optimizer_steps"].where(reached, math.inf))
        means = ends.groupby("k")["end"].mean().to_dict()
        assert budget_free_next(means) is None, means
        if reached.any():  # the batch size's steps: no later than its earliest reliable end
            reliable = ends.groupby("k")["end"].transform(lambda s: bool(np.isfinite(s).all()))
            first = ends.loc[reliable, "end"].min() if reliable.any() else ends["end"].min()
            steps = frontier.loc[batch, "steps"]
            steps = steps if math.isfinite(steps) else frontier.loc[batch, "steps_at_most"]
            assert steps <= first
    assert "budget-free runs" in (checks_study / "report.md").read_text()
