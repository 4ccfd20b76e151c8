"""The study's own checks of its answer, without Ray: would more steps have saved a batch size
(budget doubling), and which scaling rule keeps accuracy without retuning (the rule test).

- **More steps.** Under a schedule that decays to zero every run looks flat at its end, so a
  flat curve is no evidence that a batch size has trained enough. When a batch size's confirmed
  value falls short of the baseline's by more than the tolerance, its best configuration runs
  again with twice the budget, with the same seeds. If that closes the gap by more than the
  tolerance, the batch size was under-trained and the budget doubles again, up to the cap; it
  is *degraded* only when a doubling no longer helps (a plateau). `budget_check` is that
  decision, on the means of each budget level.
- **The rule test.** For each rule, the baseline's best configuration (its peak lr, warmup and
  weight decay) is moved to every batch size by the rule alone, no retuning, and run with the
  confirmation seeds: "under sqrt scaling with no retuning, accuracy holds up to B".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from search_spaces.spaces import warmup_acts
from trainables.optim import scaled_lr, scaling_factor

# The rule test's warmup where the baseline's own could not act (at or below the reference
# batch Goyal et al.'s ramp does nothing): their 5 of 90 epochs.
RULE_TEST_WARMUP = 0.05

HOLDS = "holds"  # within the tolerance of the baseline at this budget
DEGRADED = "degraded"  # short of it, and the last doubling gained no more than the tolerance
EXTEND = "extend"  # short of it, and twice the budget may still save it: run it
CAPPED = "capped"  # short of it, and the next doubling would pass the cap
DIVERGED = "diverged"  # no run of the last budget ended with a value


@dataclass(frozen=True)
class BudgetCheck:
    """What the budget levels of one batch size say (see the module docstring)."""

    state: str
    steps: int  # the budget it is judged at: its last level's
    next_steps: int | None = None  # the budget to run next (state EXTEND)
    gain: float = math.nan  # the last doubling's improvement (positive: better)

    @property
    def improving(self) -> bool:
        """The last doubling still helped by more than the tolerance (or nothing was doubled)."""
        return self.state == CAPPED

    def describe(self, tolerance_text: str) -> str:
        if self.state == HOLDS:
            return f"holds at {self.steps} steps"
        if self.state == DEGRADED:
            return f"plateau: twice the steps gained no more than {tolerance_text}"
        if self.state == CAPPED:
            if math.isnan(self.gain):
                return f"not checked with more steps: {2 * self.steps} would pass --max-steps"
            return f"still improving at the cap ({self.steps} steps, --max-steps)"
        if self.state == DIVERGED:
            return f"diverged at {self.steps} steps"
        return f"being checked at {self.next_steps} steps"


def budget_check(
    baseline: float,
    levels: list[tuple[int, float]],
    tolerance: float,
    cap: int,
    sign: int = 1,
) -> BudgetCheck:
    """Decide one batch size from its budget levels: (steps, mean value) in increasing steps,
    the first the study's own budget. `sign` is +1 where higher is better (accuracy), -1 for a
    loss; `tolerance` in the metric's units; `cap` the most steps a run may have."""
    if not levels:
        raise ValueError("budget_check needs at least one budget level")
    steps, value = levels[-1]
    if not math.isfinite(value):
        return BudgetCheck(DIVERGED, steps)
    gain = sign * (value - levels[-2][1]) if len(levels) > 1 else math.nan
    if sign * (baseline - value) <= tolerance:
        return BudgetCheck(HOLDS, steps, gain=gain)
    if len(levels) > 1 and math.isfinite(gain) and gain <= tolerance:
        return BudgetCheck(DEGRADED, steps, gain=gain)
    if 2 * steps > cap:
        return BudgetCheck(CAPPED, steps, gain=gain)
    return BudgetCheck(EXTEND, steps, next_steps=2 * steps, gain=gain)


def rule_test_params(
    best: dict[str, Any], base_batch: int, batch_size: int, rule: str, reference_batch: int
) -> dict[str, Any]:
    """The baseline's best configuration (`best`, at `base_batch`) moved to `batch_size` by
    `rule` alone: the peak lr scales by the rule's factor between the two batch sizes (expressed
    as a base lr at the reference batch, as every trial's is); weight decay is the baseline's;
    warmup is the baseline's where it searched one, else `RULE_TEST_WARMUP`, and none where
    the rule does not raise the lr above the reference batch's."""
    peak = scaled_lr(best["base_lr"], best["scaling_rule"], base_batch, reference_batch)
    base_lr = peak / scaling_factor(rule, base_batch, reference_batch)
    warmup = best.get("warmup_fraction") or RULE_TEST_WARMUP
    return {
        "batch_size": batch_size,
        "scaling_rule": rule,
        "optimizer": best["optimizer"],
        "base_lr": base_lr,
        "weight_decay": best["weight_decay"],
        "warmup_fraction": warmup if warmup_acts(rule, batch_size, reference_batch) else 0.0,
    }
