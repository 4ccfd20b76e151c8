"""The options checked one by one: each numeric option's range (`check_bounds` refuses a value
outside its own in one line, before anything starts) and what a branch study cannot take
(`check_branch`); `tuner.options` checks the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.errors import InputError

SEED_MAX = 2**32 - 1  # Optuna's samplers seed numpy, which takes 32 bits


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
    "slots": Bound(1, None, "trials at once in the predicted wall time"),
    "max_steps": Bound(0, None, "the most steps of the more-steps check; 0 means automatic"),
    "max_data_multiple": Bound(
        1, None, "the more-steps check's most data, a multiple of the baseline's examples"
    ),
    "target_warmup": Bound(0, None, "optimizer steps"),
    "speculate": Bound(0, 8, "doublings of the baseline's steps run ahead"),
    "tolerance": Bound(0, None, "percentage points (accuracy) or nats (loss)"),
    "window": Bound(1, None, "examples each branch trains"),
    "base_lr": Bound(0, None, "the base run's lr", low_open=True),
}

BRANCH_ONLY = ("branch_at", "window", "base_lr", "verify_schedule")


def flag(name: str) -> str:
    """`max_concurrent` -> `--max-concurrent`."""
    return "--" + name.replace("_", "-")


def show(value: Any) -> str:
    """A value as the user would type it: 8,32 for a grid, 4294967296 not 4.29497e+09."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


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
        low = f"above {show(bound.low)}" if bound.low_open else f"at least {show(bound.low)}"
        wanted = low if bound.high is None else f"{low} and at most {show(bound.high)}"
        raise InputError(f"{flag(name)} {show(value)}: must be {wanted} ({bound.meaning})")


def check_branch(options: dict[str, Any]) -> None:
    """What a branch study (tuner.branch) cannot take."""
    if "tolerance" in options and options["tolerance"] <= 0:
        raise InputError(
            f"--tolerance {show(options['tolerance'])}: a branch study compares branches within "
            f"a tolerance, which must be above 0 (default: half of what k=1 gains over the "
            f"window at each checkpoint)"
        )
    grid_only = ("stop_at_target", "no_rule_test", "no_checks", "trials", "grace")
    grid_only += ("grace_epochs", "reduction_factor", "max_steps", "max_data_multiple", "stratify")
    grid_only += ("target_warmup", "no_budget_free", "speculate")
    for name in grid_only:
        if name in options:
            raise InputError(f"{flag(name)} is an option of the grid method, not of a branch study")
    if options.get("seeds") == 0:
        raise InputError(
            "--seeds 0: a branch study confirms each rung's best lr with fresh seeds; give 1 or "
            "more (default 2)"
        )
