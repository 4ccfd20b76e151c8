"""A study as a graph of jobs, and its wall time on a number of slots (issue 33, item 5).

Plain Python, no Ray. `study_jobs` declares the jobs a grid study plans and the results each
waits for, as the searcher hands them out (`search_spaces.cell_search`, `later_phases`): every
search trial at once; a cell's confirmations once its search has ended; the baseline's lr
check once it is confirmed; each other cell's equal-data runs once it is confirmed and the
baseline's lr is settled; the rule test once the baseline's search has ended; each batch size's
budget-free runs once its cells' searches have ended (priced at their bound). The checks a
batch size short of the baseline gets (more steps, other lrs) are adaptive and left out:
`tuner.dry_run` prices them per round. `simulate` schedules the jobs on `slots` (one job per
slot, the longest remaining chain first, as a list scheduler does) and returns the wall time,
beside the critical path (the longest chain of jobs one after another): no number of slots
finishes sooner than that.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from search_spaces.checks import (
    FREE_BUDGET_MULTIPLE,
    FREE_LR_START,
    check_rounds,
    equal_data_run,
)


@dataclass(frozen=True)
class Job:
    """One trial: its seconds on a slot, and the jobs whose results it needs."""

    name: str
    seconds: float
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    wall_s: float  # the simulated wall time on the slots
    critical_path_s: float  # the longest chain of jobs that run one after another
    work_s: float  # every job's seconds together
    slots: int

    @property
    def utilisation(self) -> float:
        return self.work_s / (self.slots * self.wall_s) if self.wall_s > 0 else math.nan


def chain_lengths(jobs: list[Job]) -> dict[str, float]:
    """Each job's seconds plus the longest chain of jobs that wait for it (its priority)."""
    waiting: dict[str, list[str]] = {j.name: [] for j in jobs}
    for job in jobs:
        for need in job.after:
            waiting[need].append(job.name)
    seconds = {j.name: j.seconds for j in jobs}
    memo: dict[str, float] = {}
    for job in reversed(topological(jobs)):
        memo[job.name] = seconds[job.name] + max((memo[w] for w in waiting[job.name]), default=0)
    return memo


def topological(jobs: list[Job]) -> list[Job]:
    """The jobs in an order where each comes after those it waits for."""
    by_name = {j.name: j for j in jobs}
    done: set[str] = set()
    out: list[Job] = []

    def visit(job: Job) -> None:
        stack = [(job, iter(job.after))]
        while stack:
            current, needs = stack[-1]
            for need in needs:
                if need not in done:
                    stack.append((by_name[need], iter(by_name[need].after)))
                    break
            else:
                stack.pop()
                if current.name not in done:
                    done.add(current.name)
                    out.append(current)

    for job in jobs:
        if job.name not in done:
            visit(job)
    return out


def simulate(jobs: list[Job], slots: int) -> Schedule:
    """List scheduling on `slots`: whenever a slot is free, the ready job with the longest
    chain behind it starts."""
    priority = chain_lengths(jobs)
    left = {j.name: len(j.after) for j in jobs}
    waiting: dict[str, list[Job]] = {j.name: [] for j in jobs}
    for job in jobs:
        for need in job.after:
            waiting[need].append(job)
    ready = [(-priority[j.name], j.name, j) for j in jobs if not j.after]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []  # (ends at, name)
    now, free = 0.0, max(1, slots)
    while ready or running:
        while ready and free:
            _, _, job = heapq.heappop(ready)
            heapq.heappush(running, (now + job.seconds, job.name))
            free -= 1
        now, name = heapq.heappop(running)
        free += 1
        for job in waiting[name]:
            left[job.name] -= 1
            if left[job.name] == 0:
                heapq.heappush(ready, (-priority[job.name], job.name, job))
    roots = [j.name for j in jobs if not j.after]
    return Schedule(
        wall_s=now,
        critical_path_s=max((priority[r] for r in roots), default=0.0),
        work_s=sum(j.seconds for j in jobs),
        slots=slots,
    )


def asha_share(rungs: list[float], reduction_factor: float) -> float:
    """The expected share of its budget a search trial runs under ASHA: all of them to the
    first rung, 1 / rf of them on to the next, and so on (rungs as fractions of the budget)."""
    share, start, alive = 0.0, 0.0, 1.0
    for rung in [*rungs, 1.0]:
        share += alive * (rung - start)
        start, alive = rung, alive / reduction_factor
    return share


def study_jobs(
    spec,
    steps_of: Callable[[int], int],
    seconds: Callable[[int, int], float],
    cap_of: Callable[[int], int] | None = None,
):
    """The jobs a grid study plans (module docstring): `steps_of(batch)` its budget in steps,
    `seconds(batch, steps)` one trial's seconds on a slot, start-up included. `cap_of(batch)`:
    the worst case of the checks too, every batch size short of the baseline through every
    round up to its cap (`check_jobs`)."""
    cells = spec.cells()
    per_cell = max(1, spec.trials // max(1, len(cells)))
    share = asha_share(spec.rungs(), spec.reduction_factor)
    smallest = min(spec.batch_sizes)
    base_steps = steps_of(smallest)
    jobs: list[Job] = []
    confirmed: dict[str, tuple[str, ...]] = {}
    searches: dict[str, tuple[str, ...]] = {}
    base_search: tuple[str, ...] = ()  # the baseline's search trials: the rule test waits
    for cell in cells:
        own = steps_of(cell.batch_size)
        search = tuple(f"{cell.key}/search{i}" for i in range(per_cell))
        if cell.batch_size == smallest:
            base_search += search
        jobs += [Job(n, share * seconds(cell.batch_size, own)) for n in search]
        confirm = tuple(f"{cell.key}/confirm{s}" for s in range(spec.seeds))
        jobs += [Job(n, seconds(cell.batch_size, own), search) for n in confirm]
        confirmed[cell.key] = confirm or search
        searches[cell.key] = search
    base_cells = [c for c in cells if c.batch_size == smallest]
    base_done = tuple(n for c in base_cells for n in confirmed[c.key])
    settled = base_done
    if spec.checks:
        lr_check = tuple(f"base/lr{k}-{s}" for k in (-1, 1) for s in range(spec.seeds))
        jobs += [Job(n, seconds(smallest, base_steps), base_done) for n in lr_check]
        settled = lr_check or base_done
        for cell in cells:
            if cell.batch_size == smallest:
                continue
            steps = equal_data_run(steps_of(cell.batch_size), cell.batch_size, base_steps, smallest)
            if steps is None:
                continue
            needs = settled + confirmed[cell.key]
            jobs += [
                Job(f"{cell.key}/equal{k}-{s}", seconds(cell.batch_size, steps), needs)
                for k in (-1, 0, 1)
                for s in range(spec.seeds)
            ]
    if getattr(spec, "budget_free_steps", False):  # each batch size's, once it is searched
        for batch in spec.batch_sizes:
            searched = tuple(n for c in cells if c.batch_size == batch for n in searches[c.key])
            bound = FREE_BUDGET_MULTIPLE * steps_of(batch)
            jobs += [
                Job(f"free/{batch}@{k}-{s}", seconds(batch, bound), searched)
                for k in FREE_LR_START
                for s in range(spec.seeds)
            ]
    if spec.checks and cap_of is not None:
        jobs += check_jobs(spec, steps_of, seconds, cap_of, settled, confirmed)
    if spec.rule_test:
        rules = spec.space().scaling_rules
        for batch in spec.batch_sizes[1:]:
            jobs += [
                Job(f"rule/{rule}/{batch}-{s}", seconds(batch, steps_of(batch)), base_search)
                for rule in rules
                for s in range(spec.seeds)
            ]
    return jobs


def check_jobs(spec, steps_of, seconds, cap_of, settled, confirmed) -> list[Job]:
    """Every round of the checks for every batch size above the baseline, one round after the
    other (`search_spaces.checks.check_rounds`), the baseline at each multiple beside the
    round that needs it (as the searcher queues it), and the fresh seeds at the last level,
    both sides: the most the checks can add."""
    smallest = min(spec.batch_sizes)
    base_steps = steps_of(smallest)
    jobs: list[Job] = []
    baseline_at: dict[int, tuple[str, ...]] = {}
    judged_base: set[int] = set()  # the multiples whose fresh-seed baseline runs are planned
    seeds = range(spec.seeds)
    for cell in spec.cells():
        if cell.batch_size == smallest:
            continue
        own, before = steps_of(cell.batch_size), settled + confirmed[cell.key]
        multiple = 1
        for r, levels in enumerate(check_rounds(own, cap_of(cell.batch_size))):
            round_jobs = [
                Job(f"{cell.key}/check{r}/{s}@{k}-{i}", seconds(cell.batch_size, s), before)
                for s, k in levels
                for i in seeds
            ]
            jobs += round_jobs
            names = tuple(j.name for j in round_jobs)
            multiple = levels[0][0] // own
            if multiple > 1 and multiple not in baseline_at:
                baseline_at[multiple] = tuple(f"base/x{multiple}-{i}" for i in seeds)
                jobs += [
                    Job(n, seconds(smallest, multiple * base_steps), settled)
                    for n in baseline_at[multiple]
                ]
            before = names
        last = levels[0][0]
        compared = baseline_at.get(multiple, ())
        jobs += [
            Job(f"{cell.key}/judge-{i}", seconds(cell.batch_size, last), before + compared)
            for i in seeds
        ]
        if multiple > 1 and multiple not in judged_base:
            judged_base.add(multiple)
            jobs += [
                Job(f"base/judge{multiple}-{i}", seconds(smallest, multiple * base_steps), compared)
                for i in seeds
            ]
    return jobs
