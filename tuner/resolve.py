"""The study spec that the CLI's options resolve to: defaults filled in, the budget and ASHA's
first rung resolved, `--resume` checked against the saved study, and whether one trial fits
this machine. Like `tuner.options`, it runs before Ray starts and raises `InputError` on bad
input. Plain Python, no Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces.cells import STRATA, default_strata, study_cells
from search_spaces.checks import AUTO_SPECULATE, DATA_CAP_MULTIPLE
from trainables.budget import Budget, BudgetError
from trainables.config import ConfigError
from trainables.metrics import get_metric
from tuner.cluster.capacity import check_fits
from tuner.errors import InputError
from tuner.option_bounds import flag, show
from tuner.options import (
    BRANCH_AT,
    BRANCH_SEEDS,
    GRACE,
    MIN_TRIALS_PER_CELL,
    RESUMABLE,
    RUN_ONLY,
    SEEDS,
    SMOKE,
    SMOKE_BRANCH_AT,
    TRIALS_PER_BATCH,
    absolute_storage,
    given,
)
from tuner.shipping import canonical_ref, source_to_ship
from tuner.spec import StudySpec


def pick(value: Any, default: Any) -> Any:
    """The given value, else the default (0 and False are given values, unlike with `or`)."""
    return default if value is None else value


def _choices(text: str | None, option: str) -> tuple[str, ...] | None:
    """`linear,sqrt` -> ("linear", "sqrt"); None when not given."""
    if text is None:
        return None
    chosen = tuple(c.strip() for c in text.split(",") if c.strip())
    if not chosen:
        raise InputError(f"{option} is empty: name at least one")
    return chosen


def resolve_budget(args: argparse.Namespace, settings: Any, smoke: bool) -> tuple[str, int]:
    """The study's budget text and step floor from --budget / --epochs / --smoke / defaults."""
    given = args.budget is not None or args.epochs is not None
    if args.budget is not None:
        text = args.budget
    elif args.epochs is not None:
        text = f"epochs:{args.epochs}"
    else:
        text = SMOKE["budget"] if smoke else settings.budget
    # The workload's floor comes with its default budget; a budget the user gives means what it
    # says (epochs:6 is equal data) unless --min-steps adds a floor.
    min_steps = pick(args.min_steps, 0 if smoke or given else settings.min_steps)
    try:
        budget = Budget.parse(text, min_steps)
    except BudgetError as error:
        raise InputError(f"--budget {text}: {error}") from None
    return f"{budget.unit}:{budget.amount:g}", min_steps


def resolve_grace(args: argparse.Namespace, budget: str, warmup_max: float = 0.0) -> float:
    """ASHA's first rung as a fraction of the budget (--grace-epochs: epoch budgets only): by
    default 1/9, or the end of the longest warmup the search tries where that is later (issue
    32: a rung inside a warmup compares trials by how far their lr has ramped). A rung given
    inside that warmup is refused."""
    grace = max(GRACE, warmup_max) if args.grace is None else args.grace
    if args.grace_epochs is not None:
        grace = _grace_from_epochs(args.grace_epochs, budget)
    given = "--grace" if args.grace_epochs is None else "--grace-epochs"
    if grace < warmup_max and (args.grace is not None or args.grace_epochs is not None):
        raise InputError(
            f"{given}: ASHA's first rung at {grace:.3g} of the budget falls inside the longest "
            f"warmup the search tries ({warmup_max:g} of the budget), where trials compare by how "
            f"far their lr has ramped; give a first rung at {warmup_max:g} or later"
        )
    return grace


def _grace_from_epochs(grace_epochs: int, budget: str) -> float:
    """--grace-epochs as a fraction of an epochs budget."""
    unit, _, amount = budget.partition(":")
    if unit != "epochs":
        raise InputError(
            f"--grace-epochs needs an epochs budget (this study's is {budget}); use --grace "
            f"FRACTION of the budget"
        )
    if grace_epochs >= float(amount):
        raise InputError(
            f"--grace-epochs {grace_epochs} is not before the end of the {amount}-epoch "
            f"budget: ASHA's first rung must come before the end"
        )
    return grace_epochs / float(amount)


def build_spec(args: argparse.Namespace, gpus_available: bool | None) -> StudySpec:
    """Turn CLI options into a validated spec; `InputError` / `ConfigError` on bad input.

    `gpus_available` is whether the cluster has GPUs, None when unknown before Ray starts (a
    remote cluster): then GPU workers are not assumed, and the session decides once it knows.
    """
    workload = load_workload(args.workload)
    dataset = args.dataset or workload.default_dataset
    if (
        args.smoke
        and not args.dataset
        and dataset in workload.data_sets()
        and workload.settings(dataset).needs_files
        and "synthetic" in workload.data_sets()
    ):
        dataset = "synthetic"
    try:
        settings = workload.settings(dataset)
    except KeyError as error:
        raise InputError(f"--dataset {dataset}: {str(error).strip(chr(39) + chr(34))}") from None
    grid = tuple(args.batch_sizes or settings.batch_sizes)
    max_train = pick(args.max_train_examples, 0)
    rules = _choices(args.rules, "--rules")
    if args.smoke:
        grid = grid[: SMOKE["grid"]] if not args.batch_sizes else grid
        max_train = max_train or SMOKE["max_train_examples"]
        rules = rules or ("linear",)
    try:
        space = workload.search_space.restricted(rules, _choices(args.optimizers, "--optimizers"))
    except ValueError as error:
        raise InputError(str(error)) from None
    if args.lr_range is not None:
        space = dataclasses.replace(space, base_lr={o: args.lr_range for o in space.optimizers})
    strata = _choices(args.stratify, "--stratify")
    strata = default_strata(space) if strata is None else tuple(s for s in strata if s != "none")
    unknown = [s for s in strata if s not in STRATA]
    if unknown:
        raise InputError(f"--stratify {','.join(unknown)}: use rule, optimizer, both or none")
    metric = get_metric(workload.metric_name, workload.metric_mode)
    if args.target is not None and (problem := metric.target_problem(args.target)):
        raise InputError(f"{problem}: {workload.name} is judged by {metric.label}")
    target = pick(args.target, workload.default_target(settings))
    if target is None:
        raise InputError(
            f"{workload.name} is judged by {metric.label}, which has no default target for "
            f"steps-to-target: pass --target VALUE, or declare target= in the workload"
        )
    budget, min_steps = resolve_budget(args, settings, args.smoke)
    tolerance = pick(args.tolerance, None)
    if tolerance is not None and metric.unit == "pt":
        if tolerance >= 100:
            raise InputError(f"--tolerance {tolerance:g}: percentage points below 100")
        tolerance /= 100
    cells = len(study_cells(grid, space, strata))
    per_cell = max(MIN_TRIALS_PER_CELL, math.ceil(TRIALS_PER_BATCH * len(grid) / cells))
    if args.smoke:
        per_cell = SMOKE["trials_per_cell"]
    gpus = pick(args.gpus_per_worker, 1.0 if gpus_available else 0.0)
    method = pick(args.method, "grid")
    if method == "branch" and grid[-1] < 2 * grid[0]:
        raise InputError(
            f"--method branch needs a largest batch size at least twice the smallest (it "
            f"branches from the smallest at 2x, 4x, ...); the grid is {','.join(map(str, grid))}"
        )
    seeds = SMOKE["seeds"] if args.smoke else BRANCH_SEEDS if method == "branch" else SEEDS
    spec = StudySpec(
        workload=canonical_ref(args.workload),
        dataset=dataset,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        batch_sizes=grid,
        trials=pick(args.trials, per_cell * cells),
        budget=budget,
        min_steps=min_steps,
        eval_every=pick(args.eval_every, SMOKE["eval_every"] if args.smoke else 0),
        workers_per_trial=pick(args.workers_per_trial, 1),
        cpus_per_worker=pick(args.cpus_per_worker, 1.0),
        gpus_per_worker=gpus,
        max_concurrent=pick(args.max_concurrent, 0),
        speculate=pick(args.speculate, AUTO_SPECULATE),
        storage=absolute_storage(pick(args.storage, "studies")),
        name=args.name or default_name(workload, dataset),
        seed=pick(args.seed, 0),
        max_device_batch=pick(args.max_device_batch, settings.max_device_batch),
        max_train_examples=max_train,
        bn_mode=pick(args.bn_mode, "ghost"),
        ghost_batch=pick(args.ghost_batch, workload.bn_batch),
        grace=resolve_grace(args, budget, space.warmup_fraction[1]),
        reduction_factor=pick(args.reduction_factor, 3),
        divergence_factor=pick(args.divergence_factor, 5.0),
        worker_retries=pick(args.worker_retries, 2),
        target=target,
        stop_at_target=bool(args.stop_at_target),
        metric=metric.name,
        strata=strata,
        seeds=pick(args.seeds, seeds),
        search_ranges=space.ranges(),
        compile=bool(args.compile),
        loader_workers=pick(args.loader_workers, 0),
        decode=pick(args.decode, "auto"),
        max_steps=pick(args.max_steps, 0),
        max_data_multiple=pick(args.max_data_multiple, DATA_CAP_MULTIPLE),
        budget_free_steps=not (args.no_budget_free or args.no_checks or args.smoke),
        target_warmup=pick(args.target_warmup, 0),
        tolerance=pick(tolerance, metric_tolerance(workload, metric)),
        rule_test=not (args.no_rule_test or args.no_checks or args.smoke),
        checks=not (args.no_checks or args.smoke),
        workload_name=workload.name,
        workload_source=source_to_ship(args.workload),
        metric_mode=workload.metric_mode,
        own_loss=workload.own_loss,
        reference_batch=workload.reference(grid),
        method=method,
        branch_at=(args.branch_at or (SMOKE_BRANCH_AT if args.smoke else BRANCH_AT))
        if method == "branch"
        else (),
        window=pick(args.window, 0),
        base_lr=pick(args.base_lr, 0.0),
        verify_schedule=bool(args.verify_schedule),
        branch_tolerance=tolerance if method == "branch" and tolerance is not None else 0.0,
        accelerator_type=pick(args.accelerator_type, ""),
    )
    spec.validate()
    return spec


def load_workload(ref: str):
    """The workload a CLI reference names, with every declaration problem as `InputError`."""
    from trainables.workloads import WorkloadNotFound, find_workload

    try:
        workload = find_workload(ref)
    except WorkloadNotFound as error:
        raise InputError(str(error)) from None
    problems = workload.problems()
    if problems:
        raise InputError(f"workload {workload.name or ref}: {'; '.join(problems)}")
    return workload


def default_name(workload: Any, dataset: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if dataset == "default":
        return f"{workload.name}-{stamp}"
    return f"{workload.name}-{dataset}-{stamp}"


def metric_tolerance(workload: Any, metric: Any) -> float:
    """The workload's own metric's declared tolerance, else the metric's default."""
    own = getattr(workload.metric, "tolerance", None)
    return own if own is not None else metric.default_tolerance


# Which spec fields an option decides, to tell a contradiction on --resume.
DECIDES: dict[str, tuple[str, ...]] = {
    "workload": ("workload",),
    "dataset": ("dataset",),
    "batch_sizes": ("batch_sizes",),
    "trials": ("trials",),
    "budget": ("budget",),
    "epochs": ("budget",),
    "min_steps": ("min_steps",),
    "eval_every": ("eval_every",),
    "workers_per_trial": ("workers_per_trial",),
    "cpus_per_worker": ("cpus_per_worker",),
    "gpus_per_worker": ("gpus_per_worker",),
    "max_device_batch": ("max_device_batch",),
    "max_train_examples": ("max_train_examples",),
    "bn_mode": ("bn_mode",),
    "ghost_batch": ("ghost_batch",),
    "grace": ("grace",),
    "grace_epochs": ("grace",),
    "reduction_factor": ("reduction_factor",),
    "divergence_factor": ("divergence_factor",),
    "target": ("target",),
    "stop_at_target": ("stop_at_target",),
    "stratify": ("strata",),
    "rules": ("search_ranges",),
    "optimizers": ("search_ranges",),
    "lr_range": ("search_ranges",),
    "seeds": ("seeds",),
    "seed": ("seed",),
    "compile": ("compile",),
    "max_steps": ("max_steps",),
    "max_data_multiple": ("max_data_multiple",),
    "target_warmup": ("target_warmup",),
    "no_budget_free": ("budget_free_steps",),
    "tolerance": ("tolerance",),
    "no_rule_test": ("rule_test",),
    "no_checks": ("checks", "rule_test", "budget_free_steps"),
    "decode": ("decode",),
    "smoke": ("budget", "batch_sizes", "trials", "max_train_examples", "seeds", "checks"),
    "method": ("method",),
    "branch_at": ("branch_at",),
    "window": ("window",),
    "base_lr": ("base_lr",),
    "verify_schedule": ("verify_schedule",),
    "branch_tolerance": ("branch_tolerance",),
    "accelerator_type": ("accelerator_type",),
    **{name: (name,) for name in RESUMABLE},
}


def resume_spec(saved: StudySpec, args: argparse.Namespace) -> tuple[StudySpec, list[str]]:
    """The saved spec with the options that may change on resume applied, and what changed.

    Any other option given must agree with the saved study; else one `InputError` line.
    """
    options = {k: v for k, v in given(args).items() if k not in RUN_ONLY}
    if args.workload and args.workload != saved.workload:
        raise InputError(
            f"--resume continues {saved.name} as it was saved: the workload {args.workload} "
            f"contradicts its workload {saved.workload}; drop it"
        )
    fill = {
        "workload": args.workload or saved.workload,
        "dataset": args.dataset or saved.dataset,
        "storage": saved.storage,
        "name": saved.name,
    }
    candidate = build_spec(argparse.Namespace(**{**vars(args), **fill}), gpus_available=None)
    for option in options:
        if option in RESUMABLE:
            continue
        for field in DECIDES[option]:
            new, old = getattr(candidate, field), getattr(saved, field)
            if new != old:
                shown = "" if isinstance(options[option], bool) else f" {show(options[option])}"
                raise InputError(
                    f"--resume continues {saved.name} as it was saved: {flag(option)}{shown} "
                    f"contradicts its {field} {show(old)}; drop the option (those that may "
                    f"change on resume: {', '.join(flag(n) for n in RESUMABLE)})"
                )
    changes = {n: getattr(candidate, n) for n in RESUMABLE if n in options}
    said = [
        f"{flag(n)} {show(v)} (was {show(getattr(saved, n))})"
        for n, v in changes.items()
        if v != getattr(saved, n)
    ]
    return dataclasses.replace(saved, **changes), said


# --- the machine ----------------------------------------------------------------------------


def local_cluster(address: str | None) -> bool:
    """The study starts a Ray of its own on this machine (no address, or `local`)."""
    return address in (None, "", "local")


def this_machine() -> dict[str, float]:
    """The resources a local Ray started here gets: every CPU and GPU of this machine."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_local_fit(spec: StudySpec) -> None:
    """On a local Ray, one trial's workers must fit this machine (known before Ray starts)."""
    node = this_machine()
    check_fits([node], spec.workers_per_trial, spec.cpus_per_worker, spec.gpus_per_worker)


def run_checked(step: Callable[[], Any]) -> Any:
    """Run a step whose errors are bad input: `ConfigError` becomes `InputError`."""
    try:
        return step()
    except ConfigError as error:
        raise InputError(str(error)) from None
