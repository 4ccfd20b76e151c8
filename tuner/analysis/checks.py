"""What the study's checks showed (`search_spaces.checks`), read back from the trial table.

- **A better lr, more steps**: a batch size's levels (its confirmation runs, then each (steps,
  lr) its `extend` runs tried), the one it is judged at, and the decision on them; a batch size
  short of the baseline is *degraded* only where neither half nor twice the lr nor twice the
  steps helped, *under-trained* where more steps still did at the cap.
- **Search-range edges**: a batch size whose best lr leaves its cell's search open (nothing
  tried beyond it, in the outer fifth of the range searched, extensions included) is
  *under-searched*.
- **The rule test**: per rule and batch size, the baseline's best moved by the rule alone,
  judged against the baseline like any batch size; how far each rule holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from search_spaces.checks import (
    BudgetCheck,
    Level,
    at_multiples,
    baseline_check,
    budget_check,
    cap_steps,
)
from search_spaces.spaces import lr_edge
from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.accuracy import (
    Estimate,
    compare,
    estimate,
    judged_runs,
    runs_estimate,
    sampled,
)


def budget_levels(
    trials: pd.DataFrame, cell: str, metric: StudyMetric = ACCURACY, phase: str = "extend"
) -> tuple[int, dict[Level, Estimate]] | None:
    """A cell's own budget and an estimate per level whose runs have all ended: its
    confirmation runs at (own budget, 0), the checks' runs at (their budget, k) where their lr
    is the confirmed one x 2^k. None without confirmation runs. `phase` "judge": the levels
    run again with fresh seeds instead (`search_spaces.runs.JUDGE`; no confirmation level)."""
    rows = trials[(trials["cell"] == cell) & trials["phase"].isin(["confirm", phase])]
    confirm = rows[rows["phase"] == "confirm"]
    if confirm.empty or not confirm["budget_steps"].notna().any():
        return None
    own, lr = int(confirm["budget_steps"].max()), float(confirm["base_lr"].iloc[0])
    val = sampled(rows["val_examples"].max(), metric)
    longer = rows[rows["phase"] == phase]
    steps = [round(math.log2(v / lr)) for v in longer["base_lr"]]
    groups = [((own, 0), confirm)] if phase == "extend" else []
    groups += [
        ((int(b), int(k)), g)
        for (b, k), g in longer.assign(_k=steps).groupby(["budget_steps", "_k"], sort=True)
    ]
    source = "confirmed"  # fresh-seed runs of a configuration, either way
    levels = {}
    for level, group in groups:
        if (group["outcome"] == "running").any():
            continue
        done = judged_runs(group, metric)
        levels[level] = (
            runs_estimate(done, val, source, metric)
            if len(done)
            else estimate([math.nan], val, source)
        )
    return own, levels


def fresh_levels(trials: pd.DataFrame, cell: str, metric: StudyMetric) -> dict[Level, Estimate]:
    """The cell's levels measured again with fresh seeds once the checks chose them."""
    found = budget_levels(trials, cell, metric, phase="judge")
    return found[1] if found else {}


def step_cap(
    trials: pd.DataFrame,
    max_steps: int,
    batch: int = 0,
    base: tuple[int, int] | None = None,
    data_multiple: float = 0.0,
) -> int:
    """The cap the search's more-steps check had for `batch` (`CellSearch.step_cap`; `base`:
    the baseline's budget steps and batch size)."""
    cap = cap_steps(batch, base, max_steps, data_multiple)
    if cap is not None:
        return cap
    own = trials[trials["phase"].isin(["search", "confirm"])]["budget_steps"]
    return 2 * int(own.max()) if own.notna().any() else 0


@dataclass(frozen=True)
class Judged:
    """A batch size judged at the level the checks took it to."""

    estimate: Estimate
    steps: int
    lr_factor: float  # its lr against the confirmed configuration's
    check: BudgetCheck
    baseline: Estimate  # what it is compared with: the baseline at the same multiple of its
    baseline_multiple: int  # budget where it was run (`checks.budget_check`), else the largest
    fresh: bool = False  # its value from fresh seeds, the level run again once chosen


def baseline_levels(
    trials: pd.DataFrame, cell: str, tolerance: float, metric: StudyMetric = ACCURACY
) -> tuple[int, float, dict[int, Estimate]] | None:
    """The baseline cell as the study decided others against it: its own budget, its lr factor
    after its own lr check (`checks.baseline_check`), and its estimate at each multiple of its
    budget it was run at with that lr ({1: at its budget, 2: at twice its steps, ...}). None
    without confirmation runs. (`judged_baseline`: as they are judged.)"""
    levels = budget_levels(trials, cell, metric)
    if not levels:
        return None
    own, estimates = levels
    means = {level: e.mean for level, e in estimates.items()}
    center, _ = baseline_check(means, own, tolerance, metric.sign)
    if center not in estimates:
        center = (own, 0)
    return own, 2.0 ** center[1], at_multiples(estimates, own, center[1])


def judged_baseline(
    trials: pd.DataFrame,
    cell: str,
    own: int,
    factor: float,
    decided: dict[int, Estimate],
    metric: StudyMetric,
) -> dict[int, Estimate]:
    """The baseline per multiple of its budget as others are judged against it: by its fresh
    seeds where a level was run again (`search_spaces.runs.JUDGE`), else as decided."""
    fresh = fresh_levels(trials, cell, metric)
    return {**decided, **at_multiples(fresh, own, round(math.log2(factor)))}


def at_multiple(baseline: dict[int, Estimate], multiple: int) -> int:
    """The multiple of the baseline's budget a level at `multiple` times its own is compared
    with: the same where the baseline was run at it, else the largest below (a study that
    stopped first, or made before the baseline was given more steps: the report says so)."""
    return max((m for m in baseline if m <= multiple), default=min(baseline))


def judge_levels(
    levels: tuple[int, dict[Level, Estimate]] | None,
    baseline: dict[int, Estimate],
    tolerance: float,
    cap: int,
    metric: StudyMetric = ACCURACY,
    fresh: dict[Level, Estimate] | None = None,
    decided_on: dict[int, Estimate] | None = None,
) -> Judged | None:
    """The level a batch size is judged at (the checks' best), what the decision says, and the
    baseline it is compared with (`baseline`: the baseline's estimate per multiple of its
    budget, as `baseline_levels` gives). The decision is the search's, on the runs it had
    (`decided_on`: the baseline's as it decided, default `baseline`); the value judged is the
    level's `fresh` runs where it was run again (the runs that chose a level read high)."""
    if not levels or (levels[0], 0) not in levels[1] or not baseline:
        return None
    own, estimates = levels
    means = {level: e.mean for level, e in estimates.items()}
    multiples = {max(1, steps // own) for steps, _ in estimates}
    decided_on = decided_on or baseline
    against = {m: decided_on[at_multiple(decided_on, m)].mean for m in multiples}
    by_seed = {level: e.by_seed for level, e in estimates.items() if e.by_seed is not None}
    check = budget_check(against, means, own, tolerance, cap, metric.sign, by_seed)
    center = check.center if check.center in estimates else (own, 0)
    multiple = at_multiple(baseline, max(1, center[0] // own))
    again = (fresh or {}).get(center)
    value = again if again is not None else estimates[center]
    return Judged(
        value, center[0], 2.0 ** center[1], check, baseline[multiple], multiple, again is not None
    )


def lr_range_edge(
    trials: pd.DataFrame, cell: str, best_lr: float, ranges: dict
) -> tuple[str, float, float] | None:
    """('lower'/'upper', low, high) where the cell's best base lr leaves its search open on that
    side (`search_spaces.spaces.lr_edge`) of the range it covered (the space's range grown by
    its extensions); else None."""
    search = trials[(trials["cell"] == cell) & (trials["phase"] == "search")]
    if search.empty or not math.isfinite(best_lr):
        return None
    optimizer = search["optimizer"].iloc[0]
    bounds = (ranges.get("base_lr") or {}).get(optimizer)
    if not bounds:
        return None
    tried = search["base_lr"].dropna().astype(float).tolist()
    low, high = min(float(bounds[0]), *tried), max(float(bounds[1]), *tried)
    side = lr_edge(best_lr, tried, low, high)
    return (side, low, high) if side else None


def rule_test(
    trials: pd.DataFrame,
    baseline: tuple[int, Estimate] | None,
    tolerance: float,
    metric: StudyMetric = ACCURACY,
) -> pd.DataFrame:
    """Per rule and batch size: the rule test's runs, their estimate and the comparison with
    the baseline (status holds / unresolved / degraded, or diverged when a run diverged or
    none ended)."""
    columns = [
        "scaling_rule",
        "batch_size",
        "runs",
        "diverged_runs",
        "peak_lr",
        "warmup_fraction",
        "accuracy",
        "accuracy_std",
        "worst_run",
        "best_run",
        "drop",
        "drop_low",
        "drop_high",
        "status",
    ]
    rows = trials[trials["phase"] == "rule"] if len(trials) else trials
    out = []
    for (rule, batch), group in rows.groupby(["scaling_rule", "batch_size"], sort=True):
        if (group["outcome"] == "running").any():
            continue
        done = group[group["final"]]
        val = sampled(group["val_examples"].max(), metric)
        est = runs_estimate(done, val, "confirmed", metric)
        # the runs' spread: one seed far below the others (an unstable lr) is a finding that a
        # mean and its bounds alone hide (digits, sqrt at 512: 98.6%, 28.7%, 97.2%)
        ends = sorted(
            (v for v in done["final_value"].astype(float) if math.isfinite(v)),
            key=lambda v: metric.sign * v,
        )
        result = (
            compare(baseline[1], est, tolerance, metric=metric)
            if baseline is not None and est.n
            else None
        )
        out.append(
            {
                "scaling_rule": rule,
                "batch_size": int(batch),
                "runs": len(group),
                "diverged_runs": int(group["diverged"].sum()),
                "peak_lr": float(group["actual_lr"].iloc[0]),
                "warmup_fraction": float(group["warmup_fraction"].iloc[0]),
                "accuracy": est.mean,
                "accuracy_std": est.std,
                "worst_run": ends[0] if ends else math.nan,
                "best_run": ends[-1] if ends else math.nan,
                "drop": result.drop if result else math.nan,
                "drop_low": result.low if result else math.nan,
                "drop_high": result.high if result else math.nan,
                # a run that diverged under the rule alone: the rule does not hold there
                "status": "diverged"
                if group["diverged"].any() or result is None
                else result.status,
            }
        )
    return pd.DataFrame(out, columns=columns)


def rule_holds_up_to(table: pd.DataFrame, rule: str, base_batch: int) -> int:
    """The largest batch size up to which every rule-test batch size of `rule` holds."""
    holds = base_batch
    for row in table[table["scaling_rule"] == rule].sort_values("batch_size").itertuples():
        if row.status != "holds":
            break
        holds = int(row.batch_size)
    return holds


# --- the checks applied to the frontier (`tuner.analysis.frontier`) ------------------------


def checked_baseline(
    frontier: pd.DataFrame,
    trials: pd.DataFrame,
    base: tuple[int, Estimate],
    tolerance: float,
    metric: StudyMetric,
) -> tuple[tuple[int, Estimate], dict[int, Estimate], dict[int, Estimate]]:
    """The baseline at the level its own lr check settled on (`checks.baseline_check`): its
    estimate in the frontier is replaced by that level's; and its estimate at each multiple of
    its budget it was run at, as the search decided on it and as it is judged (by fresh seeds
    where a level was run again: `search_spaces.runs.JUDGE`)."""
    index = frontier.index[frontier["batch_size"] == base[0]][0]
    cell = frontier.at[index, "best_cell"]
    levels = baseline_levels(trials, cell, tolerance, metric) if isinstance(cell, str) else None
    if not levels or 1 not in levels[2]:
        return base, {1: base[1]}, {1: base[1]}
    own, factor, by_multiple = levels
    if factor == 1.0:
        by_multiple = {**by_multiple, 1: base[1]}
    judged = judged_baseline(trials, cell, own, factor, by_multiple, metric)
    if judged[1] is not base[1]:
        frontier.at[index, "estimate"] = judged[1]
        frontier.loc[index, "baseline_lr_factor"] = factor
    return (base[0], judged[1]), by_multiple, judged


def apply_budget_checks(
    frontier: pd.DataFrame,
    trials: pd.DataFrame,
    base: tuple[int, Estimate] | None,
    by_multiple: dict[int, Estimate],
    tolerance: float,
    cap: int | dict[int, int],
    metric: StudyMetric,
    decided_on: dict[int, Estimate] | None = None,
) -> dict[int, Any]:
    """Judge each batch size at the last budget its checks ran (its estimate is replaced by that
    level's) against the baseline at the same multiple of its budget where it ran there, and
    keep each one's budget decision; adds `judged_steps`, `budget_check`, `judged_fresh` (its
    value from fresh seeds: the level run again once the checks chose it), and the baseline
    compared with (`baseline_estimate`, `baseline_multiple`)."""
    decisions: dict[int, Any] = {}
    judged_steps, judged_lr, described, fresh_runs = [], [], [], []
    against, multiples = [], []
    unit = f" {metric.unit}" if metric.unit else ""
    tol = f"{tolerance * 100:g} pt" if metric.unit == "pt" else f"{tolerance:g}{unit}"
    for index, row in frontier.iterrows():
        batch, steps, factor, text = int(row["batch_size"]), math.nan, math.nan, None
        baseline, multiple, again = (base[1] if base else None), 1, False
        cell = row.get("best_cell")
        if base is not None and batch != base[0] and isinstance(cell, str):
            levels = budget_levels(trials, cell, metric)
            fresh = fresh_levels(trials, cell, metric)
            limit = cap.get(batch, 0) if isinstance(cap, dict) else cap
            judged = judge_levels(
                levels, by_multiple, tolerance, limit, metric, fresh, decided_on or by_multiple
            )
            if judged is not None and math.isfinite(judged.estimate.mean):
                frontier.at[index, "estimate"] = judged.estimate
                steps, decisions[batch] = judged.steps, judged.check
                factor, text = judged.lr_factor, judged.check.describe(tol)
                baseline, multiple = judged.baseline, judged.baseline_multiple
                again = judged.fresh
        fresh_runs.append(again)
        judged_steps.append(steps)
        judged_lr.append(factor)
        described.append(text)
        against.append(baseline)
        multiples.append(multiple)
    frontier["judged_steps"] = judged_steps
    frontier["judged_lr_factor"] = judged_lr
    frontier["judged_fresh"] = fresh_runs
    frontier["budget_check"] = described
    frontier["baseline_estimate"] = pd.Series(against, index=frontier.index, dtype=object)
    frontier["baseline_multiple"] = multiples
    return decisions
