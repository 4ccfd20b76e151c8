"""Write the degradation map of a study into its directory (`python -m tuner.report` is the CLI).

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

import json
import os
from pathlib import Path

import pandas as pd

from tuner.analysis.accuracy import N_BOOT
from tuner.analysis.frontier import degradation_map
from tuner.cluster.placement import where_trials_ran
from tuner.report.figures import all_figures, save_figure
from tuner.report.names import (
    FIGURES_DIR,
    FRONTIER_CSV,
    FRONTIER_JSON,
    REPORT_FILE,
    WHY_FILE,
    NotAStudy,
)
from tuner.report.render import frontier_json, render_markdown
from tuner.report.verdict import missing_notes, verdict
from tuner.spec import load_spec
from tuner.store.names import SPEC_FILE
from tuner.store.table import COLUMNS, collect_trials, write_trial_table


def _write_text(path: Path, text: str) -> Path:
    """Write atomically, so a reader never sees half a file (per-process temporary name, so
    two reports at once, e.g. the search's and a user's, do not collide)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_report(
    study_dir: str | Path,
    target: float | None = None,
    tolerance: float | None = None,
    *,
    n_boot: int = N_BOOT,
    tensorboard: bool = True,
) -> Path:
    """Write the degradation map of a study (see module docstring); return report.md's path.

    Both are in the study metric's units (`trainables.metrics`): `target` is a validation
    accuracy in (0, 1] or a validation loss in nats (default: the study's); `tolerance` a
    fraction of accuracy (0.01 = 1 percentage point) or nats (default: the study's, which its
    checks judged by).
    """
    study_dir = Path(study_dir)
    if not (study_dir / SPEC_FILE).exists():
        raise NotAStudy(f"{study_dir} is not a study directory (no {SPEC_FILE})")
    spec = load_spec(study_dir)
    metric = spec.study_metric
    target = spec.target if target is None else float(target)
    tolerance = spec.tolerance if tolerance is None else float(tolerance)
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
        rule_stratified="rule" in spec.strata,
        max_steps=spec.max_steps,
        max_data_multiple=spec.max_data_multiple,
        n_boot=n_boot,
        seed=spec.seed,
        metric=metric,
        resources=(spec.gpus_per_worker, spec.cpus_per_worker, spec.workers_per_trial),
    )
    figures = {
        stem: save_figure(fig, study_dir / FIGURES_DIR / f"{stem}.png")
        for stem, fig in all_figures(m, table, str(spec.budget_spec())).items()
    }
    lines = verdict(m, spec)
    notes = [*problems, *missing_notes(m, spec, study_dir)]
    ran = where_trials_ran(table)
    frontier = m.frontier.drop(columns=["estimate"], errors="ignore")
    _write_text(study_dir / FRONTIER_CSV, frontier.to_csv(index=False))
    _write_text(
        study_dir / FRONTIER_JSON, json.dumps(frontier_json(m, spec, lines, notes, ran), indent=2)
    )
    text = render_markdown(m, spec, lines, notes, figures, study_dir, ran)
    why = study_dir / WHY_FILE
    if why.exists():  # written by `python -m tuner.explain`
        text = text.rstrip() + "\n\n" + why.read_text()
    report = _write_text(study_dir / REPORT_FILE, text)
    if tensorboard:
        from tuner.report.tensorboard import write_summary

        write_summary(study_dir, m, table, figures, text)
    return report
