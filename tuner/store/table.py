"""The tidy trial table: one row per trial x evaluation, with the trial's cell, phase, config
and outcome.

Built from files only (no Ray), so it works on a running, finished or interrupted study:
- Optuna's storage (`optuna.db`) holds one study per cell (`NAME/b512`) that knows every
  trial ever started there: its parameters, phase (search or confirm), seed, state and, once
  finished, its outcome (`completed`, `target`, `stopped`, `diverged`, `errored`); and one study
  of the checks' runs (`NAME/checks`: phase `extend` or `rule`), each naming its cell;
- Tune's per-trial `result.json` files hold every evaluation's metrics, keyed by the Tune trial
  id and the optimizer step.
A trial that errored before its first report still gets one row, with empty metrics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
import pandas as pd

from search_spaces.cell_search import CHECKS_STUDY, trial_params
from trainables.optim import scaled_lr
from tuner.spec import StudySpec, load_spec
from tuner.store.names import OPTUNA_DB, TABLE_FILE
from tuner.store.optuna_db import schema_ready

METRICS = (
    "optimizer_steps",
    "examples_seen",
    "epoch",
    "progress",
    "budget_steps",
    "warmup_steps",
    "train_loss",
    "val_loss",
    "val_acc",
    "val_metric",  # a workload's own metric (trainables.workload.Metric)
    "val_examples",
    "val_loss_sd",
    # a run's end on the data set's official test set, where it has one (nothing selects on it)
    "test_acc",
    "test_loss",
    "test_metric",
    "test_examples",
    "lr",
    "peak_lr",
    "samples_per_second",
    "tokens_per_second",
    "tokens_per_example",
    "window_time_s",
    "first_step_s",
    "gns_b_simple",
    "gns_trace",
    "gns_grad_sq",
    "gns_steps",
    "diverged",
    "reached_target",
    "resumed_at_step",
    "global_batch",
    "per_worker_batch",
    "accumulation_steps",
    "micro_batch",
    "workers",
    "bn_mode",
    "bn_batch",
    "node_id",
    "nodes",  # the distinct nodes of all its workers (trainables.process.placement_of)
    "device_name",  # what its workers trained on: a GPU model, or cpu ("+" between kinds)
    # the trial's process there (rank 0's): trials that share one were run by one reused actor
    "pid",
    "trial_began",  # when that process began the trial (seconds since the epoch)
    "reported_at",  # when it made this report
    # A run's last evaluation: its value at every validation example (trainables.per_example)
    "val_per_example",
    # ... and a workload's own metric on bootstrap resamples of them (trainables.metric_boot)
    "val_metric_boot",
)
PARAMS = (
    "batch_size",
    "scaling_rule",
    "optimizer",
    "base_lr",
    "weight_decay",
    "warmup_fraction",
    "momentum",  # where searched (search_spaces.spaces.GAP_PARAMS); NaN where fixed
    "beta2",
)
COLUMNS = (
    "trial_id",
    "cell",
    "phase",
    "seed",
    "optuna_number",
    "outcome",
    "started",  # when the search handed the trial to Tune, seconds since the epoch
    "ended",  # when it was told the trial's outcome (NaN while it runs)
    "downtime_s",  # of that, the time it was down (an interrupted study, until its resume)
    "down",  # when: [[from, to], ...] as JSON
    *PARAMS,
    "actual_lr",
    *METRICS,
)


def read_results(study_dir: Path) -> dict[str, list[dict]]:
    """Every evaluation reported by every Tune trial, keyed by Tune trial id."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(study_dir.glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:  # a line being written right now
                    continue
                rows.setdefault(result["trial_id"], []).append(result)
    return rows


def read_cell_trials(
    study_dir: Path, spec: StudySpec
) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """(cell key, trial) for every trial of every cell study in the study's Optuna storage."""
    path = study_dir / OPTUNA_DB
    if not schema_ready(path):
        return []  # the driver is still creating it: no trial yet, and never create it here
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    found = []
    for cell in spec.cells():
        try:
            study = optuna.load_study(study_name=f"{spec.name}/{cell.key}", storage=storage)
        except KeyError:
            continue  # no trial in this cell yet
        found += [(cell.key, t) for t in study.get_trials(deepcopy=False)]
    try:  # the checks' runs (more steps, the rule test), each naming its cell
        checks = optuna.load_study(study_name=f"{spec.name}/{CHECKS_STUDY}", storage=storage)
    except KeyError:
        return found
    return found + [(t.user_attrs.get("cell"), t) for t in checks.get_trials(deepcopy=False)]


def collect_trials(study_dir: str | Path) -> pd.DataFrame:
    """The tidy table of a study directory (see module docstring); sorted by trial and step."""
    study_dir = Path(study_dir)
    spec = load_spec(study_dir)
    reference = spec.reference
    space, cells = spec.space(), {c.key: c for c in spec.cells()}
    # Optuna's states before the result files: a trial finishing between the two reads then
    # shows as running with all its evaluations, not as finished with its last ones missing.
    trials = read_cell_trials(study_dir, spec)
    results = read_results(study_dir)
    records = []
    for cell_key, trial in trials:
        trial_id = trial.user_attrs.get("tune_trial_id")
        if trial_id is None or cell_key not in cells:
            continue  # enqueued but never handed to Tune
        params = trial_params(space, cells[cell_key], trial)
        base = {
            "trial_id": trial_id,
            "cell": cell_key,
            "phase": trial.user_attrs.get("phase", "search"),
            "seed": trial.user_attrs.get("seed", spec.seed),
            "optuna_number": trial.number,
            "outcome": trial.user_attrs.get("outcome", "running"),
            "started": _seconds(trial.datetime_start),
            "ended": _seconds(trial.datetime_complete),
            "downtime_s": float(trial.user_attrs.get("downtime_s", 0.0)),
            "down": json.dumps(trial.user_attrs.get("down", [])),
            **params,
            "actual_lr": scaled_lr(
                params["base_lr"], params["scaling_rule"], params["batch_size"], reference
            ),
        }
        # A resumed trial re-reports evaluations it had already reported: keep the latest.
        by_step = {
            int(r["optimizer_steps"]): r
            for r in results.get(trial_id, [])
            if "optimizer_steps" in r
        }
        if base["outcome"] == "stopped" and trial.intermediate_values:
            # Its record ends where the scheduler stopped it (the searcher's last report to
            # Optuna): a resumed trial may have re-reported a later checkpoint before its stop.
            last = max(trial.intermediate_values)
            by_step = {step: r for step, r in by_step.items() if step <= last}
        if not by_step:
            records.append({**base, **dict.fromkeys(METRICS, math.nan)})
        for step in sorted(by_step):
            result = by_step[step]
            records.append({**base, **{k: result.get(k, math.nan) for k in METRICS}})
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    order = ["batch_size", "cell", "phase", "optuna_number", "optimizer_steps"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def _seconds(moment) -> float:
    return moment.timestamp() if moment is not None else math.nan


def write_trial_table(study_dir: str | Path) -> Path:
    """Write `trials.csv` into the study directory and return its path."""
    study_dir = Path(study_dir)
    path = study_dir / TABLE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers never collide
    collect_trials(study_dir).to_csv(tmp, index=False)
    tmp.replace(path)
    return path
