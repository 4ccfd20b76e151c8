"""Steps to target that do not follow the budget (issue 32 item 6): the budget-free run
(`trainables.budget_free`), the searcher's budget-free runs of each batch size's best
configuration, and the map reading steps to target from them alone."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from torch import nn

from search_spaces.cell_search import BUDGET_FREE, CONFIRM, FINISHED, CellSearch
from search_spaces.cells import study_cells
from search_spaces.checks import FREE_BUDGET_MULTIPLE, FREE_LR_START, budget_free_next
from tests.test_analysis import confirmations, table, trial
from tests.test_cell_search import GRID, REF, get_space, hand_out
from tests.test_config import base_config
from trainables.budget_free import evaluation_grid, weight_average
from trainables.config import TrialConfig
from trainables.loop import train
from tuner.analysis.frontier import degradation_map


def test_the_evaluation_grid_up_to_any_step_is_the_same_under_any_budget():
    short, long = evaluation_grid(150), evaluation_grid(300)
    assert short[-1] == 150 and long[-1] == 300
    assert short[:-1] == [s for s in long if s < 150]
    gaps = [b / a for a, b in zip(long, long[1:-1], strict=False) if a >= 20]
    assert max(gaps) <= 1.1 + 1 / 20  # each crossing known to within ~10% of its step


def test_the_weight_average_forgets_at_a_rate_set_by_the_step_alone():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    average = weight_average(model)
    for step, weight in ((1, 1.0), (2, 3.0)):
        with torch.no_grad():
            model.weight.fill_(weight)
        average.update(model, step=step)
    decay = 1 - 2 ** (-2 / 3)  # 1 - t^(-2/3) at step t = 2 (the first copied), any run length
    assert average.module.weight.item() == pytest.approx(decay * 1 + (1 - decay) * 3, rel=1e-5)


def run(overrides):
    config = TrialConfig.from_dict(base_config(**overrides))
    reports, states = [], []

    def report(metrics, state):
        reports.append(metrics)
        states.append(copy.deepcopy(state))

    train(config, report=report)
    return reports, states


FREE = {"batch_size": 128, "base_lr": 0.05, "budget_unit": "steps", "budget_free": True}


def test_a_budget_free_run_is_the_same_run_under_twice_the_budget():
    short, _ = run(FREE | {"budget_amount": 30, "warmup_in_steps": 4, "warmup_fraction": 0.2})
    long, states = run(FREE | {"budget_amount": 60, "warmup_in_steps": 4, "warmup_fraction": 0.2})
    shared = [r["optimizer_steps"] for r in short]
    assert shared == [r["optimizer_steps"] for r in long][: len(shared)]
    for a, b in zip(short, long, strict=False):  # same lr, weights and judged values
        assert (a["lr"], a["val_loss"], a["val_acc"]) == (b["lr"], b["val_loss"], b["val_acc"])
    peak = 0.05 * 128 / 32
    assert long[-1]["lr"] == peak and long[-1]["warmup_steps"] == 4  # in steps, then constant
    assert "average" in states[-1]  # kept for a resume
    # the judged weights are the average, not the last step's
    first = next(iter(states[-1]["model"]))
    assert not torch.equal(states[-1]["average"][first], states[-1]["model"][first])


def test_a_budget_schedule_is_not():
    short, _ = run(FREE | {"budget_free": False, "budget_amount": 30, "eval_every": 5})
    long, _ = run(FREE | {"budget_free": False, "budget_amount": 60, "eval_every": 5})
    assert short[1]["lr"] != long[1]["lr"]  # warmup and decay are fractions of the budget


def budget_free_search(strata=("rule",), seeds=2):
    space = get_space("simple_cnn")
    cells = study_cells(GRID, space, strata)
    return CellSearch(
        study_name="t",
        storage=optuna.storages.InMemoryStorage(),
        cells=cells,
        search_trials=len(cells),
        seeds=seeds,
        space=space,
        reference_batch=REF,
        seed=0,
        rule_test=False,
        checks=False,
        budget_free_steps=True,
        target_warmup=7,
    )


def test_each_batch_size_runs_its_best_cells_configuration_budget_free():
    search = budget_free_search()  # 3 rules: 3 cells per batch size, one trial each
    values = {"linear": 0.90, "sqrt": 0.95, "none": 0.80}
    searched = []
    for i in range(search.search_trials):
        s = search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", values[s.params["scaling_rule"]], 100, 100)
        searched.append(s)
    handed = hand_out(search, "r")
    free = [s for s in handed if s.phase == BUDGET_FREE]
    assert {s.phase for s in handed} == {CONFIRM, BUDGET_FREE}
    for batch in GRID:  # one cell per batch size: the best one, at its lr and half of it
        runs = [s for s in free if s.cell.batch_size == batch]
        best = next(
            s.params
            for s in searched
            if s.cell.batch_size == batch and s.params["scaling_rule"] == "sqrt"
        )
        assert {s.cell.rule for s in runs} == {"sqrt"}
        assert sorted((s.params["lr_step"], s.seed) for s in runs) == sorted(
            (k, seed) for k in FREE_LR_START for seed in (1, 2)
        )
        for s in runs:
            assert s.params["base_lr"] == pytest.approx(
                best["base_lr"] * 2.0 ** s.params["lr_step"]
            )
            assert s.params["budget_free"] is True and s.params["warmup_in_steps"] == 7
            assert s.params["budget_steps"] == FREE_BUDGET_MULTIPLE * 100
    # each lr reaches the target at its own step: 1 (twice the lr) is the fewest, at the end
    # of those tried, so the search asks for 2 (4x), then stops where 2 is no faster
    at = {-1: 60, 0: 40, 1: 30, 2: 35}
    for key, (_, _, phase) in list(search.trials.items()):
        if phase == BUDGET_FREE:
            run = search.handed[key][0]
            search.complete(key, "target", 0.97, at[run.params["lr_step"]], 200)
        elif phase == CONFIRM:
            search.complete(key, "completed", 0.97, 100, 100)
    more = hand_out(search, "m")
    assert sorted((s.cell.batch_size, s.params["lr_step"]) for s in more) == sorted(
        (b, 2) for b in GRID for _ in (1, 2)
    )
    for key in [k for k in search.trials if k.startswith("m")]:
        search.complete(key, "target", 0.97, at[2], 200)
    assert search.suggest("end") == FINISHED


def test_without_them_no_budget_free_run_is_handed_out():
    search = budget_free_search(strata=())
    search.budget_free_steps = False
    for i in range(search.search_trials):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.9, 100, 100)
    assert {s.phase for s in hand_out(search, "r")} == {CONFIRM}


def free_run(trial_id, batch, curve, seed, base_lr=0.01):
    """A budget-free run: at the target where its last value is past 0.97, else at its bound."""
    outcome = "target" if curve[-1][1] >= 0.97 else "completed"
    return trial(
        trial_id,
        batch,
        curve,
        phase=BUDGET_FREE,
        seed=seed,
        budget_steps=400,
        outcome=outcome,
        base_lr=base_lr,
    )


def test_steps_to_target_come_from_the_budget_free_runs_alone():
    parts = []
    for batch, early in ((8, 80), (32, 30)):
        # a search run crosses early (its schedule decays over its own budget) ...
        parts.append(trial(f"s{batch}", batch, [(early - 10, 0.8), (early, 0.98)]))
        parts += confirmations(batch, [0.96, 0.96, 0.96])
    parts += [free_run("f8a", 8, [(100, 0.8), (200, 0.98)], 1)]  # ... the budget-free later
    parts += [free_run("f8b", 8, [(100, 0.8), (150, 0.98)], 2)]
    parts += [free_run("f32a", 32, [(40, 0.8), (60, 0.98)], 1)]
    m = degradation_map(table(*parts), target=0.97, tolerance=0.01, n_boot=20)
    steps = m.frontier.set_index("batch_size")
    assert set(steps["steps_measure"]) == {"budget-free"}
    # the earliest budget-free crossing, interpolated: 0.8 at 100, 0.98 at 150
    share = (0.97 - 0.8) / (0.98 - 0.8)
    assert steps.loc[8, "steps"] == pytest.approx(100 + 50 * share)
    assert steps.loc[32, "steps"] == pytest.approx(40 + 20 * share)
    assert steps.loc[8, "candidates"] == 2
    # an lr where one seed missed the target is left out where another lr reached it on all
    parts += [free_run("f32b", 32, [(20, 0.8), (30, 0.98)], 1, base_lr=0.02)]
    parts += [free_run("f32c", 32, [(20, 0.8), (40, 0.85)], 2, base_lr=0.02)]
    steps = degradation_map(table(*parts), target=0.97, tolerance=0.01, n_boot=20).frontier
    assert steps.set_index("batch_size").loc[32, "steps"] == pytest.approx(40 + 20 * share)
    # a study without budget-free runs reads every run, as before
    old = degradation_map(
        table(*[p for p in parts if p[0]["phase"] != BUDGET_FREE]), target=0.97, tolerance=0.01
    ).frontier.set_index("batch_size")
    assert set(old["steps_measure"]) == {"budget"}
    assert old.loc[8, "steps"] == pytest.approx(70 + 10 * share)


def test_a_budget_free_run_is_judged_on_its_weight_average():
    free, _ = run(FREE | {"budget_amount": 40, "warmup_in_steps": 4})
    # the same lr at every step (4 warmup steps, then constant), judged on its last weights
    plain, _ = run(
        FREE
        | {"budget_free": False, "budget_amount": 40, "warmup_fraction": 0.1}
        | {"schedule": "constant", "eval_every": 40}
    )
    assert (free[-1]["optimizer_steps"], plain[-1]["optimizer_steps"]) == (40, 40)
    assert free[-1]["lr"] == plain[-1]["lr"] and free[-1]["warmup_steps"] == 4
    assert free[-1]["val_loss"] != pytest.approx(plain[-1]["val_loss"], rel=1e-3)


def test_the_budget_free_lr_moves_past_an_end_while_the_fewest_steps_are_there():
    inf = float("inf")
    assert budget_free_next({-1: 60, 0: 40, 1: 30}) == 2
    assert budget_free_next({-1: 30, 0: 40, 1: 60}) == -2
    assert budget_free_next({-1: 60, 0: 30, 1: 40}) is None  # inside: found
    assert budget_free_next({-1: 60, 0: 40, 1: inf}) is None  # twice diverges on a seed
    assert budget_free_next({-1: inf, 0: inf, 1: inf}) is None  # none reached: censored
    assert budget_free_next({1: 30, 2: 20, 3: 10}, limit=3) is None  # at the limit (8x)
    assert budget_free_next({-1: 40, 0: 40, 1: 40}) is None  # ties: the configuration's own


def spec_of(*argv: str):
    from tuner import options, resolve

    args = options.build_parser().parse_args(["simple_cnn", "--dataset", "digits", *argv])
    options.check_options(args)
    return resolve.build_spec(args, gpus_available=False)


def test_budget_free_runs_are_on_by_default_and_off_with_the_checks_or_on_request():
    assert spec_of().budget_free_steps and spec_of().target_warmup == 0
    assert spec_of("--target-warmup", "20").target_warmup == 20
    for off in (["--no-budget-free"], ["--no-checks"], ["--smoke"]):
        assert not spec_of(*off).budget_free_steps, off
    from tuner.errors import InputError

    with pytest.raises(InputError, match="--target-warmup"):
        spec_of("--target-warmup", "-1")
    with pytest.raises(InputError, match="grid method"):
        spec_of("--method", "branch", "--no-budget-free")
