"""Search ranges per workload, in batch-independent units.

`base_lr` is the lr at the workload's reference batch size; the scaling rule turns it into the
actual lr of a trial (`trainables.optim.scaled_lr`). Warmup is in epochs. The batch size itself
is not sampled freely: the study driver fixes it per trial so that every batch size of the grid
gets its share (see `tuner.searcher`); it is still an Optuna parameter, recorded with the trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the joint search (log ranges for lr and weight decay)."""

    base_lr: tuple[float, float]
    weight_decay: tuple[float, float]
    warmup_epochs: tuple[float, float]
    scaling_rules: tuple[str, ...] = ("none", "linear", "sqrt")
    optimizers: tuple[str, ...] = ("sgd",)

    def ranges(self) -> dict[str, Any]:
        """Every searched parameter with its range or choices (saved with the study)."""
        return {
            "base_lr": list(self.base_lr),
            "weight_decay": list(self.weight_decay),
            "warmup_epochs": list(self.warmup_epochs),
            "scaling_rule": list(self.scaling_rules),
            "optimizer": list(self.optimizers),
        }


SPACES: dict[str, SearchSpace] = {
    # Small CPU workloads: short runs, so warmup is at most a few epochs.
    "simple_cnn": SearchSpace(
        base_lr=(1e-3, 0.3), weight_decay=(1e-6, 1e-2), warmup_epochs=(0.0, 2.0)
    ),
    "mnist1d": SearchSpace(
        base_lr=(1e-3, 0.3), weight_decay=(1e-6, 1e-2), warmup_epochs=(0.0, 2.0)
    ),
    "resnet8": SearchSpace(
        base_lr=(1e-3, 1.0),
        weight_decay=(1e-5, 1e-2),
        warmup_epochs=(0.0, 5.0),
        optimizers=("sgd", "lars"),
    ),
    # Goyal et al.: lr 0.1 at batch 256, 5 warmup epochs, weight decay 1e-4; LARS for 32k.
    "resnet50": SearchSpace(
        base_lr=(1e-2, 1.0),
        weight_decay=(1e-5, 1e-3),
        warmup_epochs=(0.0, 5.0),
        optimizers=("sgd", "lars"),
    ),
    "vgg11": SearchSpace(
        base_lr=(1e-3, 0.3),
        weight_decay=(1e-5, 1e-3),
        warmup_epochs=(0.0, 5.0),
        optimizers=("sgd", "lars"),
    ),
}


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise KeyError(f"no search space {name!r}; known: {', '.join(sorted(SPACES))}")
    return SPACES[name]


def define_by_run(trial: Any, space: SearchSpace, batch_sizes: list[int]) -> dict[str, Any]:
    """Optuna define-by-run: suggest one point of the joint space; only `suggest_*` calls."""
    trial.suggest_categorical("batch_size", batch_sizes)
    trial.suggest_categorical("scaling_rule", list(space.scaling_rules))
    trial.suggest_categorical("optimizer", list(space.optimizers))
    trial.suggest_float("base_lr", *space.base_lr, log=True)
    trial.suggest_float("weight_decay", *space.weight_decay, log=True)
    trial.suggest_float("warmup_epochs", *space.warmup_epochs)
    return {}
