"""The study CLI's options: the parser, every check on them, and the spec they resolve to.

Everything here runs before Ray starts and before anything is written: a bad input is one
`InputError` whose message names the option and what would work; `tuner.search` prints it as
one `error:` line and exits 2. Plain Python, no Ray.

Every option defaults to None in the parser, so "given" and "left to its default" can be told
apart: defaults are resolved in `build_spec`, and `--resume` refuses options that contradict the
saved study (`resume_spec`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from search_spaces.cells import STRATA, default_strata, study_cells
from trainables.budget import Budget, BudgetError
from trainables.config import BN_MODES, ConfigError
from trainables.metrics import get_metric
from trainables.workloads import get_workload
from tuner.cluster.address import address_problem
from tuner.cluster.capacity import check_fits
from tuner.errors import InputError
from tuner.spec import StudySpec
from tuner.store import objects as store

# --smoke: 2 batch sizes, one rule, 2 trials per cell, 1 confirmation seed, small data, 16 steps.
SMOKE = {
    "budget": "steps:16",
    "eval_every": 4,
    "grid": 2,
    "trials_per_cell": 2,
    "seeds": 1,
    "max_train_examples": 512,
}
# Default search trials: 8 per batch size, shared by its cells, and at least 4 per cell. Measured
# on the synthetic objective of tests/test_cell_search.py: 8 quasi-random trials put every batch
# size's best lr within 2x of its optimum in 93% of seeded searches.
TRIALS_PER_BATCH = 8
MIN_TRIALS_PER_CELL = 4
SEEDS = 3  # confirmation runs of each cell's best
GRACE = 1 / 9  # ASHA's first rung: 1/9 of the budget (rungs at 1/9 and 1/3 with factor 3)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEED_MAX = 2**32 - 1  # Optuna's samplers seed numpy, which takes 32 bits
MAX_GRID = 64  # batch sizes in one grid: more is a typo, not a study
# Options that may change when a study is resumed; every other one must match the saved study.
RESUMABLE = ("max_concurrent", "worker_retries", "data_dir", "loader_workers")
RUN_ONLY = ("address", "no_report", "skip_data_check", "storage", "name", "resume")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (exit 2), not usage plus a message."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def parse_grid(text: str) -> tuple[int, ...]:
    """`8,32,128` (sorted here) or a doubling range `8:512`; positive, distinct, non-empty."""
    example = "use e.g. 8,32,128 or the doubling range 8:512"
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            if low < 1 or high < 1:
                raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be >= 1; {example}")
            if low > high:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is an empty range (its start is above its end); {example}"
                )
            count = int(math.log2(high / low)) + 1
            if count > MAX_GRID:
                raise argparse.ArgumentTypeError(f"{text!r} has over {MAX_GRID} batch sizes")
            return tuple(low * 2**k for k in range(count))
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers; {example}") from None
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be >= 1")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"{text!r} names a batch size twice")
    if len(sizes) > MAX_GRID:
        raise argparse.ArgumentTypeError(f"{text!r} has over {MAX_GRID} batch sizes")
    return tuple(sorted(sizes))


def build_parser(description: str = "") -> OneLineParser:
    """The parser of `python -m tuner.search` (its module docstring is the description)."""
    p = OneLineParser(
        prog="python -m tuner.search",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("workload", nargs="?", help="registered workload (see --list)")
    add("--list", action="store_true", help="list the workloads and exit")
    add("--dataset", help="data set (default: the workload's first)")
    add("--data-dir", help="where data files live or are downloaded to")
    add("--batch-sizes", type=parse_grid, help="grid: 8,32,128 or 8:512 (doubling)")
    add(
        "--trials",
        type=int,
        help=f"search trials (default: {TRIALS_PER_BATCH} per batch size, at least "
        f"{MIN_TRIALS_PER_CELL} per cell); confirmation runs come on top",
    )
    add(
        "--budget",
        help="per trial: epochs:E (equal data), steps:S (equal optimizer steps) or examples:N "
        "(default: the workload's, see --list)",
    )
    add("--epochs", type=int, help="the same as --budget epochs:E")
    add(
        "--min-steps",
        type=int,
        help="every batch size trains at least this many optimizer steps (default: the "
        "workload's; 0 for none)",
    )
    add("--eval-every", type=int, help="optimizer steps between evaluations (default: ~20/trial)")
    add("--stop-at-target", action="store_true", help="end a trial once it reaches the target")
    add(
        "--stratify",
        help="dimensions that get a cell each, with its own share of trials: rule, optimizer, "
        "rule,optimizer or none (default: every one searched with more than one choice)",
    )
    add("--rules", help="scaling rules to search, e.g. linear,sqrt (default: the workload's)")
    add("--optimizers", help="optimizers to search, e.g. sgd,lars (default: the workload's)")
    add("--seeds", type=int, help=f"confirmation runs of each cell's best (default {SEEDS})")
    add("--workers-per-trial", type=int, help="data-parallel workers per trial (default 1)")
    add("--cpus-per-worker", type=float, help="CPUs each worker holds (default 1)")
    add("--gpus-per-worker", type=float, help="default: 1 if the cluster has GPUs, else 0")
    add("--max-concurrent", type=int, help="trials at once (default 0: as many as fit)")
    add(
        "--max-device-batch",
        type=int,
        help="largest micro-batch per worker; larger shares accumulate gradients",
    )
    add("--max-train-examples", type=int, help="train on a seeded subset of this size (0: all)")
    add(
        "--bn-mode",
        choices=BN_MODES,
        help="BatchNorm statistics (default ghost: the same BN batch at every batch size)",
    )
    add("--ghost-batch", type=int, help="examples per ghost BatchNorm group (default: workload's)")
    add("--grace", type=float, help="ASHA's first rung, a fraction of the budget (default 1/9)")
    add("--grace-epochs", type=int, help="ASHA's first rung in epochs (epoch budgets only)")
    add("--reduction-factor", type=int, help="ASHA's reduction factor (default 3)")
    add(
        "--divergence-factor",
        type=float,
        help="a train loss above this x ln(classes) counts as diverged (default 5)",
    )
    add(
        "--worker-retries",
        type=int,
        help="restarts of a trial's worker group from its last checkpoint (default 2)",
    )
    add(
        "--target",
        type=float,
        help="target for steps-to-target: a validation accuracy in (0, 1] "
        "(classification) or a validation loss in nats (language models)",
    )
    add(
        "--storage",
        help="where studies live (default: studies): a directory (shared by all nodes on a "
        "cluster) or an object-store URI such as s3://bucket/studies (then the driver keeps a "
        "local working copy; see docs/cluster.md)",
    )
    add("--name", help="study name (default: WORKLOAD-DATASET-TIMESTAMP)")
    add("--seed", type=int, help=f"seed of the search, data split and trials (0..{SEED_MAX})")
    add(
        "--address",
        help="Ray cluster to join: host:port, or `auto` for the one "
        "running on this machine (default: $RAY_ADDRESS, else a new local Ray)",
    )
    add("--resume", action="store_true", help="continue the study named by --name")
    add(
        "--smoke",
        action="store_true",
        help="tiny study: 2 batch sizes, one rule, 16 steps, 4 trials + 2 confirmations",
    )
    add(
        "--skip-data-check",
        action="store_true",
        help="do not check the data on this machine (it lives on the workers)",
    )
    add("--no-report", action="store_true", help="do not write the report at the end")
    add(
        "--compile",
        action="store_true",
        help="torch.compile each trial's model (its compile time is reported as first_step_s)",
    )
    add(
        "--loader-workers",
        type=int,
        help="DataLoader processes per worker for ImageFolder data (default: its CPUs)",
    )
    add(
        "--decode",
        choices=("auto", "gpu", "cpu"),
        help="where ImageFolder JPEGs are decoded and augmented (default auto: gpu on GPU "
        "workers, with torchvision's nvJPEG; cpu: PIL in the loader processes)",
    )
    return p


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user typed (a flag counts when set)."""
    return {k: v for k, v in vars(args).items() if v is not None and v is not False}


def flag(name: str) -> str:
    """`max_concurrent` -> `--max-concurrent`."""
    return "--" + name.replace("_", "-")


# --- single options -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """An inclusive range for one numeric option, and what the option means."""

    low: float
    high: float | None
    meaning: str
    low_open: bool = False  # the low end itself is refused (e.g. > 0)


BOUNDS: dict[str, Bound] = {
    "trials": Bound(1, None, "trials in the study"),
    "epochs": Bound(1, None, "epochs per trial"),
    "workers_per_trial": Bound(1, None, "data-parallel workers per trial"),
    "cpus_per_worker": Bound(0, None, "CPUs each worker holds", low_open=True),
    "gpus_per_worker": Bound(0, 1, "GPUs each worker holds (a fraction shares one GPU)"),
    "max_concurrent": Bound(0, None, "trials at once; 0 means as many as the cluster holds"),
    "max_device_batch": Bound(1, None, "the largest micro-batch of one worker"),
    "max_train_examples": Bound(0, None, "training examples kept; 0 means all"),
    "ghost_batch": Bound(1, None, "examples per ghost BatchNorm group"),
    "grace_epochs": Bound(1, None, "epochs before ASHA's first rung"),
    "grace": Bound(0, 1, "a fraction of the budget", low_open=True),
    "min_steps": Bound(0, None, "optimizer steps every batch size trains at least"),
    "eval_every": Bound(1, None, "optimizer steps between evaluations"),
    "seeds": Bound(0, 100, "confirmation runs of each cell's best; 0 skips them"),
    "reduction_factor": Bound(2, None, "ASHA keeps 1 in this many trials at each rung"),
    "divergence_factor": Bound(1, None, "multiples of the chance-level loss", low_open=True),
    "worker_retries": Bound(0, None, "restarts of a failed worker group; 0 means none"),
    "loader_workers": Bound(1, 64, "DataLoader processes per worker"),
    # Its upper end depends on the workload's metric (an accuracy <= 1, a loss in nats).
    "target": Bound(0, None, "a target accuracy or validation loss", low_open=True),
    "seed": Bound(0, SEED_MAX, "the seed"),
}


def check_bounds(options: dict[str, Any]) -> None:
    """Every numeric option within its range, finite."""
    for name, bound in BOUNDS.items():
        value = options.get(name)
        if value is None:
            continue
        low_ok = value > bound.low if bound.low_open else value >= bound.low
        high_ok = bound.high is None or value <= bound.high
        if math.isfinite(value) and low_ok and high_ok:
            continue
        low = f"above {_show(bound.low)}" if bound.low_open else f"at least {_show(bound.low)}"
        wanted = low if bound.high is None else f"{low} and at most {_show(bound.high)}"
        raise InputError(f"{flag(name)} {_show(value)}: must be {wanted} ({bound.meaning})")


def check_name_and_storage(options: dict[str, Any]) -> None:
    name = options.get("name")
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' only, starting with a "
            f"letter or digit, at most 128 characters (the study is STORAGE/NAME)"
        )
    storage = options.get("storage")
    if storage is not None and not storage.strip():
        raise InputError("--storage is empty: give a directory or an object-store URI")


def check_combinations(options: dict[str, Any]) -> None:
    """Options that are fine alone but not together."""
    if "ghost_batch" in options and options.get("bn_mode", "ghost") != "ghost":
        raise InputError("--ghost-batch only applies with --bn-mode ghost")
    if "epochs" in options and "budget" in options:
        raise InputError("--epochs E is --budget epochs:E: give one of them")
    if "grace" in options and "grace_epochs" in options:
        raise InputError("--grace-epochs E is --grace E/epochs: give one of them")
    if "address" in options:
        problem = address_problem(options["address"])
        if problem:
            raise InputError(f"--address {options['address']}: {problem}")
    if options.get("resume") and not options.get("name"):
        raise InputError("--resume needs --name NAME of the study to continue (and its --storage)")
    if not options.get("resume") and not options.get("workload"):
        raise InputError("name a workload (python -m tuner.search --list shows them)")


def check_options(args: argparse.Namespace) -> None:
    """Every check that needs no workload and no cluster."""
    options = given(args)
    check_bounds(options)
    check_name_and_storage(options)
    check_combinations(options)


# --- the spec -------------------------------------------------------------------------------


def absolute_storage(storage: str) -> str:
    """--storage as the spec keeps it: a URI as given, a directory made absolute."""
    return storage if store.is_uri(storage) else str(Path(storage).resolve())


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


def resolve_grace(args: argparse.Namespace, budget: str) -> float:
    """ASHA's first rung as a fraction of the budget (--grace-epochs: epoch budgets only)."""
    if args.grace_epochs is None:
        return pick(args.grace, GRACE)
    unit, _, amount = budget.partition(":")
    if unit != "epochs":
        raise InputError(
            f"--grace-epochs needs an epochs budget (this study's is {budget}); use --grace "
            f"FRACTION of the budget"
        )
    if args.grace_epochs >= float(amount):
        raise InputError(
            f"--grace-epochs {args.grace_epochs} is not before the end of the {amount}-epoch "
            f"budget: ASHA's first rung must come before the end"
        )
    return args.grace_epochs / float(amount)


def build_spec(args: argparse.Namespace, gpus_available: bool | None) -> StudySpec:
    """Turn CLI options into a validated spec; `InputError` / `ConfigError` on bad input.

    `gpus_available` is whether the cluster has GPUs, None when unknown before Ray starts (a
    remote cluster): then GPU workers are not assumed, and the session decides once it knows.
    """
    from trainables.data import NEEDS_FILES

    try:
        workload = get_workload(args.workload)
    except KeyError as error:
        raise InputError(str(error).strip("'\"")) from None
    dataset = args.dataset or workload.default_dataset
    if args.smoke and not args.dataset and dataset in NEEDS_FILES:
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
        space = workload.space.restricted(rules, _choices(args.optimizers, "--optimizers"))
    except ValueError as error:
        raise InputError(str(error)) from None
    strata = _choices(args.stratify, "--stratify")
    strata = default_strata(space) if strata is None else tuple(s for s in strata if s != "none")
    unknown = [s for s in strata if s not in STRATA]
    if unknown:
        raise InputError(f"--stratify {','.join(unknown)}: use rule, optimizer, both or none")
    metric = get_metric(workload.metric)
    if args.target is not None and (problem := metric.target_problem(args.target)):
        raise InputError(f"{problem}: {workload.name} is judged by {metric.label}")
    budget, min_steps = resolve_budget(args, settings, args.smoke)
    cells = len(study_cells(grid, space, strata))
    per_cell = max(MIN_TRIALS_PER_CELL, math.ceil(TRIALS_PER_BATCH * len(grid) / cells))
    if args.smoke:
        per_cell = SMOKE["trials_per_cell"]
    gpus = pick(args.gpus_per_worker, 1.0 if gpus_available else 0.0)
    spec = StudySpec(
        workload=workload.name,
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
        storage=absolute_storage(pick(args.storage, "studies")),
        name=args.name or f"{workload.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
        seed=pick(args.seed, 0),
        max_device_batch=pick(args.max_device_batch, settings.max_device_batch),
        max_train_examples=max_train,
        bn_mode=pick(args.bn_mode, "ghost"),
        ghost_batch=pick(args.ghost_batch, workload.bn_batch),
        grace=resolve_grace(args, budget),
        reduction_factor=pick(args.reduction_factor, 3),
        divergence_factor=pick(args.divergence_factor, 5.0),
        worker_retries=pick(args.worker_retries, 2),
        target=pick(args.target, settings.target),
        stop_at_target=bool(args.stop_at_target),
        metric=metric.name,
        strata=strata,
        seeds=pick(args.seeds, SMOKE["seeds"] if args.smoke else SEEDS),
        search_ranges=space.ranges(),
        compile=bool(args.compile),
        loader_workers=pick(args.loader_workers, 0),
        decode=pick(args.decode, "auto"),
    )
    spec.validate()
    return spec


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
    "seeds": ("seeds",),
    "seed": ("seed",),
    "compile": ("compile",),
    "decode": ("decode",),
    "smoke": ("budget", "batch_sizes", "trials", "max_train_examples", "seeds"),
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
                shown = "" if isinstance(options[option], bool) else f" {_show(options[option])}"
                raise InputError(
                    f"--resume continues {saved.name} as it was saved: {flag(option)}{shown} "
                    f"contradicts its {field} {_show(old)}; drop the option (those that may "
                    f"change on resume: {', '.join(flag(n) for n in RESUMABLE)})"
                )
    changes = {n: getattr(candidate, n) for n in RESUMABLE if n in options}
    said = [
        f"{flag(n)} {_show(v)} (was {_show(getattr(saved, n))})"
        for n, v in changes.items()
        if v != getattr(saved, n)
    ]
    return dataclasses.replace(saved, **changes), said


def _show(value: Any) -> str:
    """A value as the user would type it: 8,32 for a grid, 4294967296 not 4.29497e+09."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


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
