"""The scaling rules' verdicts: the rule test (the baseline's best moved to every batch size by
each rule alone) and, without it, the per-rule cells' verdicts."""

from __future__ import annotations

import pandas as pd

from trainables.metrics import StudyMetric
from tuner.analysis.accuracy import MIN_EVIDENCE
from tuner.analysis.checks import rule_holds_up_to
from tuner.analysis.frontier import DegradationMap
from tuner.report.format import batch_list, diff_text, finite, num, value_text
from tuner.spec import StudySpec


def diverged_runs(row: pd.Series) -> str:
    """'1 of 2 runs' diverged (a rule-test row)."""
    return f"{int(row['diverged_runs'])} of {int(row['runs'])} runs"


def run_range(metric: StudyMetric, row: pd.Series) -> str:
    """', runs 28.7% to 98.6%' (worst to best) where a rule-test row has two runs or more."""
    if row["runs"] < 2 or not (finite(row["worst_run"]) and finite(row["best_run"])):
        return ""
    return f", runs {value_text(metric, row['worst_run'])} to {value_text(metric, row['best_run'])}"


def rule_test_verdict(m: DegradationMap) -> list[str]:
    """The rule test: the baseline's best moved to every batch size by each rule alone."""
    table = m.rule_test
    if table is None or table.empty or m.baseline is None:
        return []
    base_batch = m.baseline[0]
    tol = diff_text(m.metric, m.tolerance)
    parts = []
    for rule in sorted(table["scaling_rule"].unique()):
        rows = table[table["scaling_rule"] == rule].sort_values("batch_size")
        holds = rule_holds_up_to(table, rule, base_batch)
        first = rows[rows["batch_size"] > holds].head(1)
        text = (
            f"{rule} holds up to batch {holds}"
            if holds > base_batch
            else f"{rule} is not shown to hold beyond batch {base_batch}"
        )
        if len(first):
            row = first.iloc[0]
            batch = int(row["batch_size"])
            why = (
                f"diverged at batch {batch} ({diverged_runs(row)}, peak lr "
                f"{num(row['peak_lr'], 2)})"
                if row["status"] == "diverged"
                else f"{row['status']} at batch {batch} ({m.metric.worse} "
                f"{diff_text(m.metric, row['drop'])}{run_range(m.metric, row)}, peak lr "
                f"{num(row['peak_lr'], 2)})"
            )
            text += f", {why}"
        # a run that diverges is a finding wherever it is, not only at the first failure
        named = int(first.iloc[0]["batch_size"]) if len(first) else holds
        later = rows[(rows["batch_size"] > named) & (rows["diverged_runs"] > 0)]
        for _, row in later.iterrows():
            text += (
                f", diverged at batch {int(row['batch_size'])} ({diverged_runs(row)}, peak lr "
                f"{num(row['peak_lr'], 2)})"
            )
        parts.append(text)
    runs = int(table["runs"].max())
    within = (
        f"within {tol} at 95% confidence"
        if runs >= 2
        else "no interval on one run, so no rule is shown to hold"
    )
    return [
        f"Rule test (the batch-{base_batch} baseline's best configuration moved to every batch "
        f"size by the rule alone, no retuning, {runs} seed(s) each, {within}): "
        + "; ".join(parts)
        + "."
    ]


def rule_verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """Per scaling rule, from cells with enough finished runs only."""
    if m.rule_test is not None and not m.rule_test.empty:
        return rule_test_verdict(m)
    if len(m.rules) < 2 or m.baseline is None:
        return []  # one rule: the accuracy verdict above is its verdict
    tol = diff_text(m.metric, m.tolerance)
    parts = []
    for v in m.rules:
        rows = m.by_rule[m.by_rule["scaling_rule"] == v.rule]
        if rows.empty:
            parts.append(f"{v.rule}: no trial yet")
            continue
        text = v.rule
        if v.holds_up_to is not None:
            text += f" holds up to batch {v.holds_up_to}"
        else:
            text += " is not shown to hold at any batch size"
        if v.first_degraded is not None:
            text += f", degraded at batch {v.first_degraded}"
        if v.unresolved:
            text += f", unresolved at {batch_list(v.unresolved)}"
        if v.unstable:
            text += f", unstable (a judged run diverged) at {batch_list(v.unstable)}"
        if v.not_enough:
            text += f", not enough evidence at {batch_list(v.not_enough)}"
        parts.append(text)
    stratified = "rule" in spec.strata
    how = (
        "each rule tuned in its own cells (base lr searched in the same range, scaled by the rule)"
        if stratified
        else "rules searched inside each batch size's cell: unconfirmed best trials"
    )
    return [
        f"Per scaling rule ({how}; within {tol} of the baseline at 95% confidence; a verdict "
        f"needs {MIN_EVIDENCE} runs of the whole budget in a cell): " + "; ".join(parts) + "."
    ]
