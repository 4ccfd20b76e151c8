"""`--dry-run`: what a study would run and cost, without running it.

The plan counts the trials the study will start: the search (the cells' shares, and up to 3
range extensions per cell), the confirmation seeds, the rule test, and the checks, which are
adaptive (only a batch size short of the baseline gets them), so they are priced per batch
size, every round up to the cap (`--max-steps`, else `--max-data-multiple` x the baseline's
examples). The cost comes from a throughput probe: the study's own loop,
model and data train a few steps at every batch size in this process, on this machine (a GPU
if the study asks for GPU workers and this machine has one, else its CPU with the study's CPUs
per worker as threads), and each trial's time is its budget in steps at that speed plus a
trial's start-up. A W-worker trial is assumed to run W times as fast as one worker (its
device time is the same). Plain Python, no Ray.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch

from search_spaces.checks import (
    DATA_CAP_MULTIPLE,
    FREE_BUDGET_MULTIPLE,
    FREE_LR_START,
    cap_steps,
    check_rounds,
    equal_data_run,
)
from trainables.config import TrialConfig
from trainables.datasets import DEFAULT_DATA_DIR
from tuner.analysis.schedule import simulate, study_jobs
from tuner.report.format import duration
from tuner.spec import StudySpec

PROBE_STEPS = 12  # timed optimizer steps per batch size (after the loop's first one)
START_UP_S = {1: 1.5, "many": 12.0}  # a trial's start-up: a reused actor; a Ray Train run


def start_up_s(workers: int) -> float:
    """A trial's start-up, seconds of wall time: a reused actor, or a Ray Train run."""
    return START_UP_S[1] if workers == 1 else START_UP_S["many"]


EXTENSIONS_PER_CELL = 3


def probe(spec: StudySpec) -> tuple[dict[int, float], int]:
    """Training samples per second at every batch size of the grid, measured on this machine
    with the study's loop (evaluation excluded), and the training examples it trained on."""
    workload = spec.load_workload()
    gpu = spec.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    splits = workload.open(
        spec.dataset, spec.data_dir or DEFAULT_DATA_DIR, spec.seed, spec.max_train_examples
    )
    speeds = {}
    try:
        for batch in spec.batch_sizes:
            params = {"batch_size": batch, "scaling_rule": "none", "base_lr": 1e-4}
            params |= {"optimizer": spec.space().optimizers[0], "weight_decay": 0.0}
            params |= {"warmup_fraction": 0.0, "budget_steps": PROBE_STEPS + 1}
            values = spec.trial_config(params) | {
                "num_workers": 1,
                "eval_every": PROBE_STEPS + 1,
                "use_gpu": gpu,
                "decode": "cpu" if not gpu else spec.decode_on(),
                "stop_at_target": 0.0,
            }
            reports: list[dict] = []
            from trainables.loop import train

            train(
                TrialConfig.from_dict(values),
                report=lambda m, s, into=reports: into.append(m),
                device=device,
                splits=dataclasses.replace(splits),
            )
            speeds[batch] = float(reports[-1]["samples_per_second"])
    finally:
        torch.set_num_threads(threads)
    return speeds, len(splits.train)


def plan(
    spec: StudySpec, speeds: dict[int, float], n_train: int, slots: int | None = None
) -> list[str]:
    """The lines `--dry-run` prints (`slots`: trials at once for the wall time; default what
    this machine holds)."""
    budget = spec.budget_spec()
    cells = spec.cells()
    workers = spec.workers_per_trial
    device = "GPU" if spec.use_gpu else "CPU"
    per_worker = spec.gpus_per_worker if spec.use_gpu else spec.cpus_per_worker
    start_up = start_up_s(workers)

    def trial_hours(batch: int, steps: int | None = None) -> float:
        steps = steps or budget.steps(n_train, batch)
        speed = speeds.get(batch, math.nan) * workers
        return (steps * batch / speed + start_up) / 3600

    per_cell = {c.key: trial_hours(c.batch_size) for c in cells}
    search = spec.trials * sum(per_cell.values()) / len(cells)
    confirm = spec.seeds * sum(per_cell.values())
    rule = (
        spec.rule_test_trials
        / max(len(spec.batch_sizes) - 1, 1)
        * sum(trial_hours(b) for b in spec.batch_sizes[1:])
    )
    # equal data: each cell above the smallest batch size for the baseline's examples, where
    # its own budget gave it others (search_spaces.checks.equal_data_run)
    smallest = min(spec.batch_sizes)
    base_steps = budget.steps(n_train, smallest)
    equal_runs, equal = 0, 0.0
    for cell in cells if spec.checks else []:
        own = budget.steps(n_train, cell.batch_size)
        steps = equal_data_run(own, cell.batch_size, base_steps, smallest)
        if cell.batch_size > smallest and steps is not None:
            # its confirmed lr, then half and twice it: the line search's first round
            equal_runs += 3 * spec.seeds
            equal += 3 * spec.seeds * trial_hours(cell.batch_size, steps)
    # budget-free steps to target: each batch size's best at its line search's first lrs, to
    # the target, at most FREE_BUDGET_MULTIPLE x its budget (priced at that bound)
    free_runs = len(FREE_LR_START) * spec.seeds * len(spec.batch_sizes) * spec.budget_free_steps
    free = (
        sum(
            len(FREE_LR_START)
            * spec.seeds
            * trial_hours(b, FREE_BUDGET_MULTIPLE * budget.steps(n_train, b))
            for b in spec.batch_sizes
        )
        * spec.budget_free_steps
    )
    total = search + confirm + rule + equal + free
    lines = [
        f"dry run: {spec.what}, batch sizes {list(spec.batch_sizes)}, budget {budget} per "
        f"trial, {workers} worker(s) of {per_worker:g} {device}(s) each; nothing trains",
        "throughput probed on this machine ("
        + ("its GPU" if spec.use_gpu and torch.cuda.is_available() else "its CPU")
        + f", {PROBE_STEPS} steps per batch size): "
        + ", ".join(f"{b}: {speeds[b]:.4g} samples/s" for b in spec.batch_sizes),
        "steps per trial: "
        + ", ".join(f"{b}: {budget.steps(n_train, b)}" for b in spec.batch_sizes),
        f"planned trials: {spec.trials} search (+ up to {EXTENSIONS_PER_CELL * len(cells)} "
        f"range extensions), up to {spec.confirmation_trials} confirmation runs, "
        f"{spec.rule_test_trials} rule-test runs, {equal_runs} equal-data runs (the batch "
        f"sizes whose budget gives them other data than the baseline's, for its examples; "
        f"where the lr line search moves, the lr it chose again with fresh seeds), "
        f"{free_runs} budget-free runs (steps to target: its lr line search's first round, each "
        f"ending at the target or at twice its budget)"
        + (", and the checks where a batch size falls short" if spec.checks else ""),
        f"estimated cost, every trial at its full budget (ASHA stops most search trials "
        f"early, so the search costs less): search {duration(search)}, confirmation "
        f"{duration(confirm)}, rule test {duration(rule)}, equal data {duration(equal)}, "
        f"budget-free at most {duration(free)}: "
        f"{duration(total * workers * per_worker)} of {device} time in all",
    ]
    lines.append(wall_line(spec, n_train, trial_hours, slots))
    if spec.checks:
        lines += check_lines(spec, n_train, trial_hours, workers * per_worker, device)
    return lines


def machine_slots(spec: StudySpec) -> int:
    """The trials this machine holds at once (a local study's)."""
    if spec.use_gpu and torch.cuda.is_available():
        held = torch.cuda.device_count() / max(spec.gpus_per_worker, 1e-9)
    else:
        held = (os.cpu_count() or 1) / max(spec.cpus_per_worker, 1e-9)
    return max(1, int(held // spec.workers_per_trial))


def wall_line(spec: StudySpec, n_train: int, trial_hours, slots: int | None) -> str:
    """The study's wall time on `slots` (tuner.analysis.schedule: its planned job graph, list
    scheduled), and its critical path."""
    budget = spec.budget_spec()
    given = slots is not None
    slots = slots or machine_slots(spec)
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)

    def steps_of(batch: int) -> int:
        return budget.steps(n_train, batch)

    def seconds(batch: int, steps: int) -> float:
        return 3600 * trial_hours(batch, steps)

    jobs = study_jobs(spec, steps_of, seconds)
    found = simulate(jobs, slots)
    where = f"{slots} slots" + ("" if given else " (what this machine holds; --slots N)")
    text = (
        f"wall time on {where}: about {duration(found.wall_s / 3600)} for the planned "
        f"{len(jobs)} trials (utilisation {found.utilisation:.0%}); the critical path (the "
        f"longest chain of trials that wait for each other: the baseline's search, "
        f"confirmation and lr check, then the runs that wait for it) is "
        f"{duration(found.critical_path_s / 3600)}, and no number of slots finishes sooner"
    )
    if not spec.checks:
        return text
    caps = check_caps(spec, n_train)
    worst = simulate(
        study_jobs(spec, steps_of, seconds, caps.__getitem__),
        slots,
    )
    return (
        f"{text}; with every batch size short of the baseline through every round of the "
        f"checks up to the cap (below): at most {duration(worst.wall_s / 3600)} (critical path "
        f"{duration(worst.critical_path_s / 3600)})"
    )


def check_caps(spec: StudySpec, n_train: int) -> dict[int, int]:
    """Each batch size's cap on the checks' steps (`checks.cap_steps`: `--max-steps`, else
    `--max-data-multiple` x the baseline's examples)."""
    budget, smallest = spec.budget_spec(), min(spec.batch_sizes)
    base = (budget.steps(n_train, smallest), smallest)
    multiple = spec.max_data_multiple or DATA_CAP_MULTIPLE  # a new study's: never 0
    return {b: cap_steps(b, base, spec.max_steps, multiple) for b in spec.batch_sizes}


def check_lines(spec: StudySpec, n_train: int, trial_hours, scale: float, device: str) -> list[str]:
    """What the checks may cost: every round up to the cap, for each batch size that falls
    short of the baseline (`checks.check_rounds`: half and twice its lr, then each doubling of
    its steps at three lrs, with the baseline at the same multiple of its own budget, and the
    fresh seeds at the level judged, both sides), each round's levels x the seeds."""
    budget = spec.budget_spec()
    smallest = min(spec.batch_sizes)
    base_steps = budget.steps(n_train, smallest)
    if spec.max_steps:
        stated = f"--max-steps {spec.max_steps}"
    else:
        multiple = spec.max_data_multiple or DATA_CAP_MULTIPLE
        stated = f"{multiple:g}x the baseline's {base_steps * smallest} examples"
    out = [f"the checks' cap: {stated}; where a batch size falls short, every round up to it:"]
    caps = check_caps(spec, n_train)
    for batch in spec.batch_sizes[1:]:
        own = budget.steps(n_train, batch)
        rounds = check_rounds(own, caps[batch])
        hours = 0.0
        for levels in rounds:
            hours += spec.seeds * sum(trial_hours(batch, steps) for steps, _ in levels)
            multiple = levels[0][0] // own
            if multiple > 1:  # the baseline at the same multiple of its own budget
                hours += spec.seeds * trial_hours(smallest, multiple * base_steps)
        last = rounds[-1][0][0]
        hours += spec.seeds * (  # the fresh seeds at the last level, both sides
            trial_hours(batch, last) + trial_hours(smallest, last // own * base_steps)
        )
        examples = last * batch / (base_steps * smallest)
        out.append(
            f"  {batch}: {len(rounds)} round(s), to {last} steps ({examples:.3g}x the "
            f"baseline's examples): up to {duration(hours * scale)} of {device} time"
        )
    return out
