"""A real small study on local Ray (digits, batch sizes 8..256, a step budget), read back through
its files: fair shares per cell, confirmation runs, a complete trial table, Optuna's record,
TensorBoard files, and the verdict a careful reader of Shallue et al. would sign."""

import json
import math
import shutil
from collections import Counter

import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from search_spaces.checks import equal_data_steps
from tests.conftest import SMALL_STUDY_BATCHES as BATCHES
from tests.conftest import SMALL_STUDY_STEPS as STEPS
from tests.conftest import run_cli
from trainables.budget import default_eval_every, evaluation_steps
from trainables.budget_free import evaluation_grid
from tuner.spec import load_spec
from tuner.store.table import collect_trials

pytestmark = pytest.mark.ray


def per_trial(study):
    return collect_trials(study).drop_duplicates("trial_id")


def test_every_cell_gets_its_share(small_study):
    trials = per_trial(small_study)
    search = trials[trials["phase"] == "search"]
    assert Counter(search["cell"]) == {f"b{b}": 2 for b in BATCHES}


def test_each_cells_best_is_confirmed_with_fresh_seeds(small_study):
    table = collect_trials(small_study)
    finals = table.sort_values("optimizer_steps").groupby("trial_id").tail(1)
    for cell, group in finals.groupby("cell"):
        search = group[(group["phase"] == "search") & (group["outcome"] == "completed")]
        confirm = group[group["phase"] == "confirm"]
        assert len(search) >= 1, cell  # ASHA always lets a cell's first trial through
        # the searcher's best: the highest value, ties to the earliest trial
        ordered = search.sort_values(["val_acc", "optuna_number"], ascending=[False, True])
        best = ordered.iloc[0]
        assert sorted(confirm["seed"]) == [1, 2], cell
        # never stopped early (a seed may diverge: a recorded outcome of its own)
        assert set(confirm["outcome"]) <= {"completed", "diverged"}, cell
        for name in ("base_lr", "weight_decay", "warmup_fraction", "scaling_rule"):
            assert set(confirm[name]) == {best[name]}, (cell, name)


def test_trial_table_is_complete(small_study):
    table = collect_trials(small_study)
    assert (small_study / "trials.csv").exists()
    for trial_id, rows in table.groupby("trial_id"):
        steps = rows["optimizer_steps"].tolist()
        budget = int(rows["budget_steps"].iloc[-1])
        # every evaluation, once, in order, none missing: about 20 per trial (every
        # default_eval_every steps; each step of a short equal-data run) and the last step
        # (trainables.budget.evaluation_steps); a trial that diverges
        # ends with an evaluation at the step it was found diverged (the loss is checked every
        # DIVERGENCE_CHECK_EVERY steps: seen, [10, 16]), which can fall between two of those
        grid = evaluation_steps(budget, default_eval_every(budget))
        if rows["phase"].iloc[0] == "budget_free":  # a geometric grid, to the target at most
            grid = evaluation_grid(budget)
        if rows["outcome"].iloc[0] == "diverged":
            assert steps[:-1] == grid[: len(steps) - 1], (trial_id, steps)
            assert ([0, *steps])[-2] < steps[-1] <= budget, (trial_id, steps)
            assert bool(rows["diverged"].iloc[-1]), (trial_id, rows["diverged"].tolist())
        else:
            assert steps == grid[: len(steps)], (trial_id, steps)
        if rows["outcome"].iloc[0] == "completed":
            assert steps[-1] == budget and rows["progress"].iloc[-1] == 1.0
        # examples seen = optimizer steps x global batch, whatever the batch size
        assert (rows["examples_seen"] == rows["optimizer_steps"] * rows["batch_size"]).all()
        assert rows["val_acc"].between(0, 1).all()
        batch = int(rows["batch_size"].iloc[0])
        if rows["phase"].iloc[0] == "budget_free":
            assert set(rows["budget_steps"]) == {2 * STEPS}  # a bound: it ends at the target
        elif rows["phase"].iloc[0] in ("extend", "judge"):
            # the lr check at the budget, more steps: twice it (the cap: twice the longest
            # budget); and the batch-8 baseline's examples (search_spaces.checks.equal_data_run);
            # fresh seeds (judge) at a level these chose, the equal-data lr included
            allowed = {STEPS, 2 * STEPS, equal_data_steps(STEPS, 8, batch)}
            assert set(rows["budget_steps"]) <= allowed
        else:
            assert set(rows["budget_steps"]) == {STEPS}


def test_every_larger_batch_size_ran_again_at_the_baselines_data(small_study):
    """An equal-step study: each batch size above the baseline saw B/8 times its examples, so
    its confirmed configuration ran again with both confirmation seeds for the baseline's
    examples, and the report says both answers."""
    trials = per_trial(small_study)
    confirm = trials[trials["phase"] == "confirm"]
    data = json.loads((small_study / "frontier.json").read_text())
    rows = {r["batch_size"]: r for r in data["frontier"]}
    for batch in BATCHES[1:]:
        steps = equal_data_steps(STEPS, 8, batch)
        runs = trials[(trials["phase"] == "extend") & (trials["budget_steps"] == steps)]
        ours = confirm[confirm["batch_size"] == batch].iloc[0]
        runs = runs[runs["batch_size"] == batch]
        for name in ("weight_decay", "warmup_fraction", "scaling_rule"):
            assert set(runs[name]) == {ours[name]}, (batch, name)
        # its confirmed lr, then the baseline's line search: x2^k while a step gained
        factors = (runs["base_lr"] / ours["base_lr"]).map(lambda f: round(math.log2(f)))
        assert sorted(runs[factors == 0]["seed"]) == [1, 2], batch
        assert {-1, 1} <= set(factors) and all(
            sorted(g) == [1, 2] for _, g in runs.groupby(factors)["seed"]
        ), batch
        # where the line search moved the lr, the lr it chose ran again with fresh seeds, and
        # the equal-data answer is theirs (not the runs that chose it)
        fresh = trials[
            (trials["phase"] == "judge")
            & (trials["budget_steps"] == steps)
            & (trials["batch_size"] == batch)
        ]
        factor = rows[batch]["equal_data_lr_factor"]
        if factor is not None and math.isfinite(factor) and factor != 1:
            assert sorted(fresh["seed"]) == [3, 4], batch
            assert set((fresh["base_lr"] / ours["base_lr"]).round(6)) == {round(factor, 6)}
            assert rows[batch]["equal_data_fresh"], batch
        else:
            assert fresh.empty and not rows[batch]["equal_data_fresh"], batch
    assert [rows[b]["data_ratio"] for b in BATCHES] == pytest.approx([b / 8 for b in BATCHES])
    largest = BATCHES[-1]
    assert rows[largest]["equal_data_steps"] == equal_data_steps(STEPS, 8, largest)
    assert rows[largest]["equal_data_status"] is not None  # measured, whatever it says
    verdict = (small_study / "report.md").read_text().split("## Verdict", 1)[1]
    assert "The answer above is given more data" in verdict and "At equal data (" in verdict


def test_optuna_storage_agrees_with_outcomes(small_study):
    storage = optuna.storages.RDBStorage(f"sqlite:///{small_study / 'optuna.db'}")
    expected = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "target": optuna.trial.TrialState.COMPLETE,
        "stopped": optuna.trial.TrialState.PRUNED,
        "diverged": optuna.trial.TrialState.PRUNED,
    }
    seen = set()
    for cell in (*(f"b{b}" for b in BATCHES), "checks"):
        for t in optuna.load_study(study_name=f"e2e/{cell}", storage=storage).trials:
            assert t.state == expected[t.user_attrs["outcome"]]
            assert t.user_attrs["tune_trial_id"] not in seen  # one record per Tune trial
            seen.add(t.user_attrs["tune_trial_id"])
    assert seen == set(per_trial(small_study)["trial_id"])


def test_the_rule_test_ran_the_baselines_best_at_every_larger_batch_size(small_study):
    trials = per_trial(small_study)
    rule = trials[trials["phase"] == "rule"]
    assert Counter(rule["batch_size"]) == {b: 2 for b in BATCHES[1:]}  # 1 rule x 2 seeds
    assert set(rule["seed"]) == {1, 2} and set(rule["outcome"]) <= {"completed", "diverged"}
    base = trials[(trials["cell"] == "b8") & (trials["phase"] == "confirm")].iloc[0]
    for row in rule.itertuples():  # sqrt: the baseline's peak lr x sqrt(B / 8), nothing else
        assert row.actual_lr == pytest.approx(base["actual_lr"] * (row.batch_size / 8) ** 0.5)
        assert row.weight_decay == pytest.approx(base["weight_decay"])
    verdict = (small_study / "report.md").read_text().split("## Verdict", 1)[1]
    assert "Rule test (the batch-8 baseline's best configuration moved to every batch" in verdict
    for row in rule[rule["outcome"] == "diverged"].drop_duplicates("batch_size").itertuples():
        # a rule that diverges somewhere is said so there (seen: sqrt at 512, 1 of 2 runs)
        n = int((rule[rule["batch_size"] == row.batch_size]["outcome"] == "diverged").sum())
        assert f"diverged at batch {row.batch_size} ({n} of 2 runs" in verdict


def test_tensorboard_files_hold_every_trials_metrics_against_steps(small_study):
    table = collect_trials(small_study)
    files = sorted(small_study.glob("trial_driver_*/events.out.tfevents.*"))
    assert len(files) == table["trial_id"].nunique()
    seen = set()
    for path in files:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"trial/val_acc", "trial/val_loss", "trial/train_loss", "trial/lr"} <= tags
        trial_id = path.parent.name.split("_")[2]
        rows = table[table["trial_id"] == trial_id]
        assert [e.step for e in acc.Scalars("trial/val_acc")] == rows["optimizer_steps"].tolist()
        values = [e.value for e in acc.Scalars("trial/val_acc")]
        assert values == pytest.approx(rows["val_acc"].tolist(), rel=1e-6)
        seen.add(trial_id)
    assert seen == set(table["trial_id"])


def test_spec_saves_versions_and_revision(small_study):
    saved = json.loads((small_study / "study.json").read_text())
    assert saved["spec"]["batch_sizes"] == list(BATCHES) and saved["spec"]["trials"] == 8
    assert saved["spec"]["budget"] == f"steps:{STEPS}" and saved["spec"]["min_steps"] == 0
    packages = saved["environment"]["packages"]
    assert packages["ray"] and packages["torch"] and packages["optuna"]
    assert "git_revision" in saved["environment"]


def test_under_a_step_budget_every_batch_size_reaches_the_target_and_the_largest_holds(
    small_study,
):
    """Issue 9's check: with 150 steps at every batch size (digits, Simple CNN), each batch
    size of 8..256 reaches the target, and the largest is not reported degraded. (Whether it
    holds within 1 pt the study cannot resolve: 359 validation examples; see below.)"""
    largest = BATCHES[-1]
    frontier = pd.read_csv(small_study / "frontier.csv").set_index("batch_size")
    reached = frontier["steps"].notna() | frontier["steps_at_most"].notna()  # at once: issue 36
    assert reached.all(), frontier[["steps", "steps_at_most", "censored_at"]]
    assert frontier.loc[largest, "status"] != "degraded", frontier["status"]
    assert (frontier["accuracy_source"] == "confirmed").all()
    spec = load_spec(small_study)
    verdict = (small_study / "report.md").read_text().split("## Verdict", 1)[1]
    assert f"Budget: {STEPS} steps per trial: equal optimizer steps at every batch size" in verdict
    assert f"Degraded at batch {largest}" not in verdict
    data = json.loads((small_study / "frontier.json").read_text())
    assert data["study"]["budget"] == str(spec.budget_spec())


def test_the_largest_holds_within_a_tolerance_the_study_can_resolve(small_study, tmp_path):
    """The study resolves drops of about 2 pt: within 3 pt, the largest batch holds (its drop's
    upper bound is below the tolerance). `tuner.report --tolerance` re-judges a finished study."""
    largest = BATCHES[-1]
    copy = tmp_path / "e2e"  # a copy: the shared study's own report stays at 1 pt
    shutil.copytree(small_study, copy)
    run_cli("tuner.report", str(copy), "--tolerance", "3", "--no-tensorboard")
    frontier = pd.read_csv(copy / "frontier.csv").set_index("batch_size")
    if frontier.loc[largest, "accuracy_diverged"] > 0:  # a judged seed diverged (issue 32)
        status = frontier.loc[largest, "status"]
        assert status == "unstable", frontier[["accuracy_diverged", "status"]]
        return
    assert frontier.loc[largest, "status"] == "holds", frontier[["drop", "drop_high", "status"]]
    assert frontier.loc[largest, "drop_high"] <= 0.03  # drops are fractions of accuracy


def test_report_refuses_a_tolerance_out_of_range(small_study, tmp_path):
    before = (small_study / "report.md").stat().st_mtime_ns
    proc = run_cli("tuner.report", str(small_study), "--tolerance", "100", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --tolerance 100"), proc.stderr
    assert (small_study / "report.md").stat().st_mtime_ns == before  # nothing written


def test_stop_at_target_ends_a_trial_at_its_first_evaluation_past_the_target(tmp_path):
    """A real study with --stop-at-target: a trial that reaches 90% ends at that evaluation
    (outcome `target`), before its budget; none goes on past the target."""
    run_cli(
        "tuner.search", "simple_cnn", "--dataset", "digits", "--batch-sizes", "32,128",
        "--budget", "steps:150", "--eval-every", "10", "--rules", "sqrt", "--trials", "4",
        "--seeds", "1", "--target", "0.9", "--stop-at-target", "--seed", "0", "--no-checks",
        "--storage", str(tmp_path), "--name", "at-target",
    )  # fmt: skip
    table = collect_trials(tmp_path / "at-target")
    at_target = 0
    for trial_id, rows in table.groupby("trial_id"):
        rows = rows.sort_values("optimizer_steps")
        past = rows[rows["val_acc"] >= 0.9]
        if past.empty:
            continue
        # the last evaluation is the first one at or past the target
        assert rows["optimizer_steps"].iloc[-1] == past["optimizer_steps"].iloc[0], trial_id
        if rows["outcome"].iloc[0] != "stopped":  # ASHA may stop it at that same evaluation
            assert rows["outcome"].iloc[0] == "target", rows["outcome"].iloc[0]
            assert bool(rows["reached_target"].iloc[-1])
            assert rows["optimizer_steps"].iloc[-1] < 150
            at_target += 1
    assert at_target >= 2, table.drop_duplicates("trial_id")[["trial_id", "outcome"]]
    verdict = (tmp_path / "at-target" / "report.md").read_text().split("## Verdict", 1)[1]
    assert "Trials ended once they reached the target (--stop-at-target)" in verdict


def test_the_report_says_what_the_study_cost(small_study):
    """Every trial's CPU time (1 CPU per worker, 1 worker) is its wall time from when it began
    (its process's start for the first trial of a process, else its own; never before the
    search handed it out) to its end; the total and the split by batch size add up, and the
    verdict states it."""
    table = collect_trials(small_study)
    spans = table.groupby("trial_id").agg(
        started=("started", "min"), began=("trial_began", "min"), ended=("ended", "max")
    )
    assert spans.notna().all().all() and (spans["ended"] > spans["started"]).all()
    assert (spans["began"] <= spans["ended"]).all()
    cost = json.loads((small_study / "frontier.json").read_text())["cost"]
    assert cost["device"] == "CPU" and cost["trials"] == len(spans)
    expected = float((spans["ended"] - spans[["started", "began"]].max(axis=1)).sum()) / 3600
    assert expected < float((spans["ended"] - spans["started"]).sum()) / 3600  # some waited
    assert cost["device_hours"] == pytest.approx(expected)
    assert sum(cost["by_batch"].values()) == pytest.approx(expected)
    assert set(cost["by_phase"]) >= {"search", "confirmation"}
    verdict = (small_study / "report.md").read_text().split("## Verdict", 1)[1]
    assert "- Cost: " in verdict and "of CPU time" in verdict
    data = json.loads((small_study / "frontier.json").read_text())
    # every batch size whose steps to 0.9 are known (one past it at its first evaluation has
    # only a bound: issue 36)
    known = {row["batch_size"] for row in data["frontier"] if row["steps"] is not None}
    assert known and {row["batch_size"] for row in data["time_to_target"]} == known
    assert (small_study / "figures" / "time_vs_compute.png").stat().st_size > 10_000


def test_comparisons_are_paired_on_the_validation_examples(small_study):
    """Every confirmed run keeps each validation example's correctness; every drop is bounded
    example by example, which resolves finer than two independent binomials would."""
    from trainables.per_example import decode
    from tuner.analysis.frontier import degradation_map

    table = collect_trials(small_study)
    last = table.sort_values("optimizer_steps").groupby("trial_id").tail(1)
    confirmed = last[(last["phase"] == "confirm") & (last["outcome"] == "completed")]
    assert len(confirmed)
    for row in confirmed.itertuples():
        kept = decode(row.val_per_example)
        assert kept.size == row.val_examples and kept.mean() == pytest.approx(row.val_acc)
    frontier = pd.read_csv(small_study / "frontier.csv").set_index("batch_size")
    judged = frontier[frontier["drop"].notna() & (frontier["status"] != "baseline")]
    assert len(judged) == 3 and judged["paired"].all(), frontier[["drop", "paired"]]
    assert (
        "paired: both sides are scored on the same validation examples"
        in (small_study / "report.md").read_text()
    )
    spec = load_spec(small_study)
    options = dict(target=spec.target, tolerance=spec.tolerance, batch_sizes=spec.batch_sizes)
    unpaired = degradation_map(table.assign(val_per_example=None), **options).frontier
    unpaired = unpaired.set_index("batch_size")
    assert not unpaired.loc[judged.index, "paired"].any()
    assert (judged["resolution"] < unpaired.loc[judged.index, "resolution"]).all()
