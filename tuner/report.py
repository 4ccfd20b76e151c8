"""Write the degradation map of a study: `python -m tuner.report STUDY_DIR [--target T]`.

Reads the study's files only (no Ray), so it is safe on a study that is still running or was
interrupted; the search runs it at its end. Writes into STUDY_DIR:
    trials.csv      the tidy trial table (refreshed)
    frontier.csv    one row per batch size: outcomes, best accuracy + CI, degradation,
                    steps/examples to target, regime, best hyperparameters, throughput
    frontier.json   the same plus per-rule tables, the critical-batch fit and the verdict
    report.md       a plain-language verdict first, then tables and figures
    figures/*.png   six figures (accuracy, steps to target, lr, heatmap, throughput, curves)
    summary/        a TensorBoard run with the figures, frontier scalars and an HParams view

Examples:
    python -m tuner.report studies/simple_cnn-digits-20260101-120000
    python -m tuner.report s3://my-bucket/studies/rn50 --into rn50
    python -m tuner.report STUDY_DIR --target 0.9 --tolerance 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuner import plots
from tuner.analysis import (
    MAXIMAL_PARALLELISM_MIN,
    MIN_POINTS_FOR_CI,
    N_BOOT,
    OUTCOMES,
    PERFECT_SCALING_MAX,
    DegradationMap,
    degradation_map,
)
from tuner.results import COLUMNS, collect_trials, write_trial_table
from tuner.spec import SPEC_FILE, StudySpec, load_spec, study_location
from tuner.storage import (
    StorageError,
    download_study,
    exists,
    is_uri,
    join,
    pull_optuna_db,
)

REPORT_FILE = "report.md"
FRONTIER_CSV = "frontier.csv"
FRONTIER_JSON = "frontier.json"
FIGURES_DIR = "figures"
FIGURE_TITLES = {
    "accuracy_vs_batch": "Best accuracy vs batch size",
    "steps_to_target": "Steps to target vs batch size",
    "lr_vs_batch": "Best learning rate vs batch size",
    "accuracy_heatmap": "Best accuracy, batch size x scaling rule",
    "throughput": "Throughput vs batch size",
    "validation_curves": "Validation curves of the best trial per batch size",
}


class NotAStudy(Exception):
    """The directory holds no study.json."""


# --- formatting -----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any) -> str:
    """0.9621 -> '96.2%'; missing -> '-'."""
    return f"{100 * float(value):.1f}%" if _finite(value) else "-"


def num(value: Any, digits: int = 3) -> str:
    """A compact number ('0.0123', '1.5e+03'); missing -> '-'."""
    return f"{float(value):.{digits}g}" if _finite(value) else "-"


def count(value: Any) -> str:
    return f"{int(value)}" if _finite(value) else "-"


def yes_no(value: Any) -> str:
    """True -> 'yes', False -> 'no', unknown (None / NaN) -> '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "yes" if bool(value) else "no"


def batch_list(batches: Sequence[int]) -> str:
    return ", ".join(str(int(b)) for b in batches)


def markdown_table(
    frame: pd.DataFrame, columns: Sequence[tuple[str, str, Callable[[Any], str]]]
) -> str:
    """A GitHub markdown table of (column, header, formatter) triples; '(none)' when empty."""
    if frame.empty:
        return "(none)"
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for _, row in frame.iterrows():
        cells = [fmt(row.get(col)) for col, _, fmt in columns]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _text(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


# Columns both report tables share: outcome counts, then the best accuracy with its CI.
_OUTCOME_COLUMNS = [
    ("trials", "trials", count),
    ("completed", "done", count),
    ("stopped", "stopped", count),
    ("diverged", "diverged", count),
    ("errored", "errored", count),
]
_BEST_COLUMNS = [
    ("best_val_acc", "best", pct),
    ("ci_low", "CI low", pct),
    ("ci_high", "CI high", pct),
]


def _runs(labels: Sequence[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """Consecutive batch sizes that share a label: [(label, [batches]), ...]."""
    runs: list[tuple[str, list[int]]] = []
    for batch, label in labels:
        if runs and runs[-1][0] == label:
            runs[-1][1].append(batch)
        else:
            runs.append((label, [batch]))
    return runs


def _span(batches: list[int]) -> str:
    return f"{batches[0]}" if len(batches) == 1 else f"{batches[0]}-{batches[-1]}"


# --- the verdict ----------------------------------------------------------------------------


def _recipe(m: DegradationMap, batch: int, several_optimizers: bool) -> str:
    """'linear scaling, 1.3 warmup epochs, peak lr 0.19' for the best trial of `batch`."""
    row = m.best_hparams[m.best_hparams["batch_size"] == batch]
    if row.empty:
        return ""
    row = row.iloc[0]
    optimizer = f"{row['optimizer']}, " if several_optimizers else ""
    return (
        f"{optimizer}{row['scaling_rule']} scaling, {num(row['warmup_epochs'], 2)} warmup "
        f"epochs, peak lr {num(row['actual_lr'], 2)}, weight decay "
        f"{num(row['weight_decay'], 2)}"
    )


def accuracy_verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """How far accuracy holds, overall and per scaling rule."""
    if m.baseline is None:
        return ["No trial has finished yet, so there is no accuracy map."]
    base_batch, base_acc = m.baseline
    measured = m.frontier[m.frontier["best_val_acc"].notna()]
    tol = f"{m.tolerance * 100:g} pt"
    several = len(spec.search_ranges.get("optimizer", [])) > 1
    if len(measured) == 1:
        return [
            f"Only batch {base_batch} has finished trials (best {pct(base_acc)}), so there "
            f"is nothing to compare it with yet."
        ]
    lines = []
    largest = m.largest_within
    degraded = measured[measured["degraded"].astype(bool)]["batch_size"].astype(int).tolist()
    best_at = measured[measured["batch_size"] == largest].iloc[0]
    holds = (
        f"Accuracy holds within {tol} of the batch-{base_batch} baseline ({pct(base_acc)}) "
        f"up to batch {largest} with {_recipe(m, largest, several)} "
        f"(best {pct(best_at['best_val_acc'])})"
    )
    if not degraded:
        lines.append(holds + ", the largest batch measured.")
    else:
        first = measured[measured["batch_size"] == degraded[0]].iloc[0]
        drop = (
            f"batch {degraded[0]}: best {pct(first['best_val_acc'])}, "
            f"{100 * first['drop']:.1f} pt below"
        )
        if largest == base_batch:
            lines.append(
                f"Accuracy does not hold beyond the batch-{base_batch} baseline "
                f"({pct(base_acc)} with {_recipe(m, base_batch, several)}): more than "
                f"{tol} lost at batch {batch_list(degraded)} ({drop})."
            )
        else:
            lines.append(f"{holds}; degraded at batch {batch_list(degraded)} ({drop}).")
    per_rule = []
    for rule in spec.search_ranges.get("scaling_rule", sorted(m.largest_within_by_rule)):
        scored = m.by_rule[(m.by_rule["scaling_rule"] == rule) & m.by_rule["best_val_acc"].notna()]
        if scored.empty:
            per_rule.append(f"{rule}: no finished trial")
            continue
        within = m.largest_within_by_rule.get(rule)
        beyond = scored[scored["degraded"].astype(bool)]["batch_size"].astype(int).tolist()
        if within is None:
            per_rule.append(f"{rule}: below already at batch {int(scored['batch_size'].min())}")
        elif within == int(scored["batch_size"].max()):
            per_rule.append(f"{rule} up to batch {within} (its largest measured)")
        else:
            first = min(b for b in beyond if b > within)
            per_rule.append(f"{rule} up to batch {within}, below from batch {first}")
    lines.append(
        f"Per scaling rule (within {tol} of the same baseline, best trial of each "
        f"batch size x rule): " + "; ".join(per_rule) + "."
    )
    return lines


def critical_verdict(m: DegradationMap) -> list[str]:
    """Steps-to-target, the critical batch size and the regimes."""
    measured = m.frontier[m.frontier["steps"].notna()]
    target = pct(m.target)
    if measured.empty:
        return [
            f"No trial reached the target validation accuracy {target}, so steps to target "
            f"and the critical batch size are missing."
        ]
    if m.fit is None:
        return [
            f"Only batch {batch_list(measured['batch_size'])} reached {target} validation "
            f"accuracy (in {num(measured['steps'].iloc[0])} steps); the critical batch "
            f"size needs at least 2 batch sizes that reach it."
        ]
    where = f"steps to reach {target} at batch {batch_list(measured['batch_size'])}"
    if math.isinf(m.fit.b_crit):
        return [
            f"Steps to target fall as fast as 1/B across the batch sizes measured ({where}): "
            f"perfect scaling throughout, so the critical batch size is beyond batch "
            f"{int(measured['batch_size'].max())}."
        ]
    low, high = m.b_crit_ci
    if m.fit.points < 3:
        ci = "2 batch sizes only: the curve passes through both exactly, so indicative, no CI"
    elif not _finite(low):
        ci = "no 95% CI: too few resamples could be fitted"
    else:
        ci = f"95% CI {num(low)}-{num(high) if _finite(high) else 'unbounded'}"
    regimes = _runs(
        [
            (int(b), r)
            for b, r in zip(m.frontier["batch_size"], m.frontier["regime"], strict=True)
            if isinstance(r, str)
        ]
    )
    regime_text = ", ".join(f"{label} at batch {_span(batches)}" for label, batches in regimes)
    return [f"Critical batch size about {num(m.fit.b_crit)} ({ci}; fit to {where}): {regime_text}."]


def lr_verdict(m: DegradationMap) -> list[str]:
    """How the best lr grew against the linear and square-root predictions."""
    best = m.best_hparams.dropna(subset=["actual_lr"])
    if len(best) < 2:
        return []
    first, last = best.iloc[0], best.iloc[-1]
    grown = last["actual_lr"] / first["actual_lr"]
    ratio = last["batch_size"] / first["batch_size"]
    return [
        f"The best peak lr grows x{num(grown, 2)} from batch {int(first['batch_size'])} to "
        f"{int(last['batch_size'])} (linear rule predicts x{num(ratio, 3)}, square root "
        f"x{num(math.sqrt(ratio), 3)})."
    ]


def budget_verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """The budget the comparison uses, and how trials ended."""
    totals = {o: int((m.trials["outcome"] == o).sum()) for o in OUTCOMES}
    totals["diverged"] = int(m.trials["diverged"].sum())
    totals["running"] = int(((m.trials["outcome"] == "running") & ~m.trials["diverged"]).sum())
    return [
        f"Budget: {spec.epochs} epochs per trial at every batch size (an epoch budget "
        f"favours small batches); {len(m.trials)} of {spec.trials} trials started: "
        f"{totals['completed']} completed, {totals['stopped']} stopped early by ASHA, "
        f"{totals['diverged']} diverged, {totals['errored']} errored, "
        f"{totals['running']} unfinished."
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
            f"interrupted): their epochs count toward steps to target, not toward "
            f"best accuracy. Rerun the report when the study is done."
        )
    missing = m.frontier[m.frontier["best_val_acc"].isna()]
    if len(missing) and not m.trials.empty:
        why = []
        for row in missing.itertuples(index=False):
            ended = [
                f"{getattr(row, o)} {o}"
                for o in ("diverged", "errored", "running")
                if getattr(row, o)
            ]
            why.append(f"{row.batch_size} ({', '.join(ended) or 'no trial yet'})")
        notes.append(f"No finished, non-diverged trial at batch {'; '.join(why)}.")
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
    reached = m.frontier["steps"].notna()
    unreached = m.frontier[~reached & m.frontier["best_val_acc"].notna()]
    if len(unreached):
        best_seen = m.trials[~m.trials["diverged"]].groupby("batch_size")["best_val_acc"].max()
        best_seen = best_seen.dropna()
        hint = ""
        if len(best_seen):
            # A target every measured batch size reaches gives steps-to-target everywhere.
            hint = (
                f"; `python -m tuner.report {study_dir} --target "
                f"{math.floor(best_seen.min() * 100) / 100:.2f}` would include them all"
            )
        notes.append(
            f"No trial reached the target {pct(m.target)} at batch "
            f"{batch_list(unreached['batch_size'].astype(int))}{hint}."
        )
    return notes


def verdict(m: DegradationMap, spec: StudySpec) -> list[str]:
    """The plain-language lines that open the report."""
    lines = [
        *accuracy_verdict(m, spec),
        *critical_verdict(m),
        *lr_verdict(m),
        *budget_verdict(m, spec),
    ]
    if m.warnings:
        batches = sorted({w["batch_size"] for w in m.warnings})
        lines.append(
            f"{len(m.warnings)} best-trial value(s) sit on the edge of the search range "
            f"(batch {batch_list(batches)}): widen those ranges (see Search-range "
            f"warnings)."
        )
    return lines


# --- files ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe value: numpy scalars to Python, NaN / inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_plain(row) for row in frame.to_dict(orient="records")]


def critical_summary(m: DegradationMap) -> dict[str, Any]:
    """The critical-batch fit as plain values, with a status saying what it means."""
    thresholds = {
        "perfect_scaling_max_b_over_bcrit": PERFECT_SCALING_MAX,
        "maximal_parallelism_min_b_over_bcrit": MAXIMAL_PARALLELISM_MIN,
    }
    if m.fit is None:
        points = int(m.frontier["steps"].notna().sum())
        return {"status": "insufficient", "points": points, "regime_thresholds": thresholds}
    status = "unbounded" if math.isinf(m.fit.b_crit) else "fit"
    return _plain(
        {
            "status": status,
            "b_crit": m.fit.b_crit,
            "ci_low": m.b_crit_ci[0],
            "ci_high": m.b_crit_ci[1],
            "s_min": m.fit.s_min,
            "e_min": m.fit.e_min,
            "points": m.fit.points,
            "r2_log": m.fit.r2,
            "bootstrap_replicates": m.b_crit_replicates,
            "regime_thresholds": thresholds,
        }
    )


def frontier_json(
    m: DegradationMap, spec: StudySpec, lines: list[str], notes: list[str]
) -> dict[str, Any]:
    """Everything in the report as one JSON document."""
    return _plain(
        {
            "study": {
                "name": spec.name,
                "workload": spec.workload,
                "dataset": spec.dataset,
                "batch_sizes": list(spec.batch_sizes),
                "trials": spec.trials,
                "epochs": spec.epochs,
                "workers_per_trial": spec.workers_per_trial,
            },
            "target": m.target,
            "tolerance": m.tolerance,
            "verdict": lines,
            "missing": notes,
            "baseline": (
                {"batch_size": m.baseline[0], "val_acc": m.baseline[1]} if m.baseline else None
            ),
            "largest_batch_within_tolerance": {
                "overall": m.largest_within,
                "by_rule": m.largest_within_by_rule,
            },
            "critical_batch": critical_summary(m),
            "frontier": _records(m.frontier),
            "by_rule": _records(m.by_rule),
            "best_hyperparameters": _records(m.best_hparams),
            "best_by_rule": _records(m.best_by_rule),
            "throughput": _records(m.throughput),
            "warnings": m.warnings,
        }
    )


def _write_text(path: Path, text: str) -> Path:
    """Write atomically, so a reader never sees half a file (per-process temporary name, so
    two reports at once, e.g. the search's and a user's, do not collide)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def render_markdown(
    m: DegradationMap,
    spec: StudySpec,
    lines: list[str],
    notes: list[str],
    figures: dict[str, Path],
    study_dir: Path,
) -> str:
    """The report: verdict first, then the study, tables, warnings and figures."""
    out = [
        f"# Degradation map: {spec.workload} on {spec.dataset} ({spec.name})",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]
    if notes:
        out += ["## Missing or partial", "", *[f"- {note}" for note in notes], ""]
    out += [
        "## Study",
        "",
        f"- batch sizes {batch_list(spec.batch_sizes)}; {spec.trials} trials x "
        f"{spec.epochs} epochs; {spec.workers_per_trial} worker(s) per trial",
        f"- target validation accuracy {pct(m.target)}; tolerance {m.tolerance * 100:g} "
        f"pt below the baseline (best accuracy at the smallest batch size)",
        "- search ranges: " + "; ".join(f"{k} {v}" for k, v in spec.search_ranges.items()),
        "",
    ]
    out += [
        "## Frontier (per batch size)",
        "",
        "Best = best final validation accuracy of a finished, non-diverged trial; CI = 95% "
        "bootstrap interval of the best of k (trials resampled within the batch size). "
        "Steps and examples to target are pooled over all non-diverged trials of the batch "
        "size (first evaluation at or above the target).",
        "",
        markdown_table(
            m.frontier,
            [
                ("batch_size", "batch", count),
                *_OUTCOME_COLUMNS,
                ("running", "running", count),
                *_BEST_COLUMNS,
                ("drop", "drop (pt)", lambda v: num(100 * float(v), 2) if _finite(v) else "-"),
                ("degraded", "degraded", yes_no),
                ("best_rule", "best rule", _text),
                ("steps", "steps to target", count),
                ("examples", "examples to target", count),
                ("steps_fit", "fit", num),
                ("regime", "regime", _text),
                ("samples_per_second", "samples/s", lambda v: num(v, 4)),
            ],
        ),
        "",
    ]
    out += [
        "## Per batch size x scaling rule",
        "",
        markdown_table(
            m.by_rule,
            [
                ("batch_size", "batch", count),
                ("scaling_rule", "rule", _text),
                *_OUTCOME_COLUMNS,
                *_BEST_COLUMNS,
                ("degraded", "degraded", yes_no),
                ("steps", "steps to target", count),
            ],
        ),
        "",
    ]
    out += ["## Critical batch size", "", *_critical_section(m), ""]
    out += [
        "## Best hyperparameters per batch size",
        "",
        "lr = the actual peak lr after the scaling rule; the linear and square-root "
        "predictions scale the smallest batch size's best lr.",
        "",
        markdown_table(
            m.best_hparams,
            [
                ("batch_size", "batch", count),
                ("trial_id", "trial", _text),
                ("val_acc", "accuracy", pct),
                ("scaling_rule", "rule", _text),
                ("optimizer", "optimizer", _text),
                ("base_lr", "base lr", num),
                ("actual_lr", "lr", num),
                ("lr_linear", "linear pred.", num),
                ("lr_sqrt", "sqrt pred.", num),
                ("warmup_epochs", "warmup epochs", num),
                ("weight_decay", "weight decay", num),
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
                ("epoch_time_s", "epoch time (s)", num),
                ("trials", "trials", count),
            ],
        ),
        "",
    ]
    out += ["## Figures", ""]
    for stem, path in figures.items():
        out += [
            f"### {FIGURE_TITLES.get(stem, stem)}",
            "",
            f"![{stem}]({path.relative_to(study_dir).as_posix()})",
            "",
        ]
    out += [
        "## Files",
        "",
        "trials.csv (every trial x epoch), frontier.csv / frontier.json (these tables), "
        "figures/, and a TensorBoard run of the whole map: "
        f"`tensorboard --logdir {study_dir / 'summary'}` (Images: the figures; Scalars: the "
        "frontier with batch size as the step; Text: this report; HParams: every trial, "
        f"sortable and filterable). `--logdir {study_dir}` adds each trial's own curves.",
        "",
    ]
    return "\n".join(out)


def _critical_section(m: DegradationMap) -> list[str]:
    lines = [
        "S(B) = S_min (1 + B_crit / B) fitted to steps to target (least squares in 1/B, "
        "relative residuals, S_min and E_min >= 0); CI from 95% bootstrap over each batch "
        "size's trials. Regimes: perfect scaling for B <= B_crit/"
        f"{1 / PERFECT_SCALING_MAX:g} (local slope steeper than -0.8), maximal data "
        f"parallelism for B >= {MAXIMAL_PARALLELISM_MIN:g} B_crit (flatter than -0.2), "
        "diminishing returns between.",
        "",
    ]
    summary = critical_summary(m)
    if summary["status"] == "insufficient":
        return [
            *lines,
            f"Not fitted: {summary['points']} batch size(s) reached the target "
            f"(at least 2 needed).",
        ]
    b_crit = (
        "unbounded (perfect scaling throughout)"
        if summary["status"] == "unbounded"
        else num(m.fit.b_crit)
    )
    low, high = m.b_crit_ci
    if _finite(low):
        ci = (
            f"95% CI {num(low)} to {num(high) if _finite(high) else 'unbounded'} "
            f"({m.b_crit_replicates} bootstrap fits)"
        )
    else:
        ci = f"no CI (needs {MIN_POINTS_FOR_CI} batch sizes reaching the target)"
    return [
        *lines,
        f"- B_crit: {b_crit}; {ci}",
        f"- S_min {num(m.fit.s_min)} steps, E_min {num(m.fit.e_min)} examples; "
        f"{m.fit.points} points, R^2 (log steps) {num(m.fit.r2)}",
    ]


def write_report(
    study_dir: str | Path,
    target: float | None = None,
    tolerance: float = 0.01,
    *,
    n_boot: int = N_BOOT,
    tensorboard: bool = True,
) -> Path:
    """Write the degradation map of a study (see module docstring); return report.md's path.

    `target` is a validation accuracy in (0, 1] (default: the study's); `tolerance` is a
    fraction of accuracy (0.01 = 1 percentage point).
    """
    study_dir = Path(study_dir)
    if not (study_dir / SPEC_FILE).exists():
        raise NotAStudy(f"{study_dir} is not a study directory (no {SPEC_FILE})")
    spec = load_spec(study_dir)
    target = spec.target_accuracy if target is None else float(target)
    problems = []
    try:
        table = collect_trials(study_dir)
    except Exception as error:  # a report must come out even when a study file is odd
        problems.append(
            f"Could not read the trials ({type(error).__name__}: {error}); the "
            f"report below is empty."
        )
        table = pd.DataFrame(columns=list(COLUMNS))
    try:
        write_trial_table(study_dir)
    except Exception as error:  # e.g. the search writing it at the same moment
        problems.append(f"Could not refresh trials.csv ({type(error).__name__}: {error}).")
    m = degradation_map(
        table,
        target=target,
        tolerance=tolerance,
        batch_sizes=spec.batch_sizes,
        ranges=spec.search_ranges,
        n_boot=n_boot,
        seed=spec.seed,
    )
    figures = {}
    for stem, fig in plots.all_figures(m, table, spec.epochs).items():
        figures[stem] = plots.save_figure(fig, study_dir / FIGURES_DIR / f"{stem}.png")
    lines = verdict(m, spec)
    notes = [*problems, *missing_notes(m, spec, study_dir)]
    _write_text(study_dir / FRONTIER_CSV, m.frontier.to_csv(index=False))
    _write_text(
        study_dir / FRONTIER_JSON, json.dumps(frontier_json(m, spec, lines, notes), indent=2)
    )
    text = render_markdown(m, spec, lines, notes, figures, study_dir)
    report = _write_text(study_dir / REPORT_FILE, text)
    if tensorboard:
        from tuner.tb_summary import write_summary

        write_summary(study_dir, m, table, figures, text)
    return report


def fetch_study(study_uri: str, into: Path | None = None) -> Path:
    """Copy a study from an object store (all but its checkpoints) to a local directory, with
    the freshest Optuna database it has (a running study has only Tune's snapshot of it)."""
    storage_uri, _, name = study_uri.rstrip("/").rpartition("/")
    into = into or study_location(storage_uri, name)[0]
    if not exists(join(study_uri, SPEC_FILE)):
        raise NotAStudy(f"{study_uri} is not a study (no {SPEC_FILE})")
    count = download_study(study_uri, into)
    source = pull_optuna_db(study_uri, into)
    print(f"fetched {count} files of {study_uri} into {into} (Optuna: {source})", file=sys.stderr)
    return into


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner.report",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "study_dir",
        metavar="STUDY_DIR",
        help="a study directory (holds study.json), or a study in an object store "
        "(s3://bucket/studies/NAME), fetched first without its checkpoints",
    )
    p.add_argument(
        "--into",
        metavar="DIR",
        help="where to fetch a study from an object store (default: this machine's working "
        "copy, the directory the search itself uses)",
    )
    p.add_argument(
        "--target",
        type=float,
        metavar="T",
        help="target validation ACCURACY as a fraction in (0, 1], e.g. 0.95, for "
        "steps/examples to target (default: the study's)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        metavar="PTS",
        help="degradation tolerance in accuracy PERCENTAGE POINTS below the baseline "
        "(default 1, i.e. 1 pt; 0.5 means half a point)",
    )
    p.add_argument(
        "--no-tensorboard", action="store_true", help="do not (re)write the TensorBoard summary run"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.target is not None and not 0 < args.target <= 1:
        print(
            f"error: --target {args.target:g} is not an accuracy in (0, 1] (write 0.95, not 95)",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.tolerance < 100:
        print(
            f"error: --tolerance {args.tolerance:g} must be in [0, 100) percentage points",
            file=sys.stderr,
        )
        return 2
    try:
        study_dir = args.study_dir
        if is_uri(study_dir):
            study_dir = fetch_study(study_dir, Path(args.into) if args.into else None)
        report = write_report(
            study_dir, args.target, args.tolerance / 100, tensorboard=not args.no_tensorboard
        )
    except (NotAStudy, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report.read_text()
    verdict_block = text.split("## Verdict", 1)[1].split("\n## ", 1)[0].strip()
    print(verdict_block)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
