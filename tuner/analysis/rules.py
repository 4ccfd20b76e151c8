"""Per scaling rule: each rule's best cell per batch size, and how far each rule holds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.accuracy import MIN_EVIDENCE, NO_INTERVAL, UNSTABLE, cell_accuracy


@dataclass
class RuleVerdict:
    """How far one scaling rule holds, from cells with enough evidence only."""

    rule: str
    holds_up_to: int | None
    first_degraded: int | None
    unresolved: list[int]
    not_enough: list[int]
    unstable: list[int] = field(default_factory=list)  # a judged run diverged


def best_cells(
    cells: pd.DataFrame, keys: Sequence[str], metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """Per group of `keys`, the cell with the best search result (ties: the first cell)."""
    if cells.empty:
        return cells
    ranked = cells.assign(_rank=(cells["search_best"] * metric.sign).fillna(-math.inf))
    ranked = ranked.sort_values([*keys, "_rank"], ascending=[True] * len(keys) + [False])
    return ranked.groupby(list(keys), sort=True).head(1).drop(columns="_rank")


def rule_view(
    trials: pd.DataFrame, cells: pd.DataFrame, stratified: bool, metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """Per batch size x rule: the rule's cell (its best one, stratified), or the rule's best
    search trial inside unstratified cells (no confirmation runs: flagged `search`)."""
    if stratified:
        return best_cells(cells, ["batch_size", "scaling_rule"], metric).reset_index(drop=True)
    keyed = trials.assign(rule_cell=trials["batch_size"].astype(str) + "-" + trials["scaling_rule"])
    keyed = keyed[keyed["phase"] == "search"]
    return cell_accuracy(keyed, by="rule_cell", metric=metric)


def rule_verdicts(by_rule: pd.DataFrame, rules: Sequence[str]) -> list[RuleVerdict]:
    verdicts = []
    for rule in rules:
        rows = by_rule[by_rule["scaling_rule"] == rule].sort_values("batch_size")
        holds, first_degraded, unresolved, not_enough, unstable = None, None, [], [], []
        stopped = False
        for row in rows.itertuples(index=False):
            batch = int(row.batch_size)
            if row.evidence < MIN_EVIDENCE or row.status is None:
                not_enough.append(batch)
                stopped = True
            elif row.status in ("holds", "baseline") and not stopped:
                holds = batch
            elif row.status == "degraded":
                first_degraded = first_degraded or batch
                stopped = True
            elif row.status in ("unresolved", NO_INTERVAL):
                unresolved.append(batch)
                stopped = True
            elif row.status == UNSTABLE:
                unstable.append(batch)
                stopped = True
        verdicts.append(RuleVerdict(rule, holds, first_degraded, unresolved, not_enough, unstable))
    return verdicts
