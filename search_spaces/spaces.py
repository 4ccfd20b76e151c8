"""Search ranges per workload, in batch-independent units, and one trial's suggestion.

`base_lr` is the lr at the workload's reference batch size; the scaling rule turns it into the
actual lr of a trial (`trainables.optim.scaled_lr`). Its range depends on the optimiser: LARS
and LAMB scale each layer's step by a trust ratio, so their lrs live on other scales than
SGD's (science.md section 3; measured here: one LARS step at lr 0.1 moves a conv layer's
weights 57x less than SGD's). Warmup is a fraction of the trial's budget, a ramp from 0 to the
peak lr (`trainables.optim.lr_at_step`), searched in the same range at every batch size, the
baseline's included (issue 32: whatever a larger batch size gets, the baseline gets too).
Where a workload asks (`momentum=`, `beta2=` ranges), the momentum (SGD's, LARS's; AdamW's and
LAMB's beta1) and AdamW's / LAMB's beta2 are searched too, on a log scale of 1 - value (the
Deep Learning Tuning Playbook's advice: 0.9 -> 0.99 is as large a step as 0.99 -> 0.999).

The batch size is not sampled: the search gives every cell (batch size x rule x optimiser, see
`search_spaces.cells`) its share of trials and asks that cell's own Optuna study.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from trainables.config import WARMUP_MAX_FRACTION

# Searched as 1 - value on a log scale (Optuna's name: GAP_PREFIX + name)
GAP_PARAMS = ("momentum", "beta2")
GAP_PREFIX = "one_minus_"
ADAM_FAMILY = frozenset({"adamw", "lamb"})  # the optimisers with a beta2


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the search (log ranges for lr and weight decay)."""

    base_lr: dict[str, tuple[float, float]]  # per optimiser, at the reference batch size
    weight_decay: tuple[float, float]
    warmup_fraction: tuple[float, float]  # of the budget's steps
    scaling_rules: tuple[str, ...] = ("none", "linear", "sqrt")
    optimizers: tuple[str, ...] = ("sgd",)
    # searched where given (None: the workload's fixed value), each in (0, 1)
    momentum: tuple[float, float] | None = None  # SGD / LARS momentum, AdamW / LAMB beta1
    beta2: tuple[float, float] | None = None  # AdamW / LAMB only

    def __post_init__(self) -> None:
        missing = [o for o in self.optimizers if o not in self.base_lr]
        if missing:
            raise ValueError(f"no base_lr range for optimizer(s) {missing}")
        if not 0 <= self.warmup_fraction[0] <= self.warmup_fraction[1] <= WARMUP_MAX_FRACTION:
            raise ValueError(f"warmup_fraction range must lie in [0, {WARMUP_MAX_FRACTION}]")
        for name in GAP_PARAMS:
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] < bounds[1] < 1:
                raise ValueError(f"{name} range must be LOW < HIGH inside (0, 1), not {bounds}")
        if self.beta2 is not None and not set(self.optimizers) & ADAM_FAMILY:
            raise ValueError(
                f"a beta2 range is searched by {', '.join(sorted(ADAM_FAMILY))} only, not "
                f"{', '.join(self.optimizers)}"
            )

    def ranges(self) -> dict[str, Any]:
        """Every searched parameter with its range or choices (saved with the study)."""
        out = {
            "base_lr": {o: list(self.base_lr[o]) for o in self.optimizers},
            "weight_decay": list(self.weight_decay),
            "warmup_fraction": list(self.warmup_fraction),
            "scaling_rule": list(self.scaling_rules),
            "optimizer": list(self.optimizers),
        }
        return out | {name: list(getattr(self, name)) for name in self.gap_params()}

    @classmethod
    def from_ranges(cls, ranges: dict[str, Any]) -> SearchSpace:
        """The space a study saved (`ranges()` read back from study.json)."""
        return cls(
            base_lr={o: tuple(r) for o, r in ranges["base_lr"].items()},
            weight_decay=tuple(ranges["weight_decay"]),
            warmup_fraction=tuple(ranges["warmup_fraction"]),
            scaling_rules=tuple(ranges["scaling_rule"]),
            optimizers=tuple(ranges["optimizer"]),
            **{name: tuple(ranges[name]) for name in GAP_PARAMS if name in ranges},
        )

    def gap_params(self, optimizer: str | None = None) -> tuple[str, ...]:
        """The momentum-like parameters this space searches (for `optimizer`: those it has)."""
        return tuple(
            name
            for name in GAP_PARAMS
            if getattr(self, name) is not None
            and (name != "beta2" or optimizer is None or optimizer in ADAM_FAMILY)
        )

    def restricted(
        self, rules: tuple[str, ...] | None = None, optimizers: tuple[str, ...] | None = None
    ) -> SearchSpace:
        """The space with fewer rules or optimisers (`--rules`, `--optimizers`)."""
        for name, chosen, known in (
            ("rules", rules, self.scaling_rules),
            ("optimizers", optimizers, self.optimizers),
        ):
            unknown = [c for c in chosen or () if c not in known]
            if unknown:
                raise ValueError(
                    f"--{name} {','.join(unknown)}: not in this workload's space "
                    f"({','.join(known)})"
                )
        return dataclasses.replace(
            self,
            scaling_rules=tuple(rules or self.scaling_rules),
            optimizers=tuple(optimizers or self.optimizers),
        )


EDGE_FRACTION = 0.05  # a best value within 5% of its (log) range's width from a bound: on the edge


def search_rule(space: SearchSpace) -> str:
    """The rule that places a cell's lr range when the rule is not a cell of its own.

    At one batch size a rule only rescales the lr, so searching it inside a cell spends trials
    on a reparametrisation; the rules are compared by the rule test instead
    (`search_spaces.checks`). Square root sits between no scaling and linear, where the optimum
    usually grows (science.md section 3), so the range follows the optimum from batch to batch.
    """
    return "sqrt" if "sqrt" in space.scaling_rules else space.scaling_rules[0]


def range_position(value: float, low: float, high: float, log: bool) -> float:
    """Where `value` sits in [low, high]: 0 at the lower bound, 1 at the upper one."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low) if high > low else 0.5


def edge_side(value: float, low: float, high: float, zone: float = EDGE_FRACTION) -> str | None:
    """'lower' / 'upper' when `value` sits within `zone` (a fraction of the log range's width)
    of that bound of [low, high], else None."""
    position = range_position(value, low, high, log=True)
    if position <= zone:
        return "lower"
    if position >= 1 - zone:
        return "upper"
    return None


EDGE_ZONE = 0.2  # the outer fifth of a (log) lr range, at either end


def lr_edge(best_lr: float, tried: list[float], low: float, high: float) -> str | None:
    """The side on which a cell's best lr leaves its search open: no lr was tried beyond it, and
    it lies in the outer fifth of the range there (the optimum may be past the range). The
    search moves its range that way (`CellSearch`); at the end, the report calls such a cell
    under-searched."""
    side = edge_side(best_lr, low, high, EDGE_ZONE)
    if side == "upper" and best_lr >= max(tried):
        return side
    if side == "lower" and best_lr <= min(tried):
        return side
    return None


def lr_param(optimizer: str, per_optimizer: bool) -> str:
    """Optuna's name of the base lr: one per optimiser when a cell searches several, as their
    ranges differ."""
    return f"base_lr_{optimizer}" if per_optimizer else "base_lr"


def suggest(
    trial: Any,
    space: SearchSpace,
    batch_size: int,
    rule: str | None = None,
    optimizer: str | None = None,
) -> dict[str, Any]:
    """One point for a trial of `batch_size` (Optuna define-by-run: only `suggest_*` calls);
    `optimizer` fixed by the cell, else searched; `rule` fixed by the cell, else the search
    rule (`search_rule`). Returns the trial's parameters."""
    rule = rule or search_rule(space)
    if optimizer is None:
        optimizer = trial.suggest_categorical("optimizer", list(space.optimizers))
        per_optimizer = len(space.optimizers) > 1
    else:
        per_optimizer = False
    low, high = space.base_lr[optimizer]
    base_lr = trial.suggest_float(lr_param(optimizer, per_optimizer), low, high, log=True)
    weight_decay = trial.suggest_float("weight_decay", *space.weight_decay, log=True)
    warmup = 0.0
    if space.warmup_fraction[1] > 0:  # at every batch size, the baseline's too (issue 32)
        warmup = trial.suggest_float("warmup_fraction", *space.warmup_fraction)
    gaps = {}
    for name in space.gap_params(optimizer):
        low, high = getattr(space, name)
        gaps[name] = 1 - trial.suggest_float(GAP_PREFIX + name, 1 - high, 1 - low, log=True)
    return {
        "batch_size": batch_size,
        "scaling_rule": rule,
        "optimizer": optimizer,
        "base_lr": base_lr,
        "weight_decay": weight_decay,
        "warmup_fraction": warmup,
        **gaps,
    }


def gap_values(params: dict[str, Any]) -> dict[str, float]:
    """The searched momentum-like values of a trial's parameters (none where not searched): a
    confirmation, a check or the rule test runs with the configuration's own."""
    return {name: float(params[name]) for name in GAP_PARAMS if name in params}
