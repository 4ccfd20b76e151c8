"""The study's own checks of its answer, without Ray: would more steps have saved a batch size
(budget doubling), and which scaling rule keeps accuracy without retuning (the rule test).

- **A better lr, more steps.** Under a schedule that decays to zero every run looks flat at
  its end, so a flat curve is no evidence that a batch size has trained enough; and a search
  of a few points can land next to an lr that trains unstably (mnist1d's loss spikes at peak lr
  ~0.15 ruined single seeds). When a batch size's confirmed value falls short of the
  baseline's by more than the tolerance, its best configuration runs again, with the same
  seeds, at half and at twice its lr (the better moves it, as long as one gains more than the
  tolerance), then with twice the steps, doubling while that helps, up to the cap. It is
  *degraded* only where neither helps: at a plateau, a doubling of the steps whose gain is
  shown to be within the tolerance (its one-sided 95% upper bound, paired over the seeds both
  levels ran; issue 32), not merely measured so (mnist1d's batch 256 read 92.0 -> 92.9 ->
  93.5% at 600 / 1200 / 2400 steps: "a plateau at 1200" by the point gain, still rising).
  Where the gain is not shown, the steps go on doubling to the cap ("still improving").
  `budget_check` is that decision, on the mean value of each (steps, lr) level and its runs
  by seed.
- **The baseline** gets the same lr check (half and twice its lr): a weak baseline would make
  every larger batch size look better than it is. And where a batch size is compared at m
  times its budget, the baseline (at its checked lr) runs at m times its own, with the same
  seeds: more steps are given to both sides, never to one (issue 32).
- **Equal data.** Where a batch size's budget gave it other data than the baseline's (a floor
  of steps under an epoch budget, or an equal-step budget), its confirmed configuration runs
  again, same seeds, for the baseline's examples: the answer at equal data beside the answer
  given more data (`tuner.analysis.equal_data`).
- **The rule test.** For each rule, the baseline's best configuration (its peak lr, warmup and
  weight decay) is moved to every batch size by the rule alone, no retuning, and run with the
  confirmation seeds: "under sqrt scaling with no retuning, accuracy holds up to B".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from scipy import stats

from search_spaces.spaces import gap_values
from trainables.optim import scaled_lr, scaling_factor

# A batch size whose budget saw the baseline's examples within this share (integer steps, an
# epoch's last partial batch dropped) is already at equal data: no run of its own.
EQUAL_DATA_SLACK = 0.05

HOLDS = "holds"  # within the tolerance of the baseline at this budget and lr
DEGRADED = "degraded"  # short of it; half or twice the lr and twice the steps did not help
RUN = "run"  # short of it, and these levels may still save it: run them
CAPPED = "capped"  # short of it, and the next doubling of the steps would pass the cap
DIVERGED = "diverged"  # no run of its own budget ended with a value

Level = tuple[int, int]  # (optimizer steps, k): the confirmed configuration with its lr x 2^k
V = TypeVar("V")


@dataclass(frozen=True)
class BudgetCheck:
    """What the levels of one batch size say (see `budget_check`)."""

    state: str
    center: Level  # the level it is judged at: its best so far
    runs: tuple[Level, ...] = ()  # the levels to run next (state RUN)
    gain: float = math.nan  # the last doubling of the steps' improvement (positive: better)
    gain_upper: float = math.nan  # its one-sided 95% upper bound (paired seeds; `gain_upper`)
    # multiples of the baseline's budget it must run before this batch size is compared (RUN)
    baseline_runs: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        return self.center[0]

    @property
    def lr_factor(self) -> float:
        return 2.0 ** self.center[1]

    def describe(self, tolerance_text: str) -> str:
        lr = "" if self.center[1] == 0 else f" with the lr x{self.lr_factor:g}"
        if self.state == HOLDS:
            return f"holds at {self.steps} steps{lr}"
        if self.state == DEGRADED:
            shown = (
                f" (shown: at most {self.gain_upper:+.3g} at 95% over the paired seeds)"
                if math.isfinite(self.gain_upper) and self.gain_upper != self.gain
                else ""
            )
            return (
                f"a plateau at {self.steps} steps{lr}: neither half nor twice the lr gained more "
                f"than {tolerance_text}, nor did twice the steps at any of the three{shown}"
            )
        if self.state == CAPPED:
            if math.isnan(self.gain):
                return (
                    f"not checked with more steps ({self.steps}{lr}): "
                    f"{2 * self.steps} would pass the cap (--max-data-multiple, --max-steps)"
                )
            return (
                f"still improving at the cap ({self.steps} steps{lr}): the last "
                f"doubling gained {self.gain:+.3g}"
                + (
                    f", up to {self.gain_upper:+.3g} at 95%"
                    if math.isfinite(self.gain_upper) and self.gain_upper != self.gain
                    else ""
                )
            )
        if self.state == DIVERGED:
            return f"diverged at {self.steps} steps"
        runs = [f"{s} steps, lr x{2.0**k:g}" for s, k in self.runs]
        runs += [f"the baseline at {m}x its steps" for m in self.baseline_runs]
        return f"being checked ({', '.join(runs)})"


# The checks give a batch size at most this many times the baseline's examples (issue 32: a cap
# in steps let ImageNet's batch 65536 run ~13,000 epochs). Measured: digits' batch 512 held at
# 27x batch 8's 2 epochs (its 150-step floor), mnist1d's 1024 was judged at 15x batch 32's 10
# epochs; a batch size that needs more is reported capped, never degraded.
DATA_CAP_MULTIPLE = 32


def data_step_cap(batch: int, base_steps: int, base_batch: int, multiple: float) -> int:
    """The most steps a check may give `batch`: `multiple` x the baseline's examples (its
    `base_steps` at `base_batch`)."""
    return int(multiple * base_steps * base_batch // batch)


def cap_steps(
    batch: int, base: tuple[int, int] | None, max_steps: int, data_multiple: float
) -> int | None:
    """The most steps the checks may give `batch`: `max_steps`, else `data_multiple` x the
    baseline's examples (`base`: its budget steps and batch size); None for neither (a study
    made before the cap was in data: twice its longest budget, which its caller reads)."""
    if max_steps:
        return max_steps
    if data_multiple and base and batch:
        return data_step_cap(batch, base[0], base[1], data_multiple)
    return None


def check_rounds(own_steps: int, cap: int) -> list[tuple[Level, ...]]:
    """The levels a batch size short of the baseline may run, round by round, up to `cap`
    steps: half and twice its lr at its budget, then each doubling of its steps at three lrs
    (`budget_check`'s most; it stops sooner where a level holds or a plateau is shown)."""
    rounds: list[tuple[Level, ...]] = [((own_steps, -1), (own_steps, 1))]
    steps = 2 * own_steps
    while steps <= cap:
        rounds.append(((steps, 0), (steps, -1), (steps, 1)))
        steps *= 2
    return rounds


def at_multiples(levels: Mapping[Level, V], own_steps: int, k: int) -> dict[int, V]:
    """The levels at lr step `k` keyed by their multiple of `own_steps` ({1: at the budget,
    2: at twice its steps, ...}): the baseline as `budget_check` takes it."""
    return {
        steps // own_steps: value
        for (steps, step_k), value in levels.items()
        if step_k == k and steps >= own_steps and steps % own_steps == 0
    }


AUTO_SPECULATE = -1  # --speculate's default: by the slots (`speculation`)
SPECULATE_SLOTS = 16  # trials at once from which a study speculates by default
SPECULATE_AHEAD = 1


def speculation(setting: int, slots: int) -> int:
    """Doublings of the baseline run ahead (`baseline_ahead`): `setting` (--speculate), or by
    default `SPECULATE_AHEAD` where the study runs `SPECULATE_SLOTS` or more trials at once
    (its slots idle through the checks' chain there) and none on fewer (where a speculative
    run would take a slot a needed one waits for)."""
    if setting != AUTO_SPECULATE:
        return setting
    return SPECULATE_AHEAD if slots >= SPECULATE_SLOTS else 0


def baseline_ahead(asked: Iterable[int], ahead: int, most: int) -> tuple[int, ...]:
    """The multiples of the baseline's budget to start now, speculatively, beside those a
    batch size's check asks for (`asked`: the multiples of its own budget its check asks to
    run now; 1 for half and twice its lr at its budget): `ahead` doublings past the largest,
    up to `most` (the largest multiple that batch size, and the baseline, may reach under
    their caps).

    The chain of a study's checks on a cluster is the baseline's runs at 2x, 4x, 8x ... its
    budget, each asked for only once the batch size's level before it has ended (measured on
    64 slots: about 70% of the wall time, issue 33); one doubling ahead starts each while the
    one before still runs. It changes no verdict (a level is judged against the baseline at
    its own multiple, `tuner.analysis.checks.at_multiple`) and costs, per batch size that
    stops doubling, the baseline's runs at the multiples no level then reached.
    """
    top = max(asked, default=0)
    if not top or ahead < 1:
        return ()
    return tuple(m for m in (top * 2**i for i in range(1, ahead + 1)) if m <= most)


def gain_upper(before: Mapping[int, float], after: Mapping[int, float], sign: int = 1) -> float:
    """A one-sided 95% upper bound on how much a level gains over another (`sign` +1: higher
    is better), from their runs by seed (the checks run every level with the same seeds):
    the paired differences' mean plus Student's t(0.95, n-1) x their standard error, over the
    seeds both ran to a finite value. With fewer than two such pairs there is nothing to bound
    it with: the difference of the means."""
    pairs = [
        sign * (after[s] - before[s])
        for s in before
        if s in after and math.isfinite(before[s]) and math.isfinite(after[s])
    ]
    if len(pairs) < 2:
        finite = lambda v: [x for x in v.values() if math.isfinite(x)]  # noqa: E731
        a, b = finite(before), finite(after)
        if not a or not b:
            return -math.inf if a else math.inf
        return sign * (sum(b) / len(b) - sum(a) / len(a))
    n = len(pairs)
    mean = sum(pairs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in pairs) / (n - 1))
    return mean + float(stats.t.ppf(0.95, n - 1)) * sd / math.sqrt(n)


def budget_check(
    baseline: float | Mapping[int, float],
    results: dict[Level, float],
    own_steps: int,
    tolerance: float,
    cap: int,
    sign: int = 1,
    by_seed: Mapping[Level, Mapping[int, float]] | None = None,
) -> BudgetCheck:
    """Decide one batch size from the mean values of its levels (`results`: its confirmation
    runs at (own_steps, 0), then the checks' runs), as a sceptic would: before it is called
    degraded, half and twice its lr are tried at its budget (a better lr moves it there, and
    the line search goes on), then twice the steps (at the best of three lrs there); it is
    degraded only where neither helps by more than the tolerance. `sign` +1 where higher is
    better (accuracy), -1 for a loss; `cap` the most steps a run may have.

    `baseline`: the baseline's value at each multiple of its own budget run so far ({1: at its
    budget, 2: at twice its steps, ...}): a level at m times this batch size's budget is
    compared with the baseline at m times its own, so that more steps are given to both sides
    alike (issue 32); where that multiple has not been run the check asks for it
    (`baseline_runs`). A plain number: the same baseline at every multiple (a baseline that is
    not run again).

    `by_seed`: each level's runs by seed; a doubling of the steps is a plateau only where its
    gain's upper bound (`gain_upper`) is within the tolerance, else the steps double again.
    Without it (or with one run a level), the point gain decides."""

    def score(level: Level) -> float:
        value = results.get(level, math.nan)
        return sign * value if math.isfinite(value) else -math.inf

    def base_at(level: Level) -> tuple[float | None, int]:
        multiple = max(1, level[0] // own_steps)
        if isinstance(baseline, Mapping):
            return baseline.get(multiple), multiple
        return baseline, multiple

    def waits(level: Level, gain: float) -> BudgetCheck | None:
        """The check of `level` against the baseline at its multiple: HOLDS, a RUN of the
        baseline there, or None (short of it)."""
        base, multiple = base_at(level)
        if base is None:
            return BudgetCheck(RUN, center, gain=gain, baseline_runs=(multiple,))
        if sign * (base - results[level]) <= tolerance:
            return BudgetCheck(HOLDS, level, gain=gain)
        return None

    def run(at: Level, levels: tuple[Level, ...], gain: float) -> BudgetCheck:
        """RUN `levels`, and beside them the baseline at their multiples where it has not run
        there: a level at m x the budget is compared with the baseline at m x its own, so it
        starts now rather than after (one wait less per doubling on a cluster; issue 33)."""
        have = set(baseline) if isinstance(baseline, Mapping) else None
        wanted = {max(1, steps // own_steps) for steps, _ in levels}
        extra = () if have is None else tuple(sorted(m for m in wanted - have if m > 1))
        return BudgetCheck(RUN, at, levels, gain, baseline_runs=extra)

    def upper(before: Level, after: Level) -> float:
        """The gain of `after` over `before`: shown at most this (95%), else its point value."""
        if by_seed and before in by_seed and after in by_seed:
            return gain_upper(by_seed[before], by_seed[after], sign)
        return score(after) - score(before)

    center, gain, bound = (own_steps, 0), math.nan, math.nan
    if not math.isfinite(results.get(center, math.nan)):
        return BudgetCheck(DIVERGED, center)
    while True:
        steps, k = center
        decided = waits(center, gain)
        if decided is not None:
            return decided
        neighbours = [(steps, k - 1), (steps, k + 1)]
        missing = tuple(n for n in neighbours if n not in results)
        if missing:
            return run(center, missing, gain)
        best = max(neighbours, key=score)
        if score(best) - score(center) > tolerance:
            center = best  # a better lr: go on from there
            continue
        longer = (2 * steps, k)
        if longer not in results:
            if 2 * steps > cap:
                return BudgetCheck(CAPPED, center, gain=gain, gain_upper=bound)
            return run(center, (longer,), gain)
        gain, bound = score(longer) - score(center), upper(center, longer)
        if bound <= tolerance:
            # Twice the steps may want another lr (a high lr that suits a short run can be
            # unstable over a longer one): the longer budget's neighbours decide.
            around = [(2 * steps, k - 1), (2 * steps, k + 1)]
            missing = tuple(n for n in around if n not in results)
            if missing:
                return run(center, missing, gain)
            best = max([longer, *around], key=score)
            gain, bound = score(best) - score(center), upper(center, best)
            if bound <= tolerance:  # a plateau: shown to gain no more than the tolerance
                if gain <= 0:
                    return BudgetCheck(DEGRADED, center, gain=gain, gain_upper=bound)
                # judged at twice the steps: against the baseline given them too
                decided = waits(best, gain)
                if decided is not None:
                    return decided
                return BudgetCheck(DEGRADED, best, gain=gain, gain_upper=bound)
            longer = best
        center = longer


def equal_data_steps(base_steps: int, base_batch: int, batch: int) -> int:
    """Steps at `batch` that see the examples the baseline saw in `base_steps` (at least 1)."""
    return max(1, round(base_steps * base_batch / batch))


def equal_data_run(own_steps: int, batch: int, base_steps: int, base_batch: int) -> int | None:
    """The budget (steps) a batch size trained for `own_steps` needs to run again to be
    measured at the baseline's data; None where its own budget is that measurement already
    (its examples within `EQUAL_DATA_SLACK` of the baseline's, or the nearest whole step)."""
    steps = equal_data_steps(base_steps, base_batch, batch)
    ratio = own_steps * batch / (base_steps * base_batch)
    return None if abs(ratio - 1) <= EQUAL_DATA_SLACK or steps == own_steps else steps


def baseline_check(
    results: dict[Level, float], own_steps: int, tolerance: float, sign: int = 1
) -> tuple[Level, tuple[Level, ...]]:
    """The baseline's own lr check: half and twice its confirmed lr at its budget, moving to
    the better while one gains more than the tolerance (the same line search as
    `budget_check`'s). Returns the level the baseline is then measured at, and the levels still
    to run (empty once it is settled). Every other batch size is judged against that level."""

    def score(level: Level) -> float:
        value = results.get(level, math.nan)
        return sign * value if math.isfinite(value) else -math.inf

    center = (own_steps, 0)
    while True:
        neighbours = [(own_steps, center[1] - 1), (own_steps, center[1] + 1)]
        missing = tuple(n for n in neighbours if n not in results)
        if missing:
            return center, missing
        best = max(neighbours, key=score)
        if score(best) - score(center) <= tolerance:
            return center, ()
        center = best


def rule_test_params(
    best: dict[str, Any], base_batch: int, batch_size: int, rule: str, reference_batch: int
) -> dict[str, Any]:
    """The baseline's best configuration (`best`, at `base_batch`) moved to `batch_size` by
    `rule` alone: the peak lr scales by the rule's factor between the two batch sizes (expressed
    as a base lr at the reference batch, as every trial's is); weight decay and warmup are the
    baseline's (its warmup searched like every batch size's: issue 32, one protocol)."""
    peak = scaled_lr(best["base_lr"], best["scaling_rule"], base_batch, reference_batch)
    base_lr = peak / scaling_factor(rule, base_batch, reference_batch)
    return {
        "batch_size": batch_size,
        "scaling_rule": rule,
        "optimizer": best["optimizer"],
        "base_lr": base_lr,
        "weight_decay": best["weight_decay"],
        "warmup_fraction": best.get("warmup_fraction", 0.0),
        **gap_values(best),  # its momentum / beta2, where searched
    }


# The budget-free runs' lrs (x 2^k of the configuration's): a line search for the fewest steps
# to target, as the checks' is for the best value: it starts at these, and moves one step past
# an end while the earliest is there, within FREE_LR_LIMIT steps each way.
FREE_LR_START = (-1, 0, 1)
FREE_LR_LIMIT = 6  # x64 either way: a poor search's best (digits 512: x8 was still faster)
# Their budget, a bound only (they end at the target): this multiple of the configuration's own.
FREE_BUDGET_MULTIPLE = 2


def budget_free_next(steps: Mapping[int, float], limit: int = FREE_LR_LIMIT) -> int | None:
    """The next lr step of a batch size's budget-free runs, or None: `steps` maps each lr step
    run to its runs' mean steps to target (infinite where any of its runs did not reach the
    target: an lr that diverges on one seed is no faster). The fewest (ties: nearest the
    configuration's own lr) at the highest lr tried asks for twice it, at the lowest for half."""
    reached = {k: v for k, v in steps.items() if math.isfinite(v)}
    if not reached:
        return None  # none reached within its runs' bound: censored there, not searched on
    best = min(reached, key=lambda k: (reached[k], abs(k)))
    if best == max(steps) and best < limit:
        return best + 1
    if best == min(steps) and best > -limit:
        return best - 1
    return None
