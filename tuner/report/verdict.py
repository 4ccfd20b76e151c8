"""The plain-language verdict that opens the report, and what the report could not show."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.metrics import StudyMetric
from tuner.analysis.accuracy import NO_INTERVAL, UNSTABLE
from tuner.analysis.frontier import DegradationMap
from tuner.analysis.steps import BUDGET_FREE, started_ahead_unused
from tuner.analysis.trials import OUTCOMES
from tuner.report.cost_text import cost_verdict
from tuner.report.critical_verdict import critical_verdict
from tuner.report.data_verdict import data_verdict
from tuner.report.format import (
    batch_list,
    diff_text,
    finite,
    long_value_text,
    num,
    value_text,
)
from tuner.report.rule_verdict import rule_verdict
from tuner.spec import StudySpec


def _recipe(m: DegradationMap, batch: int, several_optimizers: bool) -> str:
    """'linear scaling, warmup 5% of the budget, peak lr 0.19, weight decay 1e-4'."""
    row = m.frontier[m.frontier["batch_size"] == batch]
    if row.empty or not finite(row.iloc[0].get("best_actual_lr")):
        return ""
    row = row.iloc[0]
    optimizer = f"{row['best_optimizer']}, " if several_optimizers else ""
    warmup = row["best_warmup_fraction"]
    warm = (
        f"warmup {100 * warmup:.0f}% of the budget"
        if finite(warmup) and warmup > 0
        else "no warmup"
    )
    searched = "".join(  # momentum / beta2 where the workload searched them
        f", {name} {num(row.get('best_' + name), 3)}"
        for name in ("momentum", "beta2")
        if finite(row.get("best_" + name))
    )
    return (
        f"{optimizer}{row['best_rule']} scaling, {warm}, peak lr {num(row['best_actual_lr'], 2)}, "
        f"weight decay {num(row['best_weight_decay'], 2)}{searched}"
    )


def _accuracy(row: pd.Series, metric: StudyMetric) -> str:
    """'98.1% (3 seeds, sd 0.4 pt)' or '97.5% (best search trial, unconfirmed: reads high)'
    (for a loss, '1.234 nats (perplexity 3.43, ...) (3 seed(s), sd 0.004 nats)')."""
    value = long_value_text(metric, row["accuracy"])
    if row["accuracy_source"] == "confirmed":
        spread = (
            f", sd {diff_text(metric, row['accuracy_std'])}" if finite(row["accuracy_std"]) else ""
        )
        return f"{value} ({int(row['accuracy_runs'])} seed(s){spread})"
    better = "high" if metric.mode == "max" else "low"
    return f"{value} (best search trial, unconfirmed: reads {better})"


def _drop(row: pd.Series, metric: StudyMetric) -> str:
    d = lambda v: diff_text(metric, v)  # noqa: E731
    return (
        f"{metric.worse} {d(row['drop'])}, one-sided 95% bounds {d(row['drop_low'])} to "
        f"{d(row['drop_high'])}"
    )


def _judged_at(row: pd.Series, metric: StudyMetric) -> str:
    """' at 1200 steps (4x its budget, its lr x0.5; against the baseline given 4x its steps
    too: 97.1%)' where the checks judged it at another level than its confirmed configuration;
    else nothing."""
    judged, own = row.get("judged_steps"), row.get("budget_steps")
    factor = row.get("judged_lr_factor")
    lr = f", its lr x{num(factor, 2)}" if finite(factor) and factor != 1 else ""
    if not finite(judged) or not finite(own) or (judged <= own and not lr):
        return ""
    # the value at a level the checks chose comes from seeds that did not choose it (issue 32)
    fresh = "; measured again with fresh seeds" if row.get("judged_fresh") in (True,) else ""
    if judged <= own:
        return f" at {int(judged)} steps ({lr[2:]}{fresh})"
    multiple, base = row.get("baseline_multiple"), row.get("baseline_accuracy")
    if finite(multiple) and multiple > 1:
        against = (
            f"the baseline given {num(multiple, 2)}x its steps too: {value_text(metric, base)}"
        )
    else:
        against = "the baseline at its own budget: it was not run with more steps"
    return (
        f" at {int(judged)} steps ({num(judged / own, 2)}x its budget{lr}; against {against}"
        f"{fresh})"
    )


def accuracy_verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """How far accuracy (or loss) holds when every batch size is tuned on its own and
    confirmed."""
    metric = m.metric
    if m.baseline is None:
        return [f"No trial has run its whole budget yet, so there is no {metric.noun} map."]
    base_batch, base = m.baseline
    frontier = m.frontier.set_index("batch_size")
    base_row = frontier.loc[base_batch]
    measured = m.frontier[m.frontier["status"].notna()]
    tol = diff_text(metric, m.tolerance)
    several = len(spec.search_ranges.get("optimizer", [])) > 1
    if len(measured) == 1:
        return [
            f"Only batch {base_batch} has trials that ran their whole budget "
            f"({_accuracy(base_row, metric)}), so there is nothing to compare it with yet."
        ]
    holds = m.holds_up_to
    degraded = measured[measured["status"] == "degraded"]["batch_size"].astype(int).tolist()
    unresolved = measured[measured["status"] == "unresolved"]["batch_size"].astype(int).tolist()
    lines = []
    factor = base_row.get("baseline_lr_factor")
    moved = f", its lr x{num(factor, 2)} after the lr check" if finite(factor) else ""
    opening = (
        f"Tuned at every batch size and measured again with fresh seeds, {metric.noun} holds "
        f"within {tol} of the batch-{base_batch} baseline ({_accuracy(base_row, metric)}"
        f"{moved})"
    )
    if holds == base_batch:
        lines.append(
            f"{opening.replace('holds within', 'is not shown to hold within')} beyond batch "
            f"{base_batch}."
        )
    else:
        largest = int(measured["batch_size"].max())
        at = frontier.loc[holds]
        tail = ", the largest measured" if holds == largest else ""
        lines.append(
            f"{opening} up to batch {holds}{tail}: {_accuracy(at, metric)}{_judged_at(at, metric)} "
            f"with {_recipe(m, holds, several)} ({_drop(at, metric)})."
        )
    for batch in degraded:
        row = frontier.loc[batch]
        lines.append(
            f"Degraded at batch {batch}: {_accuracy(row, metric)}{_judged_at(row, metric)}, "
            f"{_drop(row, metric)}, beyond the {tol} tolerance at 95% confidence; "
            f"{row['budget_check'] or 'more steps were not tried'}."
        )
    # short of the baseline, and what may still save it
    why_not_degraded = {
        "under-trained": lambda row: (
            f"{row['budget_check'] or 'more steps were not tried'}: "
            "more steps may still save it (--max-data-multiple, --max-steps)"
        ),
        "under-searched": lambda row: (
            f"its best lr sits on the {row['lr_edge']} its search "
            "covered, so a better lr may save it (more --trials extend the range further)"
        ),
    }
    for status, why in why_not_degraded.items():
        for batch in measured[measured["status"] == status]["batch_size"].astype(int):
            row = frontier.loc[batch]
            lines.append(
                f"{status.capitalize()} at batch {batch}, not shown degraded: "
                f"{_accuracy(row, metric)}{_judged_at(row, metric)}, {_drop(row, metric)}; "
                f"{why(row)}."
            )
    if unresolved:
        row = frontier.loc[unresolved[0]]
        lines.append(
            f"Unresolved at batch {batch_list(unresolved)}: the {metric.worse}'s bounds straddle "
            f"the {tol} tolerance (batch {unresolved[0]}: {_accuracy(row, metric)}"
            f"{_judged_at(row, metric)}, "
            f"{_drop(row, metric)}); this study resolves {metric.worse}s of about "
            f"{diff_text(metric, row['resolution'])} and no finer. More seeds "
            f"(--seeds) or a larger validation set would settle it."
        )
    lines += no_interval(m, measured, frontier, base)
    lines += missing_estimates(m) + diverged_seeds(m)
    better = measured[measured["drop_high"] < -m.tolerance]["batch_size"].astype(int).tolist()
    if better:
        unit = spec.budget_spec().unit
        why = (
            "under an equal-step budget the smaller batch sizes see fewer examples; an epoch "
            "budget (--budget epochs:E) compares them at equal data"
            if unit == "steps"
            else "the baseline may be short of steps or of tuning; check its curves"
        )
        lines.append(
            f"Batch {batch_list(better)} beat the batch-{base_batch} baseline by more than {tol} "
            f"at 95% confidence: {why}."
        )
    lines += resolution_notes(m) + test_scores(m)
    return lines


def test_scores(m: DegradationMap) -> list[str]:
    """The confirmed runs on the data set's official test set, which nothing selected on."""
    if "test_mean" not in m.frontier:
        return []
    rows = m.frontier[m.frontier["test_mean"].notna()]
    if rows.empty:
        return []
    scores = ", ".join(
        f"{int(r.batch_size)}: {value_text(m.metric, r.test_mean)}"
        for r in rows.itertuples(index=False)
    )
    examples = int(rows["test_examples"].max())
    return [
        f"On the official test set ({examples} examples; the search selected and the verdict "
        f"judged on a validation split held out from the training data), the runs each batch "
        f"size is judged by (its confirmation runs, or the checks' where they took it further) "
        f"score {scores}."
    ]


def no_interval(
    m: DegradationMap, measured: pd.DataFrame, frontier: pd.DataFrame, base: Any
) -> list[str]:
    """Batch sizes compared on one run of a side: a value, a difference, no confidence."""
    batches = measured[measured["status"] == NO_INTERVAL]["batch_size"].astype(int).tolist()
    if not batches:
        return []
    row, metric = frontier.loc[batches[0]], m.metric
    who = "the baseline has" if base.n < 2 else f"batch {batch_list(batches)} has"
    return [
        f"No interval at batch {batch_list(batches)}: {who} one run, so the spread over seeds "
        f"is unknown and no confidence is claimed (batch {batches[0]}: "
        f"{_accuracy(row, metric)}{_judged_at(row, metric)}, {metric.worse} "
        f"{diff_text(metric, row['drop'])}); nothing is called holding or degraded on one "
        f"run: give --seeds 2 or more."
    ]


def missing_estimates(m: DegradationMap) -> list[str]:
    """Name every batch size above the baseline with no estimate: "holds up to" stops there."""
    if m.baseline is None:
        return []
    rows = m.frontier[(m.frontier["batch_size"] > m.baseline[0]) & m.frontier["status"].isna()]
    lines = []
    for row in rows.itertuples(index=False):
        ended = [
            f"{int(getattr(row, name))} {name}"
            for name in ("stopped", "diverged", "errored", "running")
            if getattr(row, name, 0)
        ]
        lines.append(
            f"No {m.metric.noun} at batch {int(row.batch_size)}: none of its runs ended its "
            f"budget ({', '.join(ended) or 'no runs'}), so nothing is said of it and the "
            f"{m.metric.noun} is not said to hold beyond it."
        )
    return lines


def diverged_seeds(m: DegradationMap) -> list[str]:
    """Batch sizes where a judged run diverged: unstable there, whatever the mean (a diverged
    run counts at its last evaluation, never dropped)."""
    if "status" not in m.frontier:
        return []
    lines = []
    if m.baseline is not None and m.baseline[1].diverged:
        base = m.baseline[1]
        lines.append(
            f"The batch-{m.baseline[0]} baseline itself is unstable: {base.diverged} of its "
            f"{base.n} judged runs diverged (counted at their last evaluation)."
        )
    if "baseline_unstable" in m.frontier:
        for row in m.frontier[
            m.frontier["baseline_unstable"].fillna(False).astype(bool)
        ].itertuples(index=False):
            multiple = int(getattr(row, "baseline_multiple", 1) or 1)
            lines.append(
                f"Batch {int(row.batch_size)} was compared with the baseline at "
                f"{multiple}x its budget, where some of its judged runs diverged: it is not "
                f"said to hold against a baseline that did not train there (at most unresolved)."
            )
    for row in m.frontier[m.frontier["status"] == UNSTABLE].itertuples(index=False):
        estimate = row.estimate
        lines.append(
            f"Unstable at batch {int(row.batch_size)}: {estimate.diverged} of its {estimate.n} "
            f"judged runs diverged, so its configuration does not train reliably there and its "
            f"{m.metric.noun} is not said to hold; its {m.metric.noun} "
            f"{value_text(m.metric, estimate.mean)} counts each diverged run at its last "
            f"evaluation (where it diverged), not only the runs that trained."
        )
    return lines


def resolution_notes(m: DegradationMap) -> list[str]:
    """Say when the validation set alone cannot resolve the tolerance (for unpaired
    comparisons: paired ones are limited by how often the two sides disagree, not by it)."""
    if m.baseline is None or m.baseline[1].per_example is not None:
        return []
    base, metric = m.baseline[1], m.metric
    # Two values on the same number of examples: their difference has ~sqrt(2) x the SE.
    floor = 1.645 * math.sqrt(2) * base.val_se if finite(base.val_se) else math.nan
    if not finite(floor) or floor <= m.tolerance:
        return []
    return [
        f"The validation set is too small to resolve the {diff_text(metric, m.tolerance)} "
        f"tolerance: {base.val_examples} examples give one {metric.noun} a standard error of "
        f"{diff_text(metric, base.val_se)} at {value_text(metric, base.mean)}, so no difference "
        f"below about {diff_text(metric, floor)} can be told from noise, however many seeds."
    ]


def lr_verdict(m: DegradationMap) -> list[str]:
    """How the best lr grew against the linear and square-root predictions."""
    best = m.frontier.dropna(subset=["best_actual_lr"]).sort_values("batch_size")
    if len(best) < 2:
        return []
    first, last = best.iloc[0], best.iloc[-1]
    grown = last["best_actual_lr"] / first["best_actual_lr"]
    ratio = last["batch_size"] / first["batch_size"]
    return [
        f"The best peak lr grows x{num(grown, 2)} from batch {int(first['batch_size'])} to "
        f"{int(last['batch_size'])} (linear rule predicts x{num(ratio, 3)}, square root "
        f"x{num(math.sqrt(ratio), 3)})."
    ]


def budget_verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """The budget every verdict above is under, and how trials ended."""
    budget = spec.budget_spec()
    per_batch = m.frontier.dropna(subset=["budget_steps"])
    steps = ", ".join(
        f"{int(r.batch_size)}: {int(r.budget_steps)}" for r in per_batch.itertuples(index=False)
    )
    search = m.trials[m.trials["phase"] == "search"]
    totals = {o: int((search["outcome"] == o).sum()) for o in OUTCOMES}
    totals["diverged"] = int(search["diverged"].sum())
    confirm = m.trials[m.trials["phase"] == "confirm"]
    extend = m.trials[m.trials["phase"] == "extend"]
    own = extend["batch_size"].map(
        m.trials[m.trials["phase"] == "confirm"].groupby("batch_size")["budget_steps"].max()
    )
    equal = int((extend["budget_steps"] < own).sum())  # tuner.analysis.equal_data
    longer, rule_runs = len(extend) - equal, int((m.trials["phase"] == "rule").sum())
    unused = int(started_ahead_unused(extend).sum())
    fresh = int((m.trials["phase"] == "judge").sum())
    free = int((m.trials["phase"] == BUDGET_FREE).sum())
    checks = (
        f" Checks: {longer} run(s) with another lr or more steps"
        + (
            f" ({unused} of them the baseline's, started ahead of the checks and stopped once "
            f"none could use them: --speculate)"
            if unused
            else ""
        )
        + f", {equal} at equal data, {rule_runs} rule-test run(s)"
        + (f", {fresh} with fresh seeds at the levels the checks chose" if fresh else "")
        + (f", {free} budget-free run(s) for the steps to target" if free else "")
        + "."
        if longer or rule_runs or equal or fresh or free
        else ""
    )
    stop = (
        f" Trials ended once they reached the target (--stop-at-target): the values of "
        f"{m.metric.noun} are those at the target, not what more steps would give."
        if spec.stop_at_target
        else ""
    )
    return [
        f"Budget: {budget.describe()}; optimizer steps per trial by batch size: "
        f"{steps or '-'}. {len(search)} search trials started ({spec.trials} planned"
        f"{', the rest extending an lr range' if len(search) > spec.trials else ''}; "
        f"{totals['completed'] + totals['target']} ran their budget, {totals['stopped']} "
        f"stopped early by ASHA, {totals['diverged']} diverged, {totals['errored']} errored, "
        f"{totals['running']} unfinished), and {len(confirm)} confirmation runs "
        f"({spec.seeds} fresh seeds per cell).{checks}{stop}"
    ]


def missing_notes(m: DegradationMap, spec: StudySpec, study_dir: Path) -> list[str]:
    """What the report could not show, and why."""
    notes = []
    if m.trials.empty:
        notes.append(
            "No trial has started yet (none in optuna.db): the study is just starting, "
            "or was interrupted before its first trial."
        )
    unfinished = int(((m.trials["outcome"] == "running") & ~m.trials["diverged"]).sum())
    if unfinished:
        notes.append(
            f"{unfinished} trial(s) have not finished (the study is running or was "
            f"interrupted): their evaluations count toward steps to target, not toward "
            f"{m.metric.noun}. Rerun the report when the study is done."
        )
    missing = m.frontier[m.frontier["status"].isna()]
    if len(missing) and not m.trials.empty:
        why = []
        for row in missing.itertuples(index=False):
            ended = [
                f"{getattr(row, o)} {o}"
                for o in ("stopped", "diverged", "errored", "running")
                if getattr(row, o)
            ]
            why.append(f"{row.batch_size} ({', '.join(ended) or 'no trial yet'})")
        notes.append(f"No run of the whole budget at batch {'; '.join(why)}.")
    unconfirmed = m.frontier[m.frontier["accuracy_source"] == "search"]
    if len(unconfirmed) and spec.seeds > 0:
        notes.append(
            f"No confirmation run finished at batch "
            f"{batch_list(unconfirmed['batch_size'].astype(int))}: its {m.metric.noun} is the "
            f"best search trial's, which reads {'high' if m.metric.mode == 'max' else 'low'}."
        )
    errored = int((m.trials["outcome"] == "errored").sum())
    if errored:
        notes.append(
            f"{errored} trial(s) errored: the `error.txt` in each one's trial directory says why."
        )
    if len(spec.batch_sizes) < 2:
        notes.append(
            "The grid has a single batch size: no degradation or critical batch size "
            "can be measured."
        )
    return notes


def verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """The plain-language lines that open the report."""
    lines = [
        *accuracy_verdict(m, spec),
        *data_verdict(m),
        *rule_verdict(m, spec),
        *critical_verdict(m),
        *lr_verdict(m),
        *budget_verdict(m, spec),
        *cost_verdict(m),
    ]
    if m.warnings:
        batches = sorted({w["batch_size"] for w in m.warnings})
        lines.append(
            f"{len(m.warnings)} best-trial value(s) sit on the edge of the search range "
            f"(batch {batch_list(batches)}): widen those ranges (see Search-range "
            f"warnings)."
        )
    return lines
