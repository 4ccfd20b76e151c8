"""A trial's training budget and when it is evaluated, in optimizer steps at every batch size.

A budget is one of (science.md sections 6 and 8):
- `epochs:E`   equal data: E passes over the training set (favours small batches);
- `steps:S`    equal optimizer steps at every batch size (Hoffer et al.'s regime adaptation);
- `examples:N` equal examples seen (the same as epochs, in examples).
An optional floor (`min_steps`) gives every batch size at least that many steps, so that an
epoch or example budget never leaves a large batch a handful of updates.

`Budget.steps(n_train, batch)` is the one conversion to optimizer steps; warmup and decay are
fractions of it, and evaluations fall on `evaluation_steps`. Plain Python, no torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

UNITS = ("epochs", "steps", "examples")
EVALUATIONS = 20  # default evaluations per trial, at every batch size


class BudgetError(ValueError):
    """A budget that cannot be parsed or run; the message is one line."""


@dataclass(frozen=True)
class Budget:
    """How long one trial trains: `amount` of `unit`, and never fewer than `min_steps` steps."""

    unit: str
    amount: float
    min_steps: int = 0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise BudgetError(f"budget unit {self.unit!r}: use one of {', '.join(UNITS)}")
        whole = self.unit != "epochs"  # steps and examples are counts
        if not math.isfinite(self.amount) or self.amount <= 0 or (whole and self.amount % 1):
            kind = "a positive whole number" if whole else "a positive number"
            raise BudgetError(f"budget {self.unit}:{self.amount:g}: the amount must be {kind}")
        if self.min_steps < 0:
            raise BudgetError(f"minimum steps {self.min_steps}: must be >= 0")

    @classmethod
    def parse(cls, text: str, min_steps: int = 0) -> Budget:
        """`epochs:6`, `steps:300` or `examples:100000`."""
        unit, sep, amount = text.partition(":")
        if not sep:
            raise BudgetError(
                f"budget {text!r}: write UNIT:AMOUNT, e.g. steps:300, epochs:6 or examples:100000"
            )
        try:
            value = float(amount)
        except ValueError:
            raise BudgetError(f"budget {text!r}: {amount!r} is not a number") from None
        return cls(unit.strip(), value, min_steps)

    def steps(self, n_train: int, batch: int) -> int:
        """Optimizer steps at `batch` for a training set of `n_train` examples (at least 1)."""
        if self.unit == "steps":
            steps = int(self.amount)
        elif self.unit == "epochs":
            # Full global batches per epoch (the last partial batch is dropped), as trained.
            steps = math.floor(self.amount * (n_train // batch))
        else:
            steps = int(self.amount) // batch
        return max(steps, self.min_steps, 1)

    def __str__(self) -> str:
        amount = f"{self.amount:g}"
        floor = f" (at least {self.min_steps} steps)" if self.min_steps else ""
        return f"{self.unit}:{amount}{floor}"

    def describe(self) -> str:
        """What the budget means for a comparison across batch sizes (said in the report).
        A floor of steps breaks equal data: where it binds, a batch size trains the floor's
        steps, more examples than the baseline (the report's data ratios say how many)."""
        meaning = {
            "epochs": "equal data at every batch size (favours small batches)",
            "steps": "equal optimizer steps at every batch size, so more data at the larger "
            "ones (favours large batches)",
            "examples": "equal examples at every batch size (favours small batches)",
        }[self.unit]
        if self.min_steps and self.unit != "steps":
            meaning = (
                f"equal data only where that is at least {self.min_steps} steps; where it is "
                f"fewer (the larger batch sizes) a trial runs {self.min_steps} steps, more "
                f"data than the baseline"
            )
        elif self.min_steps:
            meaning += f", and at least {self.min_steps} steps"
        return f"{self.amount:g} {self.unit} per trial: {meaning}"


def default_eval_every(total_steps: int, evaluations: int = EVALUATIONS) -> int:
    """Steps between evaluations for about `evaluations` evaluations per trial."""
    return max(1, round(total_steps / evaluations))


def evaluation_steps(total_steps: int, eval_every: int) -> list[int]:
    """The steps after which a trial evaluates: every `eval_every`, and always at its end."""
    if total_steps < 1 or eval_every < 1:
        raise BudgetError(f"total steps {total_steps} and eval_every {eval_every} must be >= 1")
    steps = list(range(eval_every, total_steps + 1, eval_every))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def warmup_steps(warmup_fraction: float, total_steps: int) -> int:
    """Warmup in steps: a fraction of the budget (0 <= fraction < 1)."""
    if not 0 <= warmup_fraction < 1:
        raise BudgetError(f"warmup fraction {warmup_fraction:g} must be in [0, 1)")
    return round(warmup_fraction * total_steps)
