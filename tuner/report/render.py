"""The report's files as text: `report.md` (markdown) and `frontier.json`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.analysis.accuracy import MIN_EVIDENCE
from tuner.analysis.frontier import DegradationMap
from tuner.cluster.placement import where_text
from tuner.report.adequacy import adequacy_table
from tuner.report.critical_section import critical_section, critical_summary, plain
from tuner.report.critical_verdict import steps_measure
from tuner.report.data_verdict import data_table
from tuner.report.figures import FIGURE_TITLES
from tuner.report.format import (
    OUTCOME_COLUMNS,
    batch_list,
    count,
    diff_text,
    duration,
    finite,
    markdown_table,
    metric_columns,
    num,
    text,
    value_text,
)
from tuner.spec import StudySpec


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    frame = frame.drop(columns=["estimate"], errors="ignore")
    return [plain(row) for row in frame.to_dict(orient="records")]


def frontier_json(
    m: DegradationMap,
    spec: StudySpec,
    lines: list[str],
    notes: list[str],
    ran: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything in the report as one JSON document (`ran`: where the trials ran,
    `tuner.cluster.placement.where_trials_ran`)."""
    base = m.baseline
    return plain(
        {
            "study": {
                "name": spec.name,
                "workload": spec.title,
                "dataset": spec.dataset,
                "batch_sizes": list(spec.batch_sizes),
                "search_trials": spec.trials,
                "budget": str(spec.budget_spec()),
                "cells": [c.key for c in spec.cells()],
                "seeds": spec.seeds,
                "workers_per_trial": spec.workers_per_trial,
                "bn_mode": spec.bn_mode,
                "ghost_batch": spec.ghost_batch,
            },
            "placement": {
                "strategy": spec.placement_strategy,
                "accelerator_type": spec.accelerator_type,
                **(ran or {}),
            },
            # The frontier's "accuracy" columns hold this metric's values ("drop": worse by).
            "metric": {"name": m.metric.name, "key": m.metric.key, "mode": m.metric.mode},
            "target": m.target,
            "tolerance": m.tolerance,
            "tokens_per_example": m.tokens_per_example,
            "verdict": lines,
            "missing": notes,
            "baseline": (
                {
                    "batch_size": base[0],
                    "accuracy": base[1].mean,
                    "runs": base[1].n,
                    "source": base[1].source,
                    "val_examples": base[1].val_examples,
                }
                if base
                else None
            ),
            "holds_up_to": m.holds_up_to,  # given the data each was judged at (data_ratio)
            "holds_up_to_equal_data": m.holds_up_to_equal_data,
            "rules": [dataclasses.asdict(v) for v in m.rules],
            "critical_batch": critical_summary(m),
            "frontier": _records(m.frontier),
            "cells": _records(m.cells),
            "by_rule": _records(m.by_rule),
            "best_hyperparameters": _records(m.best_hparams),
            "throughput": _records(m.throughput),
            "warnings": m.warnings,
            "cost": dataclasses.asdict(m.cost) if m.cost else None,
            "time_to_target": _records(m.time_to_target),
        }
    )


def _rungs(spec: StudySpec, m: DegradationMap) -> str:
    """ASHA's rungs in steps at each batch size: 'batch 8: 40, 119 steps; ...'."""
    fractions = spec.rungs()
    parts = [
        f"{int(r.batch_size)}: " + ", ".join(str(round(f * r.budget_steps)) for f in fractions)
        for r in m.frontier.dropna(subset=["budget_steps"]).itertuples(index=False)
    ]
    share = ", ".join(f"{f:.0%}" for f in fractions)
    return f"ASHA rungs at {share} of the budget, in steps by batch size: " + "; ".join(parts)


def _test_columns(m: DegradationMap) -> list[tuple[str, str, Any]]:
    """The confirmed runs on the test set, where the data set has one."""
    if "test_mean" not in m.frontier or not m.frontier["test_mean"].notna().any():
        return []
    return [("test_mean", f"test {m.metric.name}", lambda v: value_text(m.metric, v))]


def _pairing(m: DegradationMap) -> str:
    """How the comparisons were made: example by example where every one was paired."""
    paired = m.frontier.get("paired")
    judged = m.frontier["drop"].notna() if "drop" in m.frontier else None
    if paired is None or judged is None or not judged.any():
        return "no comparisons"
    if paired[judged].all():
        return (
            "paired: both sides are scored on the same validation examples, so only their "
            "disagreements count as the validation part"
        )
    if not paired[judged].any():
        return "unpaired: the two sides' validation errors add"
    return "paired where both sides kept per-example results, else unpaired"


def _batch_unit(m: DegradationMap) -> list[str]:
    """What a batch counts: examples, or sequences of tokens (a language model)."""
    if not m.tokens_per_example:
        return []
    return [
        f"- a batch size counts sequences of {m.tokens_per_example} tokens: batch B trains on "
        f"B x {m.tokens_per_example} tokens per step"
    ]


def _token_columns(m: DegradationMap, header: str = "tokens/s") -> list[tuple]:
    """Tokens per second beside samples per second, for language models."""
    return [("tokens_per_second", header, lambda v: num(v, 4))] if m.tokens_per_example else []


def render_markdown(
    m: DegradationMap,
    spec: StudySpec,
    lines: list[str],
    notes: list[str],
    figures: dict[str, Path],
    study_dir: Path,
    ran: dict[str, Any] | None = None,
) -> str:
    """The report: verdict first, then the study, tables, warnings and figures (`ran`: where
    the trials ran, `tuner.cluster.placement.where_trials_ran`)."""
    out = [
        f"# Degradation map: {spec.what} ({spec.name})",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]
    if notes:
        out += ["## Missing or partial", "", *[f"- {note}" for note in notes], ""]
    budget = spec.budget_spec()
    bn = m.frontier.dropna(subset=["bn_mode"])
    value = lambda v: value_text(m.metric, v)  # noqa: E731
    diff = lambda v: diff_text(m.metric, v)  # noqa: E731
    out += [
        "## Study",
        "",
        f"- batch sizes {batch_list(spec.batch_sizes)}; {len(spec.cells())} cells "
        f"(batch size{''.join(' x ' + s for s in spec.strata)}), {spec.trials} search trials, "
        f"then {spec.seeds} confirmation run(s) of each cell's best; "
        f"{spec.workers_per_trial} worker(s) per trial",
        "- placement: "
        + where_text(
            spec.placement_strategy, spec.accelerator_type, spec.workers_per_trial, ran or {}
        ),
        f"- budget: {budget.describe()}; evaluations every "
        f"{spec.eval_every or 'about 1/20 of the budget in'} steps",
        f"- {_rungs(spec, m)}",
        "- BatchNorm statistics batch: "
        + (
            ", ".join(
                f"{int(r.batch_size)}: {r.bn_mode}"
                + (f" ({int(r.bn_batch)} examples)" if finite(r.bn_batch) and r.bn_batch else "")
                for r in bn.itertuples(index=False)
            )
            or "-"
        ),
        f"- target {m.metric.label} {value_text(m.metric, m.target)}; tolerance "
        f"{diff_text(m.metric, m.tolerance)} {'below' if m.metric.mode == 'max' else 'above'} "
        f"the baseline (the smallest batch size's confirmed {m.metric.noun}), judged with "
        f"one-sided 95% bounds on the {m.metric.worse}",
        *_batch_unit(m),
        "- search ranges: " + "; ".join(f"{k} {v}" for k, v in spec.search_ranges.items()),
        "",
    ]
    out += [
        "## Frontier (per batch size)",
        "",
        f"{m.metric.noun.capitalize()} = the mean final {m.metric.label} of the batch size's "
        "best cell's configuration, trained again with fresh seeds (runs; sd across them); val "
        f"SE = the validation set's own standard error. {m.metric.worse.capitalize()} = how "
        f"much worse than the baseline; {m.metric.worse} upper = its "
        f"one-sided 95% upper bound (seed spread and validation error together; "
        f"{_pairing(m)}). Status: holds "
        "(upper bound within the tolerance), degraded (lower bound beyond it), unresolved. "
        f"Steps to target are {steps_measure(m)} (diverged runs left out), interpolated "
        "between the evaluations around it; '>' marks a batch size that never reached it "
        "(censored at its longest run).",
        "",
        markdown_table(
            m.frontier.assign(steps_shown=_steps_shown(m.frontier)),
            [
                ("batch_size", "batch", count),
                *OUTCOME_COLUMNS,
                ("best_cell", "best cell", text),
                *metric_columns(m.metric),
                *_test_columns(m),
                ("budget_steps", "budget (steps)", count),
                ("steps_shown", "steps to target", text),
                ("steps_fit", "fit", num),
                ("regime", "regime", text),
                ("bn_batch", "BN batch", lambda v: count(v) if finite(v) and v else "-"),
                ("samples_per_second", "samples/s", lambda v: num(v, 4)),
                *_token_columns(m),
            ],
        ),
        "",
    ]
    out += [
        "## Per cell",
        "",
        "Every cell's best search configuration (of the search trials that ran their whole "
        "budget) and its confirmation runs. Evidence = runs of the whole budget in the cell "
        f"(search and confirmation); per-rule verdicts need {MIN_EVIDENCE}.",
        "",
        markdown_table(
            m.cells.assign(accuracy=[e.mean if e else math.nan for e in m.cells["estimate"]])
            if len(m.cells)
            else m.cells,
            [
                ("cell", "cell", text),
                ("final_search", "full search runs", count),
                ("search_best", "search best", value),
                ("best_trial", "best trial", text),
                ("confirmed_n", "confirm runs", count),
                ("confirmed_mean", "confirmed mean", value),
                ("confirmed_std", "sd", diff),
                ("confirm_failed", "confirm failed", count),
                ("evidence", "evidence", count),
            ],
        ),
        "",
        "## Per batch size x scaling rule",
        "",
        markdown_table(
            m.by_rule,
            [
                ("batch_size", "batch", count),
                ("scaling_rule", "rule", text),
                ("evidence", "evidence", count),
                *metric_columns(m.metric),
            ],
        ),
        "",
    ]
    out += data_table(m) + adequacy_table(m)
    out += ["## Critical batch size", "", *critical_section(m), ""]
    out += [
        "## Best hyperparameters per batch size",
        "",
        "The best search trial of each batch size's best cell. lr = the actual peak lr after "
        "the scaling rule; the linear and square-root predictions scale the smallest batch "
        "size's best lr.",
        "",
        markdown_table(
            m.best_hparams,
            [
                ("batch_size", "batch", count),
                ("trial_id", "trial", text),
                ("value", f"search {m.metric.noun}", value),
                ("scaling_rule", "rule", text),
                ("optimizer", "optimizer", text),
                ("base_lr", "base lr", num),
                ("actual_lr", "lr", num),
                ("lr_linear", "linear pred.", num),
                ("lr_sqrt", "sqrt pred.", num),
                ("warmup_fraction", "warmup (of budget)", num),
                ("weight_decay", "weight decay", num),
                *[  # where the workload searched them
                    (name, name, num)
                    for name in ("momentum", "beta2")
                    if name in m.best_hparams and m.best_hparams[name].notna().any()
                ],
            ],
        ),
        "",
    ]
    out += ["## Search-range warnings", ""]
    out += [f"- {w['message']}" for w in m.warnings] or [
        "None: no best trial sits within 5% of a search-range bound."
    ]
    out += [
        "",
        "## Throughput",
        "",
        markdown_table(
            m.throughput,
            [
                ("batch_size", "batch", count),
                ("workers", "workers", count),
                ("samples_per_second", "samples/s (median)", lambda v: num(v, 4)),
                *_token_columns(m, "tokens/s (median)"),
                ("windows", "windows", count),
                ("trials", "trials", count),
            ],
        ),
        "",
    ]
    if m.time_to_target is not None and len(m.time_to_target):
        unit = m.cost.device if m.cost else "device"
        out += [
            "## Time to target vs compute",
            "",
            f"Steps to target x batch size / measured samples/s: the training time to the target "
            f"at each batch size and worker count, and the {unit}-hours it takes (training only; "
            f"start-up and evaluations are in the study's cost).",
            "",
            markdown_table(
                m.time_to_target,
                [
                    ("batch_size", "batch", count),
                    ("workers", "workers", count),
                    ("hours_to_target", "time to target", duration),
                    ("device_hours_to_target", f"{unit} time to target", duration),
                ],
            ),
            "",
        ]
    out += ["## Figures", ""]
    for stem, path in figures.items():
        out += [
            f"### {FIGURE_TITLES.get(stem, stem).replace('Accuracy', m.metric.noun.capitalize())}",
            "",
            f"![{stem}]({path.relative_to(study_dir).as_posix()})",
            "",
        ]
    out += [
        "## Files",
        "",
        "trials.csv (every trial x evaluation), frontier.csv / frontier.json (these tables), "
        "figures/, and a TensorBoard run of the whole map: "
        f"`tensorboard --logdir {study_dir / 'summary'}` (Images: the figures; Scalars: the "
        "frontier with batch size as the step; Text: this report; HParams: every trial, "
        f"sortable and filterable). `--logdir {study_dir}` adds each trial's own curves.",
        "",
    ]
    return "\n".join(out)


def _steps_shown(frontier: pd.DataFrame) -> list[str]:
    """Steps to target per row, '> N' for a batch size that never reached it in N steps, '<= N'
    for one past it at its first evaluation (step N)."""
    shown = []
    at_most = frontier.get("steps_at_most", pd.Series(math.nan, index=frontier.index))
    for steps, censored, bound in zip(
        frontier["steps"], frontier["censored_at"], at_most, strict=True
    ):
        shown.append(
            count(steps)
            if finite(steps)
            else f"> {count(censored)}"
            if finite(censored)
            else f"<= {count(bound)}"
            if finite(bound)
            else "-"
        )
    return shown
