"""The baseline's longer runs started ahead of the checks that ask for them (issue 33:
`--speculate`, `search_spaces.checks.baseline_ahead`): on unlimited slots the chain of checks
ends sooner, every decision is the one the study makes without it, and what it costs is the
baseline's runs at the multiples no batch size reached."""

from __future__ import annotations

import heapq

from search_spaces import checks
from search_spaces.cell_search import FINISHED, CellSearch
from search_spaces.runs import EXTEND, JUDGE
from tests.test_cell_search import make_search


def test_baseline_ahead_doubles_past_what_is_asked_up_to_the_cap():
    assert checks.baseline_ahead({1}, 1, 8) == (2,)  # the lr check at its budget: 2x next
    assert checks.baseline_ahead({2, 1}, 1, 8) == (4,)
    assert checks.baseline_ahead({2}, 2, 8) == (4, 8)
    assert checks.baseline_ahead({4}, 2, 8) == (8,)  # 16x would pass the cap
    assert checks.baseline_ahead({8}, 1, 8) == ()
    assert checks.baseline_ahead({2}, 0, 8) == ()  # off
    assert checks.baseline_ahead((), 1, 8) == ()  # nothing asked: nothing ahead


def test_speculation_is_on_by_default_only_where_slots_would_idle():
    auto = checks.AUTO_SPECULATE
    assert checks.speculation(auto, 2) == 0
    assert checks.speculation(auto, checks.SPECULATE_SLOTS - 1) == 0
    assert checks.speculation(auto, checks.SPECULATE_SLOTS) == checks.SPECULATE_AHEAD
    assert checks.speculation(0, 64) == 0 and checks.speculation(3, 2) == 3  # as asked


# An epoch budget: batch 8 trains 6,400 steps, 512 trains 100. Batch 512 is confirmed 15 pt
# short of batch 8: half and twice its lr do not help, twice the steps gain 10 pt, the lr
# again does not, four times the steps 0.5 pt and the lr there neither: a plateau, degraded
# at 400 steps. Its check runs are short and the baseline's at the same multiples long, so
# the chain is the baseline's runs (tests/test_cell_search.py's walk, on unlimited slots).
OWN = {8: 6400, 32: 1600, 128: 400, 512: 100}
AT_512 = {100: 0.80, 200: 0.90, 400: 0.905, 800: 0.905}


def value(batch: int, steps: int, k: int) -> float:
    if batch != 512:
        return 0.95 if k == 0 else 0.93  # the others hold; the baseline's lr is right
    return AT_512[steps] - (0.02 if k else 0.0)


def confirmed(ahead: int) -> CellSearch:
    """Every cell searched at its own budget and its best confirmed (`value`)."""
    search = make_search(strata=(), trials_per_cell=1, seeds=2, max_data_multiple=8)
    search.ahead = ahead
    for i in range(4):
        s = search.suggest(f"t{i}")
        search.complete(f"t{i}", "completed", 0.9, OWN[s.cell.batch_size], OWN[s.cell.batch_size])
    return search


def run_on_unlimited_slots(
    ahead: int, resumed_with: int | None = None
) -> tuple[float, CellSearch, list, set]:
    """Every run handed out at once, each taking its steps in time (a stand-in for Tune: a run
    the search calls unneeded is stopped, as PerCellASHA does); returns when the search
    finished, the search, every run it handed out and the keys of those stopped.
    `resumed_with`: `ahead` becomes this once a run was started ahead (a resume on fewer
    slots)."""
    search = confirmed(ahead)
    running: list[tuple[float, str, object]] = []
    out: list = []
    stopped: set[str] = set()
    now = 0.0
    while True:
        if resumed_with is not None and search.ahead_levels:
            search.ahead = resumed_with
        while (s := search.suggest(f"r{len(out)}")) not in (None, FINISHED):
            steps = s.params.get("budget_steps", OWN[s.cell.batch_size])
            heapq.heappush(running, (now + steps, f"r{len(out)}", s))
            out.append(s)
        if s == FINISHED:
            return now, search, out, stopped
        for _, key, s in list(running):
            if search.unneeded(key):  # stopped at its next evaluation: here, at once
                running.remove((_, key, s))
                search.complete(key, "stopped", 0.5, 1, s.params["budget_steps"])
                stopped.add(key)
        heapq.heapify(running)
        if not running:
            continue
        now, key, s = heapq.heappop(running)
        steps = s.params.get("budget_steps", OWN[s.cell.batch_size])
        got = value(s.cell.batch_size, steps, s.params.get("lr_step", 0))
        search.complete(key, "completed", got, steps, steps)


def levels_of(runs: list, batch: int, phase: str = EXTEND) -> set[tuple[int, int]]:
    return {
        (s.params["budget_steps"], s.params["lr_step"])
        for s in runs
        if s.cell.batch_size == batch and s.phase == phase
    }


def test_the_baseline_ahead_shortens_the_chain_and_changes_no_decision():
    plain_end, plain, plain_runs, none = run_on_unlimited_slots(ahead=0)
    fast_end, fast, fast_runs, stopped = run_on_unlimited_slots(ahead=1)
    assert not none
    # the same decisions: batch 512's levels and values, the level it is judged at and the
    # baseline's it is compared with, by the same fresh seeds
    assert fast.levels(fast.cells[-1]) == plain.levels(plain.cells[-1])
    assert levels_of(fast_runs, 512) == levels_of(plain_runs, 512)
    for batch in (8, 512):
        assert levels_of(fast_runs, batch, JUDGE) == levels_of(plain_runs, batch, JUDGE)
        assert levels_of(plain_runs, batch, JUDGE) == {(4 * OWN[batch], 0)}
    plain_base, fast_base = plain.levels(plain.cells[0])[1], fast.levels(fast.cells[0])[1]
    assert {k: v for k, v in fast_base.items() if k in plain_base} == plain_base
    # what it cost: the baseline at 8x its budget, which 512 never reached (its check
    # stopped at 4x), with the check's two seeds, stopped once 512 was decided
    extra = levels_of(fast_runs, 8) - levels_of(plain_runs, 8)
    assert extra == {(8 * OWN[8], 0)} and len(fast_runs) == len(plain_runs) + 2
    assert {fast_runs[int(k[1:])].params["budget_steps"] for k in stopped} == {8 * OWN[8]}
    assert len(stopped) == 2
    # and the chain. Both start with the baseline's confirmation and lr check (6,400 steps
    # each), then 512's lr check (100). Without it the baseline's 2x starts beside 512's 2x
    # (12,800), 512's lr is tried there once that ended (200), its 4x beside the baseline's
    # 4x (25,600), then the fresh seeds at 4x (25,600). Ahead, the baseline's 2x starts with
    # 512's lr check and its 4x with 512's 2x: the chain loses the 2x and the 200.
    start = 6400 + 6400 + 100
    assert plain_end == start + 12800 + 200 + 25600 + 25600
    assert fast_end == start + 25600 + 25600


def test_a_resume_without_speculation_stops_nothing_a_check_may_still_use():
    """Started ahead (the baseline at 2x beside 512's lr check), then resumed on fewer slots
    (`ahead` 0): the run started ahead is used when 512 gets there, nothing more starts ahead,
    and nothing is stopped."""
    plain_end, plain, plain_runs, _ = run_on_unlimited_slots(ahead=0)
    end, search, runs, stopped = run_on_unlimited_slots(ahead=1, resumed_with=0)
    assert not stopped
    assert levels_of(runs, 8) == levels_of(plain_runs, 8)
    assert search.levels(search.cells[-1]) == plain.levels(plain.cells[-1])
    assert end == plain_end - 100  # the baseline's 2x started with 512's lr check
