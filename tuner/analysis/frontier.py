"""The whole degradation map over the tidy trial table (`tuner.store.table`).

No Ray and no plotting here: every function takes a DataFrame (or arrays) and returns one, so
the whole analysis is tested in milliseconds on hand-built tables. `degradation_map` runs all of
it; `tuner.report` writes and draws the result.

Definitions (science.md sections 1, 2, 5, 6, 8):
- A trial is *final* when it ran its whole budget (or ended at the target) without diverging;
  only final trials have an accuracy that says how good their configuration is. Trials stopped
  by ASHA count as evidence for steps to target, never as an accuracy.
- Each *cell* (batch size x stratified rule x optimiser) is tuned on its own; its best final
  search trial is its configuration, and its *estimate* is the mean of that configuration's
  confirmation runs with fresh seeds (`tuner.analysis.accuracy`).
- A batch size's accuracy is its best cell's estimate (the cell chosen on search results, so
  the estimate that judges it is independent of the choice). The *baseline* is the smallest
  batch size with one. Each batch size then *holds*, is *degraded*, or is *unresolved*
  against the tolerance, with one-sided 95% bounds on its drop.
- *Steps to target* are pooled as Shallue et al. do, over every evaluation of every
  non-diverged trial of the batch size; a batch size that never reaches the target is censored
  at its longest run and enters the fit as a lower bound (`tuner.analysis.steps`, `critical`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.accuracy import (
    N_BOOT,
    UNSTABLE,
    Comparison,
    Estimate,
    cell_accuracy,
    compare,
)
from tuner.analysis.checks import (
    apply_budget_checks,
    checked_baseline,
    lr_range_edge,
    rule_test,
    step_cap,
)
from tuner.analysis.cost import StudyCost, study_cost, time_to_target
from tuner.analysis.critical import CriticalFit, estimate_critical_batch, regime
from tuner.analysis.equal_data import data_columns, examples_per_epoch, judge_equal_data
from tuner.analysis.hparams import best_hyperparameters, boundary_warnings
from tuner.analysis.rules import RuleVerdict, best_cells, rule_verdicts, rule_view
from tuner.analysis.steps import first_crossings, measured_runs, steps_to_target
from tuner.analysis.throughput import throughput
from tuner.analysis.trials import outcome_counts, trial_summary


@dataclass
class DegradationMap:
    """Everything the report shows, as tables and a few numbers."""

    target: float
    tolerance: float
    batch_sizes: list[int]
    trials: pd.DataFrame
    cells: pd.DataFrame
    frontier: pd.DataFrame
    by_rule: pd.DataFrame
    best_hparams: pd.DataFrame
    throughput: pd.DataFrame
    crossings: pd.DataFrame
    baseline: tuple[int, Estimate] | None
    holds_up_to: int | None  # given the data each batch size was judged at (`data_ratio`)
    rules: list[RuleVerdict]
    fit: CriticalFit | None
    b_crit_ci: tuple[float, float]
    b_crit_replicates: int
    # The interval reached out to its estimate (the estimate lay outside its replicates' 95%).
    b_crit_ci_stretched: bool = False
    # Where the interval's low end lies beyond the grid's largest batch size: that low end,
    # the least B_crit the data allow ("beyond the grid: at least X"); else None.
    b_crit_at_least: float | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)
    metric: StudyMetric = ACCURACY  # what the values, target and tolerance are of
    tokens_per_example: int = 0  # a batch counts sequences of this many tokens (0: not text)
    # The rule test (tuner.analysis.checks.rule_test): one row per rule and batch size.
    rule_test: pd.DataFrame = field(default_factory=pd.DataFrame)
    cost: StudyCost | None = None  # device time (tuner.analysis.cost)
    # Per batch size and worker count: training hours and device-hours to the target.
    time_to_target: pd.DataFrame = field(default_factory=pd.DataFrame)
    # At the baseline's data (tuner.analysis.equal_data); None without a baseline.
    holds_up_to_equal_data: int | None = None


def _judge(
    table: pd.DataFrame,
    base: tuple[int, Estimate] | None,
    tolerance: float,
    metric: StudyMetric = ACCURACY,
) -> None:
    """Add the comparison columns (drop, bounds, resolution, status) to a table of estimates."""
    values: dict[str, list] = {k: [] for k in ("drop", "drop_low", "drop_high", "resolution")}
    values["status"], values["paired"], values["baseline_unstable"] = [], [], []
    for row in table.itertuples(index=False):
        est: Estimate | None = row.estimate
        result: Comparison | None = None
        # the baseline at the multiple of its budget this row was judged at (the frontier)
        against = getattr(row, "baseline_estimate", None) or (base[1] if base else None)
        if base is not None and est is not None and math.isfinite(est.mean):
            result = compare(against, est, tolerance, metric=metric)
        is_base = base is not None and int(row.batch_size) == base[0] and est is base[1]
        values["drop"].append(result.drop if result else math.nan)
        values["drop_low"].append(result.low if result else math.nan)
        values["drop_high"].append(result.high if result else math.nan)
        values["resolution"].append(result.resolution if result else math.nan)
        status = result.status if result else None
        if status is not None and est is not None and est.diverged:
            status = UNSTABLE  # a judged run diverged: never holds, whatever the mean
        # compared with a baseline that diverged there (its runs at that multiple): to be
        # better than a run that did not train shows nothing (seen on digits, issue 32)
        shaky = not is_base and against is not None and bool(against.diverged)
        if shaky and status == "holds":
            status = "unresolved"
        values["baseline_unstable"].append(shaky)
        values["status"].append("baseline" if is_base else status)
        values["paired"].append(bool(result and result.paired))
    for name, column in values.items():
        table[name] = column


def _refine_statuses(
    frontier: pd.DataFrame, trials: pd.DataFrame, decisions: dict[int, Any], ranges: dict
) -> None:
    """A batch size short of the baseline is `degraded` only where more steps stopped helping
    and its best lr is inside the range searched; else `under-trained` (more steps still
    helped at the cap, or were never run) or `under-searched` (best lr on a range edge)."""
    statuses, edges = [], []
    for row in frontier.itertuples(index=False):
        status, edge = row.status, None
        cell = getattr(row, "best_cell", None)
        if status not in (None, "baseline", "holds") and isinstance(cell, str):
            search = trials[(trials["cell"] == cell) & (trials["phase"] == "search")]
            best = search[search["trial_id"] == row.best_trial]
            if len(best):
                edge = lr_range_edge(trials, cell, float(best["base_lr"].iloc[0]), ranges)
        if status == "degraded":
            check = decisions.get(int(row.batch_size))
            if edge is not None:
                status = "under-searched"
            elif check is None or check.state not in ("degraded", "diverged"):
                status = "under-trained"
        elif status == "unresolved" and edge is not None and row.drop > 0:
            # short of the baseline, unresolved, and a better lr may lie beyond the edge (one
            # at or above the baseline needs no saving: it stays unresolved)
            status = "under-searched"
        statuses.append(status)
        edges.append(f"{edge[0]} edge of [{edge[1]:.3g}, {edge[2]:.3g}]" if edge else None)
    frontier["status"] = statuses
    frontier["lr_edge"] = edges


def _estimate_columns(table: pd.DataFrame) -> None:
    """Plain columns from the Estimate objects, for files and figures."""
    table["accuracy"] = [e.mean if e else math.nan for e in table["estimate"]]
    table["accuracy_std"] = [e.std if e else math.nan for e in table["estimate"]]
    table["accuracy_runs"] = [e.n if e else 0 for e in table["estimate"]]
    table["accuracy_diverged"] = [e.diverged if e else 0 for e in table["estimate"]]
    table["accuracy_source"] = [e.source if e else None for e in table["estimate"]]
    table["val_se"] = [e.val_se if e else math.nan for e in table["estimate"]]
    if "baseline_estimate" in table:  # what each row was compared with (the frontier's)
        table["baseline_accuracy"] = [e.mean if e else math.nan for e in table["baseline_estimate"]]
        del table["baseline_estimate"]
    # On the test set, the runs the estimate is of: where the checks judged a batch size at
    # more steps or another lr, those runs, not its confirmation runs (seen on mnist1d: a
    # batch judged at 92.1% with 4x the steps showed its 600-step confirmations' 61.2%).
    for column in ("test_mean", "test_std", "test_n", "test_examples"):
        if column in table:
            table[column] = [
                e.test[column] if e is not None and e.test else old
                for e, old in zip(table["estimate"], table[column], strict=True)
            ]


def _frontier(
    trials: pd.DataFrame, cells: pd.DataFrame, grid: list[int], metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    frontier = pd.DataFrame({"batch_size": grid})
    frontier = frontier.merge(outcome_counts(trials), on="batch_size", how="left")
    best = best_cells(cells, ["batch_size"], metric)
    best = best.rename(
        columns={"cell": "best_cell", "scaling_rule": "best_rule", "optimizer": "best_optimizer"}
    )
    frontier = frontier.merge(best.drop(columns=["evidence"]), on="batch_size", how="left")
    for name in frontier.columns:
        if name in ("trials", "confirmations") or name in ("completed", "target", "stopped"):
            frontier[name] = frontier[name].fillna(0).astype(int)
    for name in ("diverged", "errored", "running"):
        frontier[name] = frontier[name].fillna(0).astype(int)
    frontier["estimate"] = (
        frontier["estimate"].astype(object).where(frontier["estimate"].notna(), None)
    )
    per_batch = trials.groupby("batch_size")
    extra = (
        pd.DataFrame(
            {
                # The study's own budget (the checks' longer runs are `judged_steps`).
                "budget_steps": trials[trials["phase"].isin(["search", "confirm"])]
                .groupby("batch_size")["budget_steps"]
                .max(),
                "bn_mode": per_batch["bn_mode"].agg(
                    lambda s: s.dropna().iloc[0] if s.notna().any() else None
                ),
                "bn_batch": per_batch["bn_batch"].max(),
            }
        ).reset_index()
        if len(trials)
        else pd.DataFrame(columns=["batch_size", "budget_steps", "bn_mode", "bn_batch"])
    )
    return frontier.merge(extra, on="batch_size", how="left")


def degradation_map(
    table: pd.DataFrame,
    *,
    target: float,
    tolerance: float,
    batch_sizes: Sequence[int] = (),
    ranges: dict[str, Any] | None = None,
    rule_stratified: bool = True,
    max_steps: int = 0,
    max_data_multiple: float = 0.0,
    n_boot: int = N_BOOT,
    seed: int = 0,
    metric: StudyMetric = ACCURACY,
    resources: tuple[float, float, int] = (0.0, 1.0, 1),
) -> DegradationMap:
    """Run the whole analysis on a trial table (see the module docstring for definitions);
    `target` and `tolerance` are in the units of `metric` (accuracy: a fraction; loss: nats);
    `resources`: GPUs and CPUs per worker and workers per trial, for the study's cost."""
    trials = trial_summary(table, metric)
    grid = sorted(set(int(b) for b in batch_sizes) | set(trials["batch_size"].astype(int)))
    cells = cell_accuracy(trials if len(trials) else trials.assign(cell=[]), metric=metric)
    frontier = _frontier(trials, cells, grid, metric)
    measured = frontier[[e is not None for e in frontier["estimate"]]]
    base = None
    if len(measured):
        first = measured.sort_values("batch_size").iloc[0]
        base = (int(first["batch_size"]), first["estimate"])
        base, decided_on, by_multiple = checked_baseline(frontier, trials, base, tolerance, metric)
    cap: dict[int, int] = {}
    if len(trials):
        # the baseline's own budget (its confirmations'), in whose examples the cap is stated
        confirmed = (
            (trials["batch_size"] == base[0]) & (trials["phase"] == "confirm") if base else None
        )
        own = trials.loc[confirmed, "budget_steps"] if base else None
        anchor = (int(own.max()), base[0]) if own is not None and own.notna().any() else None
        cap = {b: step_cap(trials, max_steps, b, anchor, max_data_multiple) for b in grid}
    checks = apply_budget_checks(
        frontier,
        trials,
        base,
        by_multiple if base else {},
        tolerance,
        cap,
        metric,
        decided_on if base else None,
    )
    _judge(frontier, base, tolerance, metric)
    _refine_statuses(frontier, trials, checks, ranges or {})
    _estimate_columns(frontier)
    data_columns(frontier, base[0] if base else None, examples_per_epoch(table))
    holds_equal = judge_equal_data(frontier, trials, base, tolerance, metric)
    rules_tested = (
        rule_test(trials, base, tolerance, metric)
        if len(trials)
        else rule_test(trials.assign(phase=[]), None, tolerance, metric)
    )
    holds_up_to = None
    for row in frontier.sort_values("batch_size").itertuples(index=False):
        if row.status in ("baseline", "holds"):
            holds_up_to = int(row.batch_size)
        elif holds_up_to is not None:
            break  # anything else, a batch size with no estimate too, ends the run of holds

    by_rule = rule_view(trials, cells, rule_stratified, metric) if len(trials) else cells.copy()
    _judge(by_rule, base, tolerance, metric)
    if len(by_rule):
        _estimate_columns(by_rule)
    rules = list(
        (ranges or {}).get("scaling_rule") or sorted(trials["scaling_rule"].dropna().unique())
    )
    verdicts = rule_verdicts(by_rule, rules) if len(by_rule) else []

    measured, how = measured_runs(table)
    crossings = first_crossings(measured, target, metric)
    runs = trials[trials["trial_id"].isin(set(measured["trial_id"]))] if len(trials) else trials
    steps = steps_to_target(crossings, runs)
    frontier = frontier.merge(steps, on="batch_size", how="left")
    frontier["steps_measure"] = how
    critical = estimate_critical_batch(frontier, crossings, n_boot, seed=seed)
    fit, low, high = critical.fit, critical.low, critical.high
    beyond = beyond_grid(fit, low, frontier)
    measured_steps = frontier[frontier["steps"].notna()]
    if len(measured_steps):
        # Perfect scaling from the smallest batch size that reached: steps_0 * B_0 / B.
        anchor = measured_steps.iloc[0]
        frontier["steps_perfect"] = anchor["steps"] * anchor["batch_size"] / frontier["batch_size"]
    else:
        frontier["steps_perfect"] = math.nan
    frontier["steps_fit"] = fit.steps(frontier["batch_size"].to_numpy()) if fit else math.nan
    # Beyond the grid, the regimes follow from the least B_crit the data allow (its interval's
    # low end), not from an extrapolated estimate.
    judged_by = beyond if beyond is not None else fit.b_crit if fit else None
    frontier["regime"] = [regime(b, judged_by) for b in frontier["batch_size"]]

    hparams = best_hyperparameters(
        trials[trials["cell"].isin(set(frontier["best_cell"].dropna()))], metric=metric
    )
    frontier = frontier.merge(
        hparams[
            [
                "batch_size",
                "actual_lr",
                "base_lr",
                "warmup_fraction",
                "weight_decay",
                "momentum",
                "beta2",
                "lr_linear",
                "lr_sqrt",
            ]
        ].rename(
            columns={
                "actual_lr": "best_actual_lr",
                "base_lr": "best_base_lr",
                "warmup_fraction": "best_warmup_fraction",
                "weight_decay": "best_weight_decay",
                "momentum": "best_momentum",  # NaN where not searched
                "beta2": "best_beta2",
            }
        ),
        on="batch_size",
        how="left",
    )
    speed = throughput(table)
    # The fastest worker count of each batch size, in samples/s and (language models) tokens/s.
    for column in ("samples_per_second", "tokens_per_second"):
        fastest = (
            speed.groupby("batch_size")[column].max() if len(speed) else pd.Series(dtype=float)
        )
        frontier[column] = frontier["batch_size"].map(fastest).astype(float)
    per_worker = resources[0] if resources[0] > 0 else resources[1]
    timing = time_to_target(frontier, speed, per_worker)
    quickest = timing.sort_values("hours_to_target").groupby("batch_size").head(1)
    for column in ("hours_to_target", "device_hours_to_target"):
        frontier[column] = (
            frontier["batch_size"].map(quickest.set_index("batch_size")[column]).astype(float)
        )
    return DegradationMap(
        target=target,
        tolerance=tolerance,
        batch_sizes=grid,
        trials=trials,
        cells=cells,
        frontier=frontier,
        by_rule=by_rule,
        best_hparams=hparams,
        throughput=speed,
        crossings=crossings,
        baseline=base,
        holds_up_to=holds_up_to,
        rules=verdicts,
        fit=fit,
        b_crit_ci=(low, high),
        b_crit_replicates=critical.replicates,
        b_crit_ci_stretched=critical.stretched,
        b_crit_at_least=beyond,
        warnings=boundary_warnings(hparams, ranges or {}),
        rule_test=rules_tested,
        metric=metric,
        tokens_per_example=_tokens_per_example(table),
        cost=study_cost(table, *resources),
        time_to_target=timing,
        holds_up_to_equal_data=holds_equal,
    )


def beyond_grid(fit: CriticalFit | None, low: float, frontier: pd.DataFrame) -> float | None:
    """The least B_crit the data allow (the interval's low end) where even that lies beyond
    the grid's largest batch size: the study can say "beyond the grid: at least X", not where
    in it; None otherwise."""
    largest = float(frontier["batch_size"].max()) if len(frontier) else math.nan
    if fit is None or not (math.isfinite(low) and low > largest):
        return None
    return float(low)


def _tokens_per_example(table: pd.DataFrame) -> int:
    """The sequence length of a language model's examples, as its trials reported it."""
    if "tokens_per_example" not in table:
        return 0
    tokens = pd.to_numeric(table["tokens_per_example"], errors="coerce").dropna()
    return int(tokens.max()) if len(tokens) else 0
