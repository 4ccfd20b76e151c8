"""A branch study's plan: the base run, its checkpoints, the ladder of batch sizes, the window
and each branch's lr candidates. Plain Python, no Ray.

Defaults, and why:
- base batch: the grid's smallest; the ladder doubles it (k = 1, 2, 4, ...), as Merrill et
  al. branch at 2x, 4x, ..., up to the grid's largest or the largest batch that still takes
  `MIN_LARGEST_STEPS` steps in the window, whichever is smaller (the report says where the
  window cut it short);
- checkpoints: `--branch-at` (default 1%, 10%, 25%, 50% of the base run's budget). The first
  is at the start of training on purpose: the local critical batch grows as training goes on
  (mnist1d: 64 at 1%, 128 at 10%, 256 at 25% and 50%), and a constant batch size, which a grid
  study measures, is held back by the start, where every run spends its first steps
  (`tuner.analysis.branch.constant_batch`). With the first checkpoint at 10%, the ladders never
  saw the start: mnist1d read 128 there, 3.1x the grid's 41.6. A checkpoint at 75% was dropped:
  over a window that late, k = 1 gained 0.2 pt on mnist1d, too little to tell rungs apart;
- window: a tenth of the base run's examples (`--window`), rounded up to whole batches of the
  ladder's largest, so every rung trains exactly the same examples. The default tolerance
  asks whether a rung makes half of k = 1's progress over the window (McCandlish et al.'s
  critical batch needs twice the examples), which reads true only while progress is about
  linear in examples: measured on digits, a window of 2048 examples (71% of the base run's
  data, 4 steps of batch 512) saturated k = 1's progress (69% -> 93% from the first
  checkpoint), the ladder called 128 critical where the grid fits 22, and the schedule it
  suggested fell 13 pt short when run. Merrill et al. branch for about 1% of an OLMo run;
  a small workload's 1% is a step or two of a large batch, too few to tell anything;
- lr candidates: the base run's lr at the checkpoint scaled by each rule of the study
  (`--rules`), bracketed by half the lowest and twice the highest, at every rung, k = 1
  included (the rule is what is tested: the report says which candidate won each rung). k = 1
  is the reference of every comparison, so it is searched as the rungs are: when it tried the
  base lr alone (three rules give it one lr), the rungs' wider search won against it (mnist1d
  at 25%: k = 1 gained 2.2 pt over the window at the base lr, 7.3 pt at half of it);
- the base run's warmup and weight decay: the middle of the workload's search ranges (the
  warmup range's midpoint, the weight decay range's geometric mean); its lr: `--base-lr`, or
  the best of `PROBE_LRS` log-spaced lrs over the range trained for `PROBE_FRACTION` of the
  base run's schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainables.budget import evaluation_steps
from trainables.config import TrialConfig
from trainables.optim import lr_at_step, scaling_factor
from tuner.dry_run import start_up_s
from tuner.spec import StudySpec

WINDOW_FRACTION = 0.1  # of the base run's examples
MIN_LARGEST_STEPS = 4  # steps of the largest batch size in a window, at least
PROBE_LRS = 4  # lrs of the short search for the base run's lr
PROBE_FRACTION = 0.25  # of the base run's budget each probe trains
SEARCH_FACTORS = (0.5, 2.0)  # below the lowest rule's lr, above the highest's
# Evaluations through a branch's window; its end is the mean of those in the second half
# (tuner.branch.trial.smoothed_end).
EVALUATIONS_PER_WINDOW = 8


@dataclass(frozen=True)
class Candidate:
    """One lr a rung tries: its label ("sqrt", "sqrt x2") and value."""

    label: str
    lr: float


@dataclass(frozen=True)
class BranchPlan:
    """What a branch study runs (from its spec and its training set's size)."""

    base_batch: int
    multipliers: tuple[int, ...]
    base_steps: int
    fractions: tuple[float, ...]
    checkpoints: tuple[int, ...]  # the base run's steps at `fractions`
    window: int  # examples per branch
    rules: tuple[str, ...]
    optimizer: str
    weight_decay: float
    warmup_fraction: float
    seeds: int  # fresh seeds of each rung's best candidate

    def window_steps(self, multiplier: int) -> int:
        return self.window // (multiplier * self.base_batch)

    @property
    def largest(self) -> int:
        return self.multipliers[-1] * self.base_batch


def ladder_sizes(spec: StudySpec) -> tuple[int, ...]:
    """The batch sizes of the ladder: the grid's smallest, doubled up to its largest."""
    base = spec.batch_sizes[0]
    return tuple(base * 2**i for i in range(int(math.log2(spec.batch_sizes[-1] / base)) + 1))


def make_plan(spec: StudySpec, n_train: int) -> BranchPlan:
    """The plan of `spec` (a branch study) on a training set of `n_train` examples."""
    base = spec.batch_sizes[0]
    steps = spec.budget_spec().steps(n_train, base)
    # at least k = 2 with its MIN_LARGEST_STEPS steps: a ladder of one rung measures nothing
    window = max(spec.window or WINDOW_FRACTION * steps * base, 2 * MIN_LARGEST_STEPS * base)
    multipliers = tuple(
        b // base for b in ladder_sizes(spec) if window / b >= MIN_LARGEST_STEPS or b <= 2 * base
    )
    largest = multipliers[-1] * base
    window = math.ceil(window / largest) * largest  # whole batches of every rung
    space = spec.space()
    low, high = space.weight_decay
    points: dict[int, float] = {}  # fractions that round to one step: the first of them
    for fraction in spec.branch_at:
        points.setdefault(max(1, round(fraction * steps)), fraction)
    return BranchPlan(
        base_batch=base,
        multipliers=multipliers,
        base_steps=steps,
        fractions=tuple(points.values()),
        checkpoints=tuple(points),
        window=int(window),
        rules=space.scaling_rules,
        optimizer=space.optimizers[0],
        weight_decay=math.sqrt(low * high) if low > 0 else high / 2,
        warmup_fraction=sum(space.warmup_fraction) / 2,
        seeds=max(spec.seeds, 1),
    )


def probe_lrs(spec: StudySpec, plan: BranchPlan) -> list[float]:
    """The short search's base lrs: log-spaced over the optimizer's range."""
    low, high = spec.space().base_lr[plan.optimizer]
    ratio = (high / low) ** (1 / (PROBE_LRS - 1))
    return [low * ratio**i for i in range(PROBE_LRS)]


def base_config(spec: StudySpec, plan: BranchPlan, base_lr: float) -> dict[str, Any]:
    """The base run's trial config (the grid's smallest batch, the study's budget)."""
    params = {
        "batch_size": plan.base_batch,
        "scaling_rule": plan.rules[0],
        "optimizer": plan.optimizer,
        "base_lr": base_lr,
        "weight_decay": plan.weight_decay,
        "warmup_fraction": plan.warmup_fraction,
    }
    return spec.trial_config(params) | {"stop_at_target": 0.0}


def lr_at(config: dict[str, Any], step: int, total: int) -> float:
    """The base run's lr at `step` of its `total` (its own schedule)."""
    return lr_at_step(step, **TrialConfig.from_dict(config).lr_schedule(total))


def candidates(plan: BranchPlan, lr: float, multiplier: int) -> list[Candidate]:
    """The lrs a rung at `multiplier` tries, from the base run's lr `lr` at its checkpoint."""
    batch, base = multiplier * plan.base_batch, plan.base_batch
    found = [Candidate(r, lr * scaling_factor(r, batch, base)) for r in plan.rules]
    # Bracket the rules' lrs by SEARCH_FACTORS at every rung, k = 1 included: k = 1 is the
    # reference every rung is judged against, so it is tuned as well as they are.
    low, high = min(found, key=lambda c: c.lr), max(found, key=lambda c: c.lr)
    found += [Candidate(f"{low.label} x{SEARCH_FACTORS[0]:g}", low.lr * SEARCH_FACTORS[0])]
    found += [Candidate(f"{high.label} x{SEARCH_FACTORS[1]:g}", high.lr * SEARCH_FACTORS[1])]
    unique: dict[float, Candidate] = {}
    for c in found:  # at k = 1 every rule gives the same lr
        unique.setdefault(round(c.lr, 15), c)
    return list(unique.values())


def branch_config(
    spec: StudySpec, plan: BranchPlan, base: dict[str, Any], multiplier: int, seed: int
) -> dict[str, Any]:
    """A branch's trial config: k x the base batch for the window's steps, one evaluation at
    its end (its lr comes from the branch, not from this config's schedule)."""
    steps = plan.window_steps(multiplier)
    params = {
        "batch_size": multiplier * plan.base_batch,
        "scaling_rule": "none",
        "optimizer": base["optimizer"],
        "base_lr": base["base_lr"],
        "weight_decay": base["weight_decay"],
        "warmup_fraction": 0.0,
        "budget_steps": steps,
        "seed": seed,
    }
    every = max(1, steps // EVALUATIONS_PER_WINDOW)
    return spec.trial_config(params) | {"eval_every": every, "stop_at_target": 0.0}


def late_steps(plan: BranchPlan, multiplier: int) -> list[int]:
    """The evaluations of a branch's window that its smoothed end averages (its second half)."""
    steps = plan.window_steps(multiplier)
    every = max(1, steps // EVALUATIONS_PER_WINDOW)
    return [s for s in evaluation_steps(steps, every) if 2 * s > steps]


def estimate_lines(spec: StudySpec, plan: BranchPlan, speeds: dict[int, float]) -> list[str]:
    """What `--method branch --dry-run` prints: the jobs and their cost at the probed speeds,
    every ladder climbed to the top (an upper bound: a ladder stops at its first rung shown
    degraded)."""
    device = "GPU" if spec.use_gpu else "CPU"
    per_worker = spec.gpus_per_worker if spec.use_gpu else spec.cpus_per_worker
    workers = spec.workers_per_trial
    # The probed speeds are one process's at the whole batch; split over the workers, the
    # compute's device time stays about the same, while each worker pays the start-up.
    start_up = workers * start_up_s(workers)

    def seconds(batch: int, steps: int) -> float:
        return steps * batch / speeds[batch]

    base = seconds(plan.base_batch, plan.base_steps)
    probes = 0 if spec.base_lr else PROBE_LRS * PROBE_FRACTION * base
    runs = {k: len(candidates(plan, 1.0, k)) + plan.seeds for k in plan.multipliers}
    rungs = len(plan.fractions) * sum(
        runs[k] * seconds(k * plan.base_batch, plan.window_steps(k)) for k in plan.multipliers
    )
    trials = (0 if spec.base_lr else PROBE_LRS) + 1 + len(plan.fractions) * len(plan.multipliers)
    trials += 1 if spec.verify_schedule else 0
    verify = base if spec.verify_schedule else 0.0  # at most the base run's data again
    total = (probes + base + rungs + verify + start_up * trials) * per_worker
    ladder = ", ".join(f"{k * plan.base_batch}: {plan.window_steps(k)}" for k in plan.multipliers)
    short = f"{PROBE_FRACTION:.0%} of the base run"
    return [
        f"dry run (--method branch): {spec.what}; nothing trains",
        "throughput probed on this machine: "
        + ", ".join(
            f"{k * plan.base_batch}: {speeds[k * plan.base_batch]:.4g} samples/s"
            for k in plan.multipliers
        ),
        "planned: "
        + ("" if spec.base_lr else f"a short lr search ({PROBE_LRS} runs of {short}), ")
        + f"the base run at batch {plan.base_batch} ({plan.base_steps} steps), branches from "
        + f"{len(plan.fractions)} checkpoints over {plan.window} examples (steps by batch size: "
        f"{ladder}), each rung {runs[plan.multipliers[-1]]} runs (lr candidates, then "
        f"{plan.seeds} fresh seed(s))"
        + (", then the suggested schedule" if spec.verify_schedule else ""),
        f"estimated cost, every ladder to the top (most stop earlier): at most {trials} trials, "
        f"lr search {duration_s(probes)}, base run {duration_s(base)}, branches "
        f"{duration_s(rungs)}: {duration_s(total)} of {device} time in all",
    ]


def duration_s(seconds: float) -> str:
    from tuner.report.format import duration

    return duration(seconds / 3600)
