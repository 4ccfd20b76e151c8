"""What data each batch size was judged at, and the answer at the baseline's data (issue 32).

A budget such as `epochs:E` with a floor of steps, or `steps:S`, gives a larger batch size more
examples than the baseline: the README's digits study trains batch 8 for 2 epochs and batch 512
for 150 steps, 53 epochs, 27x the data. "Holds up to 512" is then an answer *given more data*
(Shallue et al.'s question: can the larger batch reach the accuracy at all), not *at equal
data* (Goyal et al.'s: at the same epochs). The map gives both, with what each compared:

- `steps_judged`, `epochs_judged`, `examples_judged` and `data_ratio` (its examples over the
  baseline's): the level each batch size was judged at (its checks' level, else its budget).
- The equal-data answer: each batch size's confirmed configuration run again with the confirmation
  seeds for the baseline's examples (`search_spaces.checks.equal_data_steps`), then at half and
  twice its lr while one gains more than the tolerance (the line search the baseline's own lr had:
  `baseline_check`), judged at the best of those against the baseline like any batch size; where the
  line search moved the lr, by that lr run again with fresh seeds (`search_spaces.runs.JUDGE`: the
  runs that chose an lr read high). A batch size whose own budget already saw the baseline's
  examples (within `EQUAL_DATA_SLACK`) is its own equal-data measurement: its confirmation runs and
  whatever lr levels its checks ran there. Warmup and weight decay stay as searched at its own
  budget. (On the README's digits study the confirmed lr alone read 67% and 41% at batch 128 and
  512, where twice and four times it reach 89% and 62% in-process: an answer about the lr, not the
  batch size.)
"""

from __future__ import annotations

import math

import pandas as pd

from search_spaces.checks import baseline_check, equal_data_run
from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.accuracy import UNSTABLE, Estimate, compare
from tuner.analysis.checks import budget_levels, fresh_levels

EQUAL_DATA_COLUMNS = (
    "equal_data_steps",
    "equal_data_lr_factor",  # its lr against its confirmed one, after the line search
    "equal_data_accuracy",
    "equal_data_runs",
    "equal_data_drop",
    "equal_data_drop_low",
    "equal_data_drop_high",
    "equal_data_status",
    "equal_data_fresh",  # its value from fresh seeds: the lr the line search chose, run again
)


def examples_per_epoch(table: pd.DataFrame) -> float:
    """The training set's size as the trials reported it (examples seen over epochs)."""
    if not {"examples_seen", "epoch"} <= set(table.columns):
        return math.nan
    seen = pd.to_numeric(table["examples_seen"], errors="coerce")
    epochs = pd.to_numeric(table["epoch"], errors="coerce")
    ratio = (seen / epochs)[(epochs > 0) & (seen > 0)]
    return float(ratio.median()) if len(ratio) else math.nan


def data_columns(frontier: pd.DataFrame, base_batch: int | None, n_train: float) -> None:
    """Add `steps_judged`, `examples_judged`, `epochs_judged` and `data_ratio` (against the
    baseline's judged examples) to the frontier; needs `judged_steps` and `budget_steps`."""
    judged = pd.to_numeric(frontier.get("judged_steps"), errors="coerce")
    steps = judged.where(judged.notna(), pd.to_numeric(frontier["budget_steps"], errors="coerce"))
    frontier["steps_judged"] = steps
    frontier["examples_judged"] = steps * frontier["batch_size"]
    frontier["epochs_judged"] = frontier["examples_judged"] / n_train if n_train > 0 else math.nan
    base = frontier.loc[frontier["batch_size"] == base_batch, "examples_judged"]
    base_examples = float(base.iloc[0]) if len(base) else math.nan
    frontier["data_ratio"] = (
        frontier["examples_judged"] / base_examples if base_examples > 0 else math.nan
    )


def judge_equal_data(
    frontier: pd.DataFrame,
    trials: pd.DataFrame,
    base: tuple[int, Estimate] | None,
    tolerance: float,
    metric: StudyMetric = ACCURACY,
) -> int | None:
    """Add the equal-data columns (`EQUAL_DATA_COLUMNS`) and return the largest batch size up to
    which the metric holds at the baseline's data (None without a baseline). The baseline's
    examples are those of its own budget (the lr check moves its lr, never its steps)."""
    values: dict[str, list] = {name: [] for name in EQUAL_DATA_COLUMNS}
    base_steps = _own_steps(frontier, trials, base[0]) if base else None
    for row in frontier.itertuples(index=False):
        batch, est, steps, factor = int(row.batch_size), None, math.nan, math.nan
        fresh = False
        cell = getattr(row, "best_cell", None)
        levels = budget_levels(trials, cell, metric) if isinstance(cell, str) else None
        if base is not None and batch == base[0]:
            est, steps, factor = base[1], base_steps, 1.0
        elif base_steps and levels:
            steps = equal_data_run(levels[0], batch, base_steps, base[0]) or levels[0]
            # the lr line search the baseline had, at those steps (`baseline_check`)
            means = {lv: e.mean for lv, e in levels[1].items() if lv[0] == steps}
            if (steps, 0) in means:
                center, _ = baseline_check(means, steps, tolerance, metric.sign)
                est, factor = levels[1][center], 2.0 ** center[1]
                again = fresh_levels(trials, cell, metric).get(center)
                if again is not None and again.n:  # the runs that chose it read high
                    est, fresh = again, True
        result = None
        if base is not None and est is not None and est.n and batch != base[0]:
            result = compare(base[1], est, tolerance, metric=metric)
        status = result.status if result else None
        if status is not None and est is not None and est.diverged:
            status = UNSTABLE
        if base is not None and batch == base[0]:
            status = "baseline"
        values["equal_data_steps"].append(steps)
        values["equal_data_lr_factor"].append(factor)
        values["equal_data_accuracy"].append(est.mean if est is not None else math.nan)
        values["equal_data_runs"].append(est.n if est is not None else 0)
        values["equal_data_drop"].append(result.drop if result else math.nan)
        values["equal_data_drop_low"].append(result.low if result else math.nan)
        values["equal_data_drop_high"].append(result.high if result else math.nan)
        values["equal_data_status"].append(status)
        values["equal_data_fresh"].append(fresh)
    for name, column in values.items():
        frontier[name] = column
    if base is None:
        return None
    holds = None
    for row in frontier.sort_values("batch_size").itertuples(index=False):
        if row.equal_data_status in ("baseline", "holds"):
            holds = int(row.batch_size)
        elif holds is not None:
            break  # anything else, a batch size not measured too, ends the run of holds
    return holds


def _own_steps(frontier: pd.DataFrame, trials: pd.DataFrame, batch: int) -> int | None:
    """A batch size's own budget in steps (its confirmation runs'; else the frontier's)."""
    row = frontier[frontier["batch_size"] == batch]
    cell = row["best_cell"].iloc[0] if len(row) and "best_cell" in row else None
    levels = budget_levels(trials, cell) if isinstance(cell, str) else None
    if levels:
        return levels[0]
    steps = row["budget_steps"].iloc[0] if len(row) else math.nan
    return int(steps) if pd.notna(steps) else None
