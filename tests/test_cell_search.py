"""The per-cell search without Ray: fair shares, honest outcomes, Sobol points whatever the order,
range extension at an edge, warmup where it acts, per-optimizer lr ranges, confirmation runs,
the checks (more steps, the rule test), pickling, and the synthetic objective on which
per-batch-size tuning beats one joint TPE."""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
import shutil
import warnings
from collections import Counter

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search_spaces import checks
from search_spaces.cell_search import (
    CONFIRM,
    EDGE_TRIALS,
    EXTEND,
    FINISHED,
    JUDGE,
    RULE,
    SEARCH,
    CellSearch,
)
from search_spaces.cells import default_strata, study_cells
from search_spaces.search_points import EDGE_EVIDENCE
from search_spaces.spaces import lr_edge
from trainables.optim import scaled_lr
from trainables.workloads import find_workload

GRID = (8, 32, 128, 512)
REF = 32
optuna.logging.set_verbosity(optuna.logging.ERROR)


def get_space(name: str):
    """A built-in workload's search ranges."""
    return find_workload(name).search_space


def make_search(
    space=None,
    *,
    trials_per_cell=4,
    seeds=2,
    strata=None,
    storage=None,
    seed=0,
    rule_test=False,
    max_steps=0,
    equal_data=False,
    max_data_multiple=0.0,
):
    """A search over GRID whose trials the test completes by hand; every cell trains the
    same steps, so with `equal_data` each larger batch size also gets its runs at the
    baseline's data (off by default: the other checks' tests follow their own runs)."""
    space = space or get_space("simple_cnn")
    cells = study_cells(GRID, space, default_strata(space) if strata is None else strata)
    return CellSearch(
        rule_test=rule_test,
        max_steps=max_steps,
        max_data_multiple=max_data_multiple,
        equal_data=equal_data,
        study_name="t",
        storage=storage or optuna.storages.InMemoryStorage(),
        cells=cells,
        search_trials=trials_per_cell * len(cells),
        seeds=seeds,
        space=space,
        reference_batch=REF,
        seed=seed,
    )


def run_search_phase(search: CellSearch, score) -> list:
    """Suggest and complete every search trial, in order; returns the suggestions."""
    done = []
    for i in range(search.search_trials):
        s = search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", score(s.params), 100)
        done.append(s)
    return done


def test_every_cell_gets_its_share_in_round_robin():
    search = make_search()  # default: a cell per batch size, the rule only places the range
    cells = Counter(search.suggest(f"t{i}").cell.key for i in range(search.search_trials))
    assert cells == {"b8": 4, "b32": 4, "b128": 4, "b512": 4}
    split = make_search(strata=("rule",))
    cells = Counter(split.suggest(f"t{i}").cell.key for i in range(split.search_trials))
    assert len(cells) == 12 and set(cells.values()) == {4}  # 4 batch sizes x 3 rules


def test_outcomes_reach_optuna_honestly():
    storage = optuna.storages.InMemoryStorage()
    search = make_search(storage=storage, strata=())
    for i in range(4):
        search.suggest(f"t{i}")
    search.report("t0", 0.9, 50)
    search.complete("t0", "completed", 0.95, 100)
    search.complete("t1", "stopped", 0.5, 11)  # ASHA: its stopping result comes only here
    search.complete("t2", "diverged", 0.1, 20)
    search.complete("t3", "errored", None, None)
    found = {}
    for key in ("b8", "b32", "b128", "b512"):
        trial = optuna.load_study(study_name=f"t/{key}", storage=storage).trials[0]
        found[key] = (trial.state, trial.user_attrs["outcome"], trial.user_attrs["phase"])
    assert found == {
        "b8": (TrialState.COMPLETE, "completed", SEARCH),
        "b32": (TrialState.PRUNED, "stopped", SEARCH),
        "b128": (TrialState.PRUNED, "diverged", SEARCH),
        "b512": (TrialState.FAIL, "errored", SEARCH),
    }
    b32 = optuna.load_study(study_name="t/b32", storage=storage).trials[0]
    assert b32.intermediate_values == {11: 0.5}


def finish(search: CellSearch, keys, value: float = 0.9, steps: int = 100) -> None:
    for key in keys:
        search.complete(key, "completed", value, steps, steps)


def test_confirmations_follow_each_cells_search_with_fresh_seeds():
    search = make_search(strata=(), trials_per_cell=2, seeds=3, seed=7)
    suggestions = [search.suggest(f"t{i}") for i in range(8)]
    for i, s in enumerate(suggestions[:-1]):
        search.complete(f"t{i}", "completed", s.params["base_lr"], 100, 100)
    assert search.suggest("c0").cell.batch_size == 8  # batch 8's search is done: confirm it
    confirm = [search.suggest(f"c{i}") for i in range(1, 9)]
    assert [c.cell.batch_size for c in confirm if c] == [8, 8, 32, 32, 32, 128, 128, 128]
    assert search.suggest("w") is None  # batch 512 still searching: wait
    search.complete("t7", "completed", 0.5, 100, 100)
    last = [search.suggest(f"d{i}") for i in range(3)]
    assert {c.seed for c in last} == {8, 9, 10} and {c.phase for c in last} == {CONFIRM}
    best_512 = max(
        (s for s in suggestions if s.cell.batch_size == 512), key=lambda s: s.params["base_lr"]
    )
    assert all(c.params == best_512.params for c in last)
    assert search.suggest("x") is None  # confirmations still running: their values may call
    finish(search, [f"c{i}" for i in range(9)] + [f"d{i}" for i in range(3)])  # for checks
    settle_baseline(search, 0.5)  # its half and twice lr are worse: the baseline stays
    assert search.suggest("done") == FINISHED  # all within the tolerance: nothing to check


def test_a_cell_without_a_finished_trial_is_not_confirmed():
    search = make_search(strata=(), trials_per_cell=1, seeds=2)
    for i in range(4):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "diverged" if i == 3 else "completed", 0.9, 10)
    handed = [search.suggest(f"c{i}") for i in range(6)]
    assert [c.cell.batch_size for c in handed] == [8, 8, 32, 32, 128, 128]
    finish(search, [f"c{i}" for i in range(6)])
    settle_baseline(search, 0.5)
    assert search.suggest("x") == FINISHED


def test_sobol_points_are_the_same_whatever_order_trials_finish_in():
    def points(order):
        search = make_search(strata=(), trials_per_cell=6, seed=3)
        handed = {}
        for i in range(search.search_trials):
            s = search.suggest(f"t{i}")
            handed.setdefault(s.cell.key, []).append(s.params)
            if order == "each":  # finished at once; else none finishes before all are out
                search.complete(f"t{i}", "completed", 0.5, 100, 100)
        return handed

    assert points("each") == points("none")
    lrs = sorted(math.log(p["base_lr"]) for p in points("none")["b128"])
    low, high = (math.log(v) for v in get_space("simple_cnn").base_lr["sgd"])
    # Six scrambled Sobol points cover the range: none of its sixths is left far from a point.
    assert max(b - a for a, b in zip([low, *lrs], [*lrs, high], strict=True)) < (high - low) / 3


def test_a_best_on_the_range_edge_moves_the_range_while_the_best_follows():
    """The optimum lies 10x above the range: once 4 trials have finished, extra search trials
    try the best x3 beyond the edge, and the range grows with it."""
    search = make_search(strata=(), trials_per_cell=8, seeds=1)
    high = get_space("simple_cnn").base_lr["sgd"][1]
    handed = []
    for i in range(100):
        s = search.suggest(f"t{i}")
        if s.phase != SEARCH:
            break
        value = -abs(math.log(s.params["base_lr"] / (10 * high)))  # best: the largest lr
        search.complete(f"t{i}", "completed", value, 100, 100)
        handed.append(s)
    b8 = [s.params["base_lr"] for s in handed if s.cell.batch_size == 8]
    beyond = [lr for lr in b8 if lr > high]
    edges = [t for t in search.study(search.cells[0]).trials if t.user_attrs.get("edge")]
    assert len(edges) == EDGE_TRIALS == 3 and len(b8) == 8 + 3  # on top of its share
    steps = [t.params["base_lr"] for t in edges]  # x3 from the best each time
    assert steps == sorted(steps) and steps[-1] > 9 * high
    assert len(beyond) > 3  # later Sobol points fall in the grown range too
    assert search.ranges["b8"]["sgd"][1] == pytest.approx(steps[-1])
    assert search.best(search.cells[0]).params["base_lr"] == pytest.approx(steps[-1])


def edge_side_from_record(search: CellSearch, cell) -> str | None:
    """The edge rule as documented (`spaces.lr_edge`), read whole from Optuna's record: no
    edge trial running, at least EDGE_EVIDENCE finished search trials, the best completed
    one's lr against every finished one's and the range."""
    trials = search.study(cell).get_trials(deepcopy=False)
    searched = [t for t in trials if t.params and t.user_attrs.get("phase") == SEARCH]
    if any(t.user_attrs.get("edge") and not t.state.is_finished() for t in searched):
        return None
    searched = [t for t in searched if t.state.is_finished()]
    best = search.best(cell)
    if len(searched) < EDGE_EVIDENCE or best is None:
        return None
    low, high = search.ranges[cell.key]["sgd"]
    return lr_edge(best.params["base_lr"], [t.params["base_lr"] for t in searched], low, high)


def _side(search: CellSearch, cell, point: dict) -> str:
    return "upper" if point["base_lr"] > search.best(cell).params["base_lr"] else "lower"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_edge_rule_kept_as_trials_end_decides_as_reading_the_record_would(seed):
    """The edge rule's facts are kept as trials end (issue 33: reading every trial of a cell on
    each end grew with the study); with trials ending out of order, stopped, diverged or
    errored, and edge trials among them, every decision is the one a fresh read of Optuna's
    record gives, and so is the state after a pickle and a resume."""
    rng = random.Random(seed)
    search = make_search(strata=(), trials_per_cell=12, seeds=1, seed=seed)
    high = get_space("simple_cnn").base_lr["sgd"][1]
    running: list[tuple[str, dict]] = []
    handed = 0
    while True:
        while len(running) < 3:
            s = search.suggest(f"t{handed}")
            if s in (None, FINISHED) or s.phase != SEARCH:
                break
            running.append((f"t{handed}", s.params))
            handed += 1
        if not running:
            break
        key, params = running.pop(rng.randrange(len(running)))
        outcome = rng.choice(["completed", "completed", "stopped", "diverged", "errored"])
        value = -abs(math.log(params["base_lr"] / (5 * high))) + rng.gauss(0, 0.1)
        final = value if outcome != "errored" else None
        search.complete(key, outcome, final, 100 if outcome == "completed" else 30, 100)
        for cell in search.cells:
            kept = search._find_edge_point(cell, peek=True)
            fresh = copy.copy(search)  # its state as pickled: the facts read from the record
            fresh.attach(search._storage)
            assert fresh._find_edge_point(cell, peek=True) == kept, (cell.key, key)
            assert edge_side_from_record(search, cell) == (kept and _side(search, cell, kept))
    assert sum(search.edge_trials.values()) > 0  # the edge rule was exercised
    restored = pickle.loads(pickle.dumps(search))
    restored.attach(search._storage)
    for cell in search.cells:
        assert restored._find_edge_point(cell, peek=True) == search._find_edge_point(cell, True)


def confirmed_search(
    values: dict[int, float],
    *,
    rule_test=False,
    max_steps=0,
    seeds=2,
    equal_data=False,
    max_data_multiple=0.0,
):
    """A search whose every cell has searched (value 0.9 at 100 steps) and confirmed its best at
    `values[batch]`; returns it and the next free trial number."""
    search = make_search(
        strata=(),
        trials_per_cell=1,
        seeds=seeds,
        rule_test=rule_test,
        max_steps=max_steps,
        equal_data=equal_data,
        max_data_multiple=max_data_multiple,
    )
    for i in range(4):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.9, 100, 100)
    n = 0
    while True:
        s = search.suggest(f"c{n}")
        if not s or s == FINISHED or s.phase == RULE:
            break
        if s.phase == EXTEND and s.cell.batch_size > 8:
            break
        # The baseline's lr check (half and twice its lr) comes first; both 2 pt worse.
        value = values[8] - 0.02 if s.phase == EXTEND else values[s.cell.batch_size]
        search.complete(f"c{n}", "completed", value, 100, 100)
        n += 1
    return search, s, n


def settle_baseline(search: CellSearch, value: float) -> None:
    """Run the baseline's lr check to its end, every run at `value`."""
    for s in hand_out(search, "base"):
        assert s.phase == EXTEND and s.cell.batch_size == 8, s
    finish(search, [k for k in search.trials if k.startswith("base")], value=value)


def hand_out(search: CellSearch, prefix: str) -> list:
    """Every trial the search hands out now."""
    out = []
    while (s := search.suggest(f"{prefix}{len(out)}")) not in (None, FINISHED):
        out.append(s)
    return out


def level(s) -> tuple[int, float]:
    return s.params["budget_steps"], s.params["lr_step"]


def test_a_cell_short_of_the_baseline_tries_half_and_twice_its_lr_then_twice_the_steps():
    search, first, n = confirmed_search({8: 0.95, 32: 0.95, 128: 0.945, 512: 0.80}, max_steps=1000)
    best = search.best(search.cells[-1]).params["base_lr"]
    lr = [first, *hand_out(search, "a")]
    assert {c.phase for c in lr} == {EXTEND} and {c.cell.batch_size for c in lr} == {512}
    assert sorted((level(c), c.seed) for c in lr) == [
        ((100, -1), 1), ((100, -1), 2), ((100, 1), 1), ((100, 1), 2)
    ]  # fmt: skip
    for c in lr:
        assert c.params["base_lr"] == pytest.approx(best * 2.0 ** c.params["lr_step"])
    keys = [f"c{n}", "a0", "a1", "a2"]
    finish(search, keys[:3], value=0.78)
    assert search.suggest("w") is None  # a level waits for all its seeds
    finish(search, keys[3:], value=0.78)  # neither lr helped: twice the steps
    # ... and beside them the baseline at twice its own, same seeds: a level at 2x its budget
    # is compared with that, so it starts now, not after (issue 33)
    longer = hand_out(search, "b")
    assert sorted((c.cell.batch_size, level(c), c.seed) for c in longer) == [
        (8, (200, 0), 1), (8, (200, 0), 2), (512, (200, 0), 1), (512, (200, 0), 2)
    ]  # fmt: skip
    for i, c in enumerate(longer):  # 512 +10 pt: it helped; still 5 pt short of 95%
        value = 0.90 if c.cell.batch_size == 512 else 0.95
        search.complete(f"b{i}", "completed", value, 200, 200)
    again = hand_out(search, "d")  # the lr again there
    assert sorted(level(c) for c in again) == [(200, -1), (200, -1), (200, 1), (200, 1)]
    finish(search, [f"d{i}" for i in range(4)], value=0.88, steps=200)
    last = hand_out(search, "e")  # 4x, and the baseline at 4x beside it
    assert sorted((c.cell.batch_size, level(c)) for c in last) == [
        (8, (400, 0)), (8, (400, 0)), (512, (400, 0)), (512, (400, 0))
    ]  # fmt: skip
    for i, c in enumerate(last):  # 512 +0.5 pt: its lr there next
        value = 0.905 if c.cell.batch_size == 512 else 0.95
        search.complete(f"e{i}", "completed", value, 400, 400)
    around = hand_out(search, "f")
    assert sorted(level(c) for c in around) == [(400, -1), (400, -1), (400, 1), (400, 1)]
    finish(search, [f"f{i}" for i in range(4)], value=0.9, steps=400)  # a plateau: degraded
    # judged by fresh seeds (3, 4) at the level the checks chose, both sides (issue 32)
    fresh = hand_out(search, "j")
    assert {c.phase for c in fresh} == {JUDGE}
    assert sorted((c.cell.batch_size, level(c), c.seed) for c in fresh) == [
        (8, (400, 0), 3), (8, (400, 0), 4), (512, (400, 0), 3), (512, (400, 0), 4)
    ]  # fmt: skip
    assert search.suggest("w") is None  # the fresh runs are going
    finish(search, ["j0", "j1", "j2", "j3"], value=0.9, steps=400)
    assert search.suggest("done") == FINISHED
    own, results = search.levels(search.cells[-1])
    assert own == 100 and results[(400, 0)] == pytest.approx(0.905)
    assert search.levels(search.cells[0])[1][(400, 0)] == pytest.approx(0.95)


def test_a_better_lr_moves_the_check_there():
    search, first, n = confirmed_search({8: 0.95, 32: 0.95, 128: 0.95, 512: 0.80})
    runs = [first, *hand_out(search, "a")]
    for key, c in zip([f"c{n}", "a0", "a1", "a2"], runs, strict=True):
        value = 0.95 if c.params["lr_step"] == -1 else 0.7  # half the lr saves it
        search.complete(key, "completed", value, 100, 100)
    # holds at (100 steps, lr x0.5): measured again there with fresh seeds; the baseline at
    # its confirmation (fresh seeds already) is not run again
    fresh = hand_out(search, "j")
    assert sorted((c.cell.batch_size, level(c), c.seed, c.phase) for c in fresh) == [
        (512, (100, -1), 3, JUDGE), (512, (100, -1), 4, JUDGE)
    ]  # fmt: skip
    finish(search, ["j0", "j1"], value=0.95)
    assert search.suggest("done") == FINISHED


def test_more_steps_stop_at_the_cap():
    search, first, n = confirmed_search({8: 0.95, 32: 0.95, 128: 0.95, 512: 0.80}, max_steps=300)
    finish(search, [f"c{n}", *(f"a{i}" for i in range(len(hand_out(search, "a"))))], 0.78)
    longer = hand_out(search, "b")  # with the baseline at 2x beside it
    assert sorted((c.cell.batch_size, level(c)) for c in longer) == [
        (8, (200, 0)), (8, (200, 0)), (512, (200, 0)), (512, (200, 0))
    ]  # fmt: skip
    for i, c in enumerate(longer):
        value = 0.9 if c.cell.batch_size == 512 else 0.95
        search.complete(f"b{i}", "completed", value, 200, 200)
    assert len(hand_out(search, "d")) == 4  # the lr at 200 steps
    finish(search, [f"d{i}" for i in range(4)], value=0.85, steps=200)
    fresh = hand_out(search, "j")  # 400 would pass --max-steps 300: judged at 200, fresh seeds
    assert sorted((c.cell.batch_size, level(c), c.seed) for c in fresh) == [
        (8, (200, 0), 3), (8, (200, 0), 4), (512, (200, 0), 3), (512, (200, 0), 4)
    ]  # fmt: skip
    finish(search, ["j0", "j1", "j2", "j3"], value=0.9, steps=200)
    assert search.suggest("done") == FINISHED
    own, results = search.levels(search.cells[-1])
    check = checks.budget_check(0.95, results, own, 0.01, 300)
    assert check.state == checks.CAPPED and check.center == (200, 0)


def test_the_baseline_moves_to_a_better_lr_before_anything_is_judged_against_it():
    search = make_search(strata=(), trials_per_cell=1, seeds=1)
    for i in range(4):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.9, 100, 100)
    confirm = hand_out(search, "c")
    finish(search, [f"c{i}" for i in range(4)], value=0.9)
    first = hand_out(search, "a")  # only the baseline's lr: the rest wait for it
    assert sorted(level(c) for c in first) == [(100, -1), (100, 1)]
    assert {c.cell.batch_size for c in first} == {8}
    search.complete("a0", "completed", 0.95 if first[0].params["lr_step"] == 1 else 0.8, 100)
    search.complete("a1", "completed", 0.95 if first[1].params["lr_step"] == 1 else 0.8, 100)
    further = hand_out(search, "b")  # twice the lr won by 5 pt: on to four times
    assert [level(c) for c in further] == [(100, 2)]
    finish(search, ["b0"], value=0.7)
    judged = hand_out(search, "d")  # the baseline is now 0.95: 0.9 elsewhere falls short
    assert {c.cell.batch_size for c in judged} == {32, 128, 512} and len(confirm) == 4


def test_every_batch_size_that_saw_other_data_runs_again_at_the_baselines_data():
    """An equal-step study (100 steps at every batch size): once the baseline's lr is settled,
    each larger batch size's confirmed configuration runs again with the confirmation seeds for
    the baseline's 800 examples (25, 6 and 2 steps), beside the checks of a short one (512),
    which do not wait for them."""
    search, first, n = confirmed_search(
        {8: 0.95, 32: 0.95, 128: 0.95, 512: 0.80}, max_steps=1000, equal_data=True
    )
    runs = [first, *hand_out(search, "a")]
    assert {c.phase for c in runs} == {EXTEND}
    equal = sorted((c.cell.batch_size, level(c), c.seed) for c in runs if level(c)[0] < 100)
    assert equal == [
        (b, (s, 0), seed) for b, s in ((32, 25), (128, 6), (512, 2)) for seed in (1, 2)
    ]
    for c in runs:
        best = search.best(next(x for x in search.cells if x.batch_size == c.cell.batch_size))
        assert c.params["base_lr"] == pytest.approx(best.params["base_lr"] * 2.0 ** level(c)[1])
    lr = [c for c in runs if level(c)[0] == 100]
    assert {c.cell.batch_size for c in lr} == {512} and len(lr) == 4  # its lr check, at once
    keys = [f"c{n}", *(f"a{i}" for i in range(len(runs) - 1))]
    for key, c in zip(keys, runs, strict=True):
        if level(c)[0] == 100:
            search.complete(key, "completed", 0.78, 100, 100)
    longer = hand_out(search, "b")  # not waiting; the baseline at 2x beside it
    assert sorted((c.cell.batch_size, level(c)) for c in longer) == [
        (8, (200, 0)), (8, (200, 0)), (512, (200, 0)), (512, (200, 0))
    ]  # fmt: skip
    for key, c in zip(keys, runs, strict=True):
        if level(c)[0] < 100:
            search.complete(key, "completed", 0.5, level(c)[0], level(c)[0])
    for i, c in enumerate(longer):
        value = 0.79 if c.cell.batch_size == 512 else 0.95
        search.complete(f"b{i}", "completed", value, 200, 200)
    then = hand_out(search, "d")  # its lr at 200 steps; at equal data, the baseline's lr search
    assert sorted(level(c) for c in then if c.cell.batch_size == 512 and level(c)[0] == 200) == [
        (200, -1),
        (200, -1),
        (200, 1),
        (200, 1),
    ]
    equal_lr = sorted((c.cell.batch_size, level(c)) for c in then if level(c)[0] < 100)
    assert equal_lr == sorted(
        (b, (s, k)) for b, s in ((32, 25), (128, 6), (512, 2)) for k in (-1, 1) for _ in (1, 2)
    )
    for i, c in enumerate(then):  # at equal data twice the lr gains 10 pt, half loses
        value = 0.79 if level(c)[0] == 200 else 0.6 if level(c)[1] == 1 else 0.4
        search.complete(f"d{i}", "completed", value, level(c)[0], level(c)[0])
    further = hand_out(search, "e")  # so four times the lr, at equal data only
    assert sorted((c.cell.batch_size, level(c)) for c in further) == sorted(
        (b, (s, 2)) for b, s in ((32, 25), (128, 6), (512, 2)) for _ in (1, 2)
    )
    for i, c in enumerate(further):
        search.complete(f"e{i}", "completed", 0.55, level(c)[0], level(c)[0])
    own, results = search.levels(search.cells[-1])
    assert own == 100 and results[(2, 0)] == pytest.approx(0.5)
    assert checks.baseline_check(results, 2, 0.01) == ((2, 1), ())  # settled at twice the lr
    # the lr it chose, again with fresh seeds: its value is not the one that chose it
    again = hand_out(search, "f")
    assert sorted((c.cell.batch_size, level(c), c.seed, c.phase) for c in again) == sorted(
        (b, (s, 1), seed, JUDGE) for b, s in ((32, 25), (128, 6), (512, 2)) for seed in (3, 4)
    )
    finish(search, [f"f{i}" for i in range(len(again))], value=0.58)
    assert search.suggest("done") == FINISHED


def test_the_rule_test_runs_the_baselines_best_moved_by_each_rule():
    search, first, n = confirmed_search({8: 0.95, 32: 0.95, 128: 0.95, 512: 0.95}, rule_test=True)
    runs = [first]
    while (s := search.suggest(f"r{len(runs)}")) not in (None, FINISHED):
        runs.append(s)
    rules = [r for r in runs if r.phase == RULE]
    assert len(rules) == 3 * 3 * 2  # rules x batch sizes above the baseline x seeds
    base = search.best(search.cells[0])
    base_peak = scaled_lr(base.params["base_lr"], "sqrt", 8, REF)
    for r in rules:
        factor = {
            "none": 1,
            "sqrt": math.sqrt(r.cell.batch_size / 8),
            "linear": r.cell.batch_size / 8,
        }
        peak = scaled_lr(r.params["base_lr"], r.params["scaling_rule"], r.cell.batch_size, REF)
        assert peak == pytest.approx(base_peak * factor[r.params["scaling_rule"]])
    assert search.suggest("w") is None  # the rule test is running
    for i in range(len(runs)):
        search.complete(f"r{i}" if i else f"c{n}", "completed", 0.95, 100, 100)
    assert search.suggest("done") == FINISHED


@pytest.mark.parametrize(
    "batch, rule", [(8, "linear"), (32, "linear"), (128, "linear"), (512, "none")]
)
def test_warmup_is_searched_at_every_batch_size_in_the_same_range(batch, rule):
    """One protocol at every batch size (issue 32): the baseline (8 here, below the reference
    batch 32) and a batch size under rule `none` search the warmup the larger ones do."""
    space = get_space("simple_cnn").restricted(rules=(rule,))
    search = make_search(space, strata=())
    suggestion = next(
        s for s in (search.suggest(f"t{i}") for i in range(4)) if s.cell.batch_size == batch
    )
    trial = search.study(suggestion.cell).trials[0]
    assert "warmup_fraction" in trial.params
    low, high = space.warmup_fraction
    assert low <= suggestion.params["warmup_fraction"] <= high and high > 0
    assert trial.distributions["warmup_fraction"].low == low
    assert trial.distributions["warmup_fraction"].high == high


def test_lr_ranges_are_per_optimizer():
    space = get_space("resnet50")
    search = make_search(space, trials_per_cell=3)
    by_optimizer = {"sgd": [], "lars": []}
    for i in range(search.search_trials):
        s = search.suggest(f"t{i}")
        by_optimizer[s.params["optimizer"]].append(s.params["base_lr"])
    for name, values in by_optimizer.items():
        low, high = space.base_lr[name]
        assert values and all(low <= v <= high for v in values), name
    assert min(by_optimizer["lars"]) > max(by_optimizer["sgd"]) / 10  # LARS is not SGD


def test_a_search_pickles_without_its_storage_and_goes_on_after_attach(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    search = make_search(storage=optuna.storages.RDBStorage(url), strata=())
    for i in range(3):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.5, 10)
    search.suggest("t3")  # running when the state is saved
    copy = pickle.loads(pickle.dumps(search))
    assert copy._storage is None and copy._studies == {}
    copy.attach(optuna.storages.RDBStorage(url))
    copy.complete("t3", "completed", 0.9, 10)
    assert copy.suggest("t4").cell.batch_size == 8  # the round robin goes on
    study = optuna.load_study(study_name="t/b512", storage=url)
    assert study.trials[0].value == 0.9


def hand_out_everything(search: CellSearch, start: int = 0) -> list[tuple[str, int, str]]:
    """Suggest and complete trials until the search says it is finished: (cell, seed, phase)."""
    handed, i = [], start
    while (s := search.suggest(f"t{i}")) not in (FINISHED, None):
        search.complete(f"t{i}", "completed", 0.5 + 0.01 * i, 10)
        handed.append((s.cell.key, s.seed, s.phase))
        i += 1
    return handed


@pytest.mark.parametrize("saved_after", [2, 9, 14])
def test_a_state_saved_before_the_database_takes_in_what_optuna_recorded(tmp_path, saved_after):
    """A resumed search whose state is older than its database (an object store holding the
    two from different moments) learns every trial Optuna recorded: none is asked for twice,
    shares and confirmations come out as in a search that was never interrupted."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    search = make_search(storage=optuna.storages.RDBStorage(url), strata=(), trials_per_cell=2)
    uninterrupted = make_search(strata=(), trials_per_cell=2)
    expected = hand_out_everything(uninterrupted)
    saved = None
    for i, _ in enumerate(expected):
        if i == saved_after:
            saved = pickle.dumps(search)  # the state at this moment; Optuna goes on
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.5 + 0.01 * i, 10)
        if i == saved_after + 1:
            break
    restored = pickle.loads(saved)
    restored.attach(optuna.storages.RDBStorage(url))
    assert restored.reconcile() == 2  # the two trials recorded after the state was saved
    handed = [(c, s, p) for c, s, p in expected[: saved_after + 2]]
    handed += hand_out_everything(restored, start=saved_after + 2)
    assert handed == expected
    tune_ids = [
        t.user_attrs["tune_trial_id"]
        for name in optuna.get_all_study_names(url)
        for t in optuna.load_study(study_name=name, storage=url).trials
        if "tune_trial_id" in t.user_attrs
    ]
    assert sorted(tune_ids) == sorted(f"t{i}" for i in range(len(expected)))


def optuna_record(search: CellSearch) -> list[tuple]:
    """Every Optuna trial of a search: study, number, state, phase, seed, parameters."""
    rows = []
    for study in [*(search.study(c) for c in search.cells), search.checks_study()]:
        for t in study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            params = attrs.get("run_params", t.params)
            rows.append((study.study_name, t.number, t.state.name, attrs.get("phase"),
                         attrs.get("seed"), json.dumps(params, sort_keys=True)))  # fmt: skip
    return sorted(rows)


@pytest.mark.parametrize(
    "handed", [5, 9, 17], ids=["search-trial", "confirmation", "rule-test-run"]
)
@pytest.mark.parametrize("saved", ["before", "after"])
def test_a_trial_tune_never_started_neither_blocks_the_search_nor_is_lost(tmp_path, handed, saved):
    """Killed just after trial `handed` was handed out and before Tune saved it: whether the
    searcher's saved state is from before that (Optuna alone knows the trial) or after (the
    state knows it, Tune does not), the resumed search hands its run out again, which adopts
    the lost Optuna record (same number, run again): the search ends with every share,
    confirmation and check, and Optuna's record is an uninterrupted search's, trial for trial
    (none left running or failed)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    kwargs = dict(strata=(), trials_per_cell=2, rule_test=True)
    search = make_search(storage=optuna.storages.RDBStorage(url), **kwargs)
    uninterrupted = make_search(**kwargs)
    expected = hand_out_everything(uninterrupted)
    for i in range(handed):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.5 + 0.01 * i, 10)
    before = pickle.dumps(search)
    lost = search.suggest(f"t{handed}")  # running in Optuna; Tune's state never got it
    assert lost.phase == expected[handed][2]
    restored = pickle.loads(before if saved == "before" else pickle.dumps(search))
    restored.attach(optuna.storages.RDBStorage(url))
    known = {f"t{i}" for i in range(handed)}
    assert restored.reconcile(known) == (0 if saved == "before" else 1)
    again = hand_out_everything(restored, start=handed + 1)
    assert expected[:handed] + again == expected
    assert optuna_record(restored) == optuna_record(uninterrupted)
    adopted = restored.record_of(f"t{handed + 1}")
    assert adopted == (f"t/{'checks' if lost.phase == 'rule' else lost.cell.key}", lost.number)


def test_a_trial_that_ended_after_the_state_was_saved_is_finished_on_resume(tmp_path):
    """Saved while trial t0 ran; Optuna then recorded its end; Tune's older state still has it
    running. The resume takes its end from Optuna: the trial is finished (its down time is not
    written to a finished record, which raised UpdateFinishedTrialError and lost the resume),
    and its cell's search goes on as an uninterrupted one does."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    search = make_search(storage=optuna.storages.RDBStorage(url), strata=(), trials_per_cell=2)
    expected = hand_out_everything(make_search(strata=(), trials_per_cell=2))
    search.suggest("t0")
    saved = pickle.dumps(search)  # t0 running
    search.complete("t0", "completed", 0.5, 10)
    restored = pickle.loads(saved)
    restored.attach(optuna.storages.RDBStorage(url))
    assert restored.reconcile({"t0": None}) == 1
    restored.add_downtime("t0", 1.0, 2.0)  # what the searcher does for Tune's running trials
    assert restored.running == 0
    assert expected[:1] + hand_out_everything(restored, start=1) == expected


# --- the synthetic objective ------------------------------------------------------------------


def lr_optimum(batch: int) -> float:
    """Linear growth up to a knee at batch 128, then flat (Goyal et al.; McCandlish et al.)."""
    return 0.08 * min(batch, 128) / 32


def objective(batch: int, lr: float, weight_decay: float, warmup: float, rng) -> float:
    """A bowl in log lr around the batch size's optimum; raw accuracy falls with batch size,
    as under an epoch budget, so one sampler's 'good' trials are mostly small-batch ones."""
    peak = 0.98 - 0.01 * math.log2(batch / 8)
    bowl = 0.03 * math.log(lr / lr_optimum(batch)) ** 2
    rest = 0.005 * math.log10(weight_decay / 1e-4) ** 2 + 0.02 * (warmup - 0.05) ** 2
    return peak - bowl - rest + rng.normal(0, 0.003)


def best_lr_errors(results: list[tuple[int, float, float]]) -> dict[int, float]:
    """Per batch size: |log(best trial's lr / optimum)|."""
    errors = {}
    for batch in GRID:
        _, lr, _ = max((r for r in results if r[0] == batch), key=lambda r: r[2])
        errors[batch] = abs(math.log(lr / lr_optimum(batch)))
    return errors


def per_cell_search(seed: int, space) -> list[tuple[int, float, float]]:
    from tuner.options import MIN_TRIALS_PER_CELL, TRIALS_PER_BATCH

    cells = study_cells(GRID, space, default_strata(space))
    per_cell = max(MIN_TRIALS_PER_CELL, math.ceil(TRIALS_PER_BATCH * len(GRID) / len(cells)))
    search = make_search(space, trials_per_cell=per_cell, seeds=0, seed=seed)
    rng, results = np.random.default_rng(seed), []
    for i in range(10 * search.search_trials):  # range extensions come on top
        s = search.suggest(f"t{i}")
        if s == FINISHED or s is None or s.phase != SEARCH:
            break
        p = s.params
        lr = scaled_lr(p["base_lr"], p["scaling_rule"], p["batch_size"], REF)
        value = objective(p["batch_size"], lr, p["weight_decay"], p["warmup_fraction"], rng)
        search.complete(f"t{i}", "completed", value, 1)
        results.append((p["batch_size"], lr, value))
    return results


def joint_tpe_search(seed: int, space, total: int) -> list[tuple[int, float, float]]:
    """The previous search: one multivariate TPE over every batch size, the batch size pinned
    round robin with enqueue_trial, everything else drawn from one joint candidate."""
    sampler = optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=max(2, min(10, total // 3))
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng, results = np.random.default_rng(seed), []
    for i in range(total):
        batch = GRID[i % len(GRID)]
        study.enqueue_trial({"batch_size": batch})
        t = study.ask()
        t.suggest_categorical("batch_size", list(GRID))
        rule = t.suggest_categorical("scaling_rule", list(space.scaling_rules))
        base = t.suggest_float("base_lr", *space.base_lr["sgd"], log=True)
        weight_decay = t.suggest_float("weight_decay", *space.weight_decay, log=True)
        warmup = t.suggest_float("warmup_fraction", *space.warmup_fraction)
        lr = scaled_lr(base, rule, batch, REF)
        value = objective(batch, lr, weight_decay, warmup, rng)
        study.tell(t, value)
        results.append((batch, lr, value))
    return results


def test_per_batch_size_tuning_finds_each_batch_sizes_own_lr_and_joint_tpe_does_not():
    """With the default trials per batch size (8), every batch size's best trial lands within a
    factor of 2 of its own optimum in at least 90% of 20 seeded searches; the joint TPE, given
    the same number of trials, manages measurably less, and errs most at the largest batch."""
    from tuner.options import TRIALS_PER_BATCH

    space = get_space("simple_cnn").restricted(rules=("linear",))
    seeds = range(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        ours = [best_lr_errors(per_cell_search(s, space)) for s in seeds]
        joint = [
            best_lr_errors(joint_tpe_search(s, space, TRIALS_PER_BATCH * len(GRID))) for s in seeds
        ]

    def all_within_2x(errors):
        return np.mean([all(e <= math.log(2) for e in run.values()) for run in errors])

    assert all_within_2x(ours) >= 0.9
    assert all_within_2x(joint) <= all_within_2x(ours) - 0.1
    largest = GRID[-1]
    assert np.mean([run[largest] for run in joint]) > np.mean([run[largest] for run in ours])


def test_without_checks_a_short_cell_is_left_as_confirmed():
    search = make_search(strata=(), trials_per_cell=1, seeds=1)
    search.run_checks = False  # --no-checks
    for i in range(4):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.9, 100, 100)
    handed = hand_out(search, "c")
    assert [c.phase for c in handed] == [CONFIRM] * 4
    finish(search, [f"c{i}" for i in range(4)], value=0.5)
    assert search.suggest("done") == FINISHED


def test_smoke_and_no_checks_turn_the_checks_off():
    from tuner.options import build_parser
    from tuner.resolve import build_spec

    def spec(*extra):
        args = build_parser("").parse_args(["simple_cnn", "--storage", "/tmp/x", *extra])
        return build_spec(args, gpus_available=False)

    assert (spec().checks, spec().rule_test) == (True, True)
    assert (spec("--smoke").checks, spec("--smoke").rule_test) == (False, False)
    assert (spec("--no-checks").checks, spec("--no-rule-test").rule_test) == (False, False)
    assert spec("--no-rule-test").checks is True


@pytest.mark.parametrize("order", ["database-older", "tune-newest"])
def test_a_state_newer_than_its_database_loses_nothing_and_waits_for_nothing(tmp_path, order):
    """The object store's three records from three moments, the other way round: the
    database's snapshot is older than the searcher's state (a trial the state handed out and
    saw finish is open or absent in Optuna), and Tune's state is as new as the searcher's or
    newer (a trial neither of the others knows). Every trial Tune ran is recorded once, with
    its value, and the search ends as an uninterrupted one (seen: a resumed study waiting
    forever for a trial the state had seen finish and Optuna never heard the end of)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    search = make_search(storage=optuna.storages.RDBStorage(url), strata=(), trials_per_cell=2)
    expected = hand_out_everything(make_search(strata=(), trials_per_cell=2))
    configs: dict[str, dict] = {}
    db_at, state_at = 6, 9
    tune_at = state_at if order == "database-older" else state_at + 1
    for i in range(tune_at + 1):
        s = search.suggest(f"t{i}")
        configs[f"t{i}"] = {"cell": s.cell.key, "phase": s.phase, "seed": s.seed, **s.params}
        if i == db_at:  # the snapshot: trial 6 handed out, not finished
            shutil.copy(tmp_path / "o.db", tmp_path / "snapshot.db")
        search.complete(f"t{i}", "completed", 0.5 + 0.01 * i, 10)
        if i == state_at:
            state = pickle.dumps(search)
    restored = pickle.loads(state)
    restored.attach(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'snapshot.db'}"))
    assert restored.reconcile(configs) == tune_at - db_at + 1
    for i in range(tune_at + 1):  # Tune's state has them all ended: the searcher tells them
        restored.complete(f"t{i}", "completed", 0.5 + 0.01 * i, 10)
    handed = expected[: tune_at + 1] + hand_out_everything(restored, start=tune_at + 1)
    assert handed == expected
    trials = [
        t
        for name in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'snapshot.db'}")
        for t in optuna.load_study(
            study_name=name, storage=f"sqlite:///{tmp_path / 'snapshot.db'}"
        ).trials
    ]
    ids = sorted(t.user_attrs["tune_trial_id"] for t in trials)
    assert ids == sorted(f"t{i}" for i in range(len(expected)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    values = {t.user_attrs["tune_trial_id"]: t.value for t in trials}
    assert values["t7"] == pytest.approx(0.57) and values["t6"] == pytest.approx(0.56)


def test_momentum_and_beta2_are_searched_where_the_space_asks_and_kept_by_later_runs():
    """A space with momentum and beta2 ranges (issue 32, item 5): every search point draws the
    momentum (beta1 for AdamW) and, for AdamW only, beta2, inside their ranges, as 1 - value on
    a log scale; the confirmations and the rule test run the best's own values."""
    from search_spaces.spaces import SearchSpace

    space = SearchSpace(
        base_lr={"sgd": (1e-3, 1.0), "adamw": (1e-4, 3e-2)},
        weight_decay=(1e-6, 1e-2),
        warmup_fraction=(0.0, 0.2),
        scaling_rules=("sqrt",),
        optimizers=("sgd", "adamw"),
        momentum=(0.8, 0.99),
        beta2=(0.9, 0.999),
    )
    assert SearchSpace.from_ranges(space.ranges()) == space
    search = make_search(space, trials_per_cell=4, seeds=2, rule_test=True)
    # the best of each cell: the momentum nearest 0.95
    done = run_search_phase(search, lambda p: 1 - abs(p["momentum"] - 0.95))
    for s in done:
        assert 0.8 <= s.params["momentum"] <= 0.99
        if s.params["optimizer"] == "adamw":
            assert 0.9 <= s.params["beta2"] <= 0.999
        else:
            assert "beta2" not in s.params
    for cell in search.cells:
        for trial in search.study(cell).trials:
            gap = trial.distributions["one_minus_momentum"]
            assert (gap.low, gap.high, gap.log) == (pytest.approx(0.01), pytest.approx(0.2), True)
            assert trial.params["one_minus_momentum"] == pytest.approx(
                1 - search._params_of(cell, trial)["momentum"]
            )
    momenta = sorted(s.params["momentum"] for s in done)
    assert len(set(momenta)) > len(momenta) / 2 and momenta[0] < 0.9 < 0.95 < momenta[-1]
    confirmed = []
    while (c := search.suggest(f"c{len(confirmed)}")) not in (None, FINISHED):
        confirmed.append(c)  # edge trials of cells whose best sits on an lr edge, confirmations
    confirmed = [c for c in confirmed if c.phase == CONFIRM]
    assert confirmed
    for c in confirmed:
        best = search._params_of(c.cell, search.best(c.cell))
        assert c.params["momentum"] == best["momentum"]
        assert c.params.get("beta2") == best.get("beta2")
    base = search._params_of(search.cells[0], search.best(search.cells[0]))
    moved = checks.rule_test_params(base, 8, 128, "linear", REF)
    assert (moved["momentum"], moved.get("beta2")) == (base["momentum"], base.get("beta2"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": (0.9, 1.0)}, "momentum range must be LOW < HIGH inside"),
        ({"momentum": (0.99, 0.9)}, "momentum range must be LOW < HIGH inside"),
        ({"beta2": (0.9, 0.999)}, "a beta2 range is searched by adamw, lamb only"),
    ],
)
def test_a_momentum_or_beta2_range_that_cannot_be_searched_is_refused(kwargs, message):
    from search_spaces.spaces import SearchSpace

    with pytest.raises(ValueError, match=message):
        SearchSpace(
            base_lr={"sgd": (1e-3, 1.0)},
            weight_decay=(1e-6, 1e-2),
            warmup_fraction=(0.0, 0.2),
            **kwargs,
        )


@pytest.mark.parametrize("spread", [0.001, 0.02])
def test_a_doubling_is_a_plateau_only_where_its_gain_is_shown_within_the_tolerance(spread):
    """Batch 512 is 15 pt short and half or twice its lr do not help; twice the steps gain
    0.5 pt on the mean, within the 1 pt tolerance. With the two seeds agreeing (0.55 and
    0.45 pt) the gain's 95% bound (0.5 + 6.31 x 0.05 = 0.82 pt) is within it too: a plateau,
    whose lr is checked there next. With them far apart (+1.5 and -0.5 pt) nothing is shown:
    the steps are still improving, and 512 goes on to 4x once its lr at 2x is checked."""
    search, first, n = confirmed_search({8: 0.95, 32: 0.95, 128: 0.95, 512: 0.80}, max_steps=1000)
    finish(search, [f"c{n}", *(f"a{i}" for i in range(len(hand_out(search, "a"))))], 0.78)
    longer = hand_out(search, "b")  # 512 at 2x, the baseline at 2x beside it
    for i, c in enumerate(longer):  # 512's seeds 1 and 2: +0.5 pt -/+ spread/2
        value = 0.805 + (spread / 2 if c.seed == 1 else -spread / 2)
        search.complete(f"b{i}", "completed", value if c.cell.batch_size == 512 else 0.95, 200)
    around = hand_out(search, "d")  # either way its lr at 2x next (a plateau's, or its own)
    assert sorted((c.cell.batch_size, level(c)) for c in around) == [
        (512, (200, -1)), (512, (200, -1)), (512, (200, 1)), (512, (200, 1))
    ]  # fmt: skip
    finish(search, [f"d{i}" for i in range(4)], value=0.78, steps=200)
    following = hand_out(search, "e")
    if spread < 0.01:  # a plateau shown: degraded at 2x, judged there by fresh seeds
        assert {c.phase for c in following} == {JUDGE}
        assert {level(c) for c in following} == {(200, 0)}
    else:  # nothing shown: still improving, on to 4x (the baseline at 4x beside it)
        assert sorted((c.cell.batch_size, level(c)) for c in following) == [
            (8, (400, 0)), (8, (400, 0)), (512, (400, 0)), (512, (400, 0))
        ]  # fmt: skip
    seeds = search.level_seeds(search.cells[-1])
    assert seeds[(200, 0)] == {
        1: pytest.approx(0.805 + spread / 2),
        2: pytest.approx(0.805 - spread / 2),
    }


def test_more_steps_stop_at_a_cap_stated_in_the_baselines_examples():
    """32x batch 8's 100 steps: batch 128 may double to 200 steps (25,600 examples), batch 512
    not at all (its own 100 steps are 64x already): only its lr is checked."""
    search, first, n = confirmed_search(
        {8: 0.95, 32: 0.95, 128: 0.80, 512: 0.80}, max_data_multiple=32
    )
    lr_round = [first, *hand_out(search, "a")]
    assert sorted((c.cell.batch_size, level(c)) for c in lr_round) == sorted(
        (b, (100, k)) for b in (128, 512) for k in (-1, 1) for _ in range(2)
    )
    finish(search, [f"c{n}", *(f"a{i}" for i in range(len(lr_round) - 1))], 0.78)
    longer = hand_out(search, "b")  # with the baseline at 2x beside it
    assert sorted((c.cell.batch_size, level(c)) for c in longer) == [
        (8, (200, 0)), (8, (200, 0)), (128, (200, 0)), (128, (200, 0))
    ]  # fmt: skip
    assert search.step_cap(512, (100, 8)) == 50 and search.step_cap(128, (100, 8)) == 200


def test_a_diverged_confirmation_counts_at_its_last_value_in_the_checks():
    """Issue 32: a diverged run is a result. The searcher's checks value it as the report does
    (at its last evaluation), so a batch size with a diverged seed is short of the baseline and
    gets its lr check; leaving the run out had called it within the tolerance."""
    search = make_search(strata=(), trials_per_cell=1, seeds=2)
    for i in range(4):
        search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.95, 100, 100)
    confirm = hand_out(search, "c")
    assert {s.phase for s in confirm} == {CONFIRM} and len(confirm) == 8
    for i, s in enumerate(confirm):
        if s.cell.batch_size == 32 and s.seed == 2:
            search.report(f"c{i}", 0.6, 20)
            search.complete(f"c{i}", "diverged", 0.1, 40, 100)
        else:
            search.complete(f"c{i}", "completed", 0.95, 100, 100)
    settle_baseline(search, 0.5)
    checked = hand_out(search, "x")
    assert {(s.cell.batch_size, level(s)) for s in checked} == {(32, (100, -1)), (32, (100, 1))}
