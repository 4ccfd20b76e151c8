"""The study CLI's options: the parser and every check on the options themselves (the spec they
resolve to is `tuner.resolve`).

Everything here runs before Ray starts and before anything is written: a bad input is one
`InputError` whose message names the option and what would work; `tuner.search` prints it as
one `error:` line and exits 2. Plain Python, no Ray.

Every option defaults to None in the parser, so "given" and "left to its default" can be told
apart: defaults are resolved in `build_spec`, and `--resume` refuses options that contradict the
saved study (`resume_spec`).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from trainables.config import BN_MODES
from tuner.cluster.address import address_problem
from tuner.errors import InputError
from tuner.option_bounds import (
    BRANCH_ONLY,
    SEED_MAX,
    check_bounds,
    check_branch,
    flag,
)
from tuner.store import objects as store
from tuner.tracking.checks import add_options as add_tracking_options

# --smoke: 2 batch sizes, one rule, 2 trials per cell, 1 confirmation seed, small data, 16 steps,
# no checks.
SMOKE = {
    "budget": "steps:16",
    "eval_every": 4,
    "grid": 2,
    "trials_per_cell": 2,
    "seeds": 1,
    "max_train_examples": 512,
}
# Default search trials: 8 per cell (a batch size, per optimiser). Measured on the synthetic
# objective of tests/test_cell_search.py: 8 quasi-random trials put every batch size's best lr
# within 2x of its optimum in 93% of seeded searches; 4 did in far fewer.
TRIALS_PER_BATCH = 8
MIN_TRIALS_PER_CELL = 8
SEEDS = 3  # confirmation runs of each cell's best
# --method branch: checkpoints of the base run (Merrill et al. branch at several points of
# training; four show the local critical batch size growing), fresh seeds of each rung's best
# lr (two: its spread is then known, at a third less than three), and --smoke's checkpoints.
BRANCH_AT = (0.01, 0.1, 0.25, 0.5)  # why: tuner/branch/plan.py
BRANCH_SEEDS = 2
SMOKE_BRANCH_AT = (0.25, 0.5)
GRACE = 1 / 9  # ASHA's first rung: 1/9 of the budget (rungs at 1/9 and 1/3 with factor 3)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_GRID = 64  # batch sizes in one grid: more is a typo, not a study
# Options that may change when a study is resumed; every other one must match the saved study.
RESUMABLE = ("max_concurrent", "worker_retries", "data_dir", "loader_workers", "speculate")
RUN_ONLY = (
    "address",
    "no_report",
    "skip_data_check",
    "storage",
    "name",
    "resume",
    "dry_run",
    "slots",
    "trust_code",
    "mlflow",
    "optuna_storage",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (exit 2), not usage plus a message."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def parse_lr_range(text: str) -> tuple[float, float]:
    """`0.001,0.3`: two positive finite numbers, the first below the second."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write LOW,HIGH, e.g. 0.001,0.3") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW < HIGH, e.g. 0.001,0.3")
    return low, high


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


def parse_fractions(text: str) -> tuple[float, ...]:
    """`0.1,0.25,0.5`: distinct fractions in (0, 1), sorted here."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of numbers; use e.g. 0.01,0.1,0.25,0.5"
        ) from None
    if not all(math.isfinite(v) and 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: every checkpoint is a fraction of the budget in (0, 1), e.g. 0.1,0.5"
        )
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} names a checkpoint twice")
    return tuple(sorted(values))


def build_parser(description: str = "") -> OneLineParser:
    """The parser of `python -m tuner.search` (its module docstring is the description)."""
    p = OneLineParser(
        prog="python -m tuner.search",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "workload",
        nargs="?",
        help="a built-in or installed workload (see --list), or your own: MODULE:ATTRIBUTE or "
        "FILE.py:ATTRIBUTE naming a tuner.Workload",
    )
    add("--list", action="store_true", help="list the workloads and exit")
    add("--dataset", help="data set (default: the workload's first)")
    add("--data-dir", help="where data files live or are downloaded to")
    add("--batch-sizes", type=parse_grid, help="grid: 8,32,128 or 8:512 (doubling)")
    add(
        "--trials",
        type=int,
        help=f"search trials (default: {MIN_TRIALS_PER_CELL} per cell, a cell being a batch "
        f"size, per optimiser); confirmation runs and checks come on top",
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
        "--max-steps",
        type=int,
        help="the most optimizer steps the more-steps check may give a batch size that falls "
        "short of the baseline (its budget doubles while that helps; default 0: twice the "
        "longest budget of the study, the smallest batch size's under an epoch budget)",
    )
    add(
        "--max-data-multiple",
        type=float,
        help="where --max-steps is not given: the more-steps check gives a batch size at most "
        "this many times the baseline's training examples (default 32; --dry-run prices every "
        "round up to it)",
    )
    add(
        "--speculate",
        type=int,
        help="doublings of the baseline's steps the more-steps check starts ahead of the "
        "batch sizes that will ask for them, so that a cluster's idle slots shorten the chain "
        "of baseline runs (no verdict changes; it costs the baseline runs no batch size then "
        "reaches; default: 1 where the study runs 16 or more trials at once, else 0)",
    )
    add(
        "--target-warmup",
        type=int,
        help="steps of the lr warmup in the runs that measure steps to target (a budget-free "
        "arm: then a constant lr, judged on a moving average of the weights; default 0)",
    )
    add(
        "--tolerance",
        type=float,
        help="how far below the baseline a batch size may fall and still hold: accuracy "
        "percentage points, or nats for a loss (default: 1 pt, 0.02 nats); the checks and "
        "the report judge by it",
    )
    add(
        "--no-rule-test",
        action="store_true",
        help="skip the rule test (the baseline's best moved to every batch size by each rule)",
    )
    add(
        "--no-budget-free",
        action="store_true",
        help="skip the budget-free runs that measure steps to target (a third of a small "
        "study's time); steps to target then come from the study's own runs and follow the "
        "budget's schedule",
    )
    add(
        "--no-checks",
        action="store_true",
        help="skip every check (the lr and more-steps checks and the rule test): a batch size "
        "short of the baseline is then reported under-trained, never degraded (--smoke does)",
    )
    add(
        "--stratify",
        help="dimensions that get a cell each, with its own share of trials: rule, optimizer, "
        "rule,optimizer or none (default: optimizer where there are several; rules are "
        "compared by the rule test)",
    )
    add("--rules", help="scaling rules to search, e.g. linear,sqrt (default: the workload's)")
    add("--optimizers", help="optimizers to search, e.g. sgd,lars (default: the workload's)")
    add(
        "--lr-range",
        type=parse_lr_range,
        help="the base lr's search range LOW,HIGH (log scale; the lr at the workload's "
        "reference batch) for every optimizer searched (default: the workload's); a best on "
        "its edge still extends it",
    )
    add("--seeds", type=int, help=f"confirmation runs of each cell's best (default {SEEDS})")
    add("--workers-per-trial", type=int, help="data-parallel workers per trial (default 1)")
    add("--cpus-per-worker", type=float, help="CPUs each worker holds (default 1)")
    add("--gpus-per-worker", type=float, help="default: 1 if the cluster has GPUs, else 0")
    add("--max-concurrent", type=int, help="trials at once (default 0: as many as fit)")
    add(
        "--accelerator-type",
        help="run every trial on nodes of this accelerator type (Ray's, e.g. A10G, A100; "
        "default: the cluster's only type, or where a GPU cluster mixes types the one that "
        "holds the most workers)",
    )
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
        "--trust-code",
        action="store_true",
        help="with --resume: continue a study another user or machine made (resuming runs "
        "its code: its workload and Tune's pickled state); only for a study you trust",
    )
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
    add_tracking_options(p)
    add(
        "--dry-run",
        action="store_true",
        help="print the planned trials and their estimated cost (from a short throughput probe "
        "on this machine) and exit: nothing trains, nothing is written, Ray does not start",
    )
    add(
        "--slots",
        type=int,
        help="with --dry-run: predict the wall time on this many trial slots (trials at once; "
        "default: what this machine holds)",
    )
    add(
        "--method",
        choices=("grid", "branch"),
        help="grid (default): search and confirm every batch size; branch: the local critical "
        "batch size from one base run at the smallest batch size, branched at 2x, 4x, ... "
        "from its checkpoints (Merrill et al. 2025; see README, 'The branched measurement')",
    )
    add(
        "--branch-at",
        type=parse_fractions,
        help="--method branch: the base run's checkpoints to branch from, fractions of its "
        "budget in (0, 1) (default 0.01,0.1,0.25,0.5)",
    )
    add(
        "--window",
        type=int,
        help="--method branch: examples each branch trains from its checkpoint (default: a "
        "tenth of the base run's examples); the ladder climbs as far as a batch size still "
        "takes 4 steps in it",
    )
    add(
        "--base-lr",
        type=float,
        help="--method branch: the base run's lr at the reference batch size (default: a "
        "short search over the lr range picks it)",
    )
    add(
        "--verify-schedule",
        action="store_true",
        help="--method branch: also run the batch-size schedule the branches suggest and the "
        "base run to the same data, and say whether it keeps within the tolerance",
    )
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


# --- single options -------------------------------------------------------------------------


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
    if "slots" in options and not options.get("dry_run"):
        raise InputError("--slots goes with --dry-run (the wall time it predicts on that many)")
    if options.get("dry_run") and options.get("resume"):
        raise InputError(
            "--dry-run plans a new study; a resumed study's plan is the one it started with "
            "(its report says what it cost so far)"
        )
    branch = options.get("method") == "branch"
    stray = [flag(name) for name in BRANCH_ONLY if name in options and not branch]
    if stray and not options.get("resume"):  # a resumed study's method is the saved one's
        verb = "applies" if len(stray) == 1 else "apply"
        raise InputError(f"{', '.join(stray)} only {verb} with --method branch")
    if branch:
        check_branch(options)
    if options.get("resume") and not options.get("name"):
        raise InputError("--resume needs --name NAME of the study to continue (and its --storage)")
    if options.get("trust_code") and not options.get("resume"):
        raise InputError("--trust-code goes with --resume (a new study runs the code you name)")
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
