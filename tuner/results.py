"""The tidy trial table: one row per trial x reported epoch, with the trial's config and outcome.

Built from files only (no Ray), so it works on a running, finished or interrupted study:
- Optuna's storage (`optuna.db`) knows every trial that was ever started: its parameters, its
  state and, once finished, its outcome (`completed`, `stopped`, `diverged`, `errored`);
- Tune's per-trial `result.json` files hold every epoch's metrics, keyed by the Tune trial id.
A trial that errored before its first report still gets one row, with empty metrics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
import pandas as pd

from trainables.optim import scaled_lr
from trainables.workloads import get_workload
from tuner.spec import load_spec
from tuner.storage import OPTUNA_DB

TABLE_FILE = "trials.csv"
METRICS = (
    "epoch",
    "examples_seen",
    "optimizer_steps",
    "train_loss",
    "val_loss",
    "val_acc",
    "lr",
    "peak_lr",
    "samples_per_second",
    "epoch_time_s",
    "diverged",
    "global_batch",
    "per_worker_batch",
    "accumulation_steps",
    "micro_batch",
    "workers",
    "bn_mode",
    "node_id",
)
PARAMS = ("batch_size", "scaling_rule", "optimizer", "base_lr", "weight_decay", "warmup_epochs")
COLUMNS = ("trial_id", "optuna_number", "outcome", *PARAMS, "actual_lr", *METRICS)


def read_results(study_dir: Path) -> dict[str, list[dict]]:
    """Every epoch reported by every Tune trial, keyed by Tune trial id."""
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


def read_optuna_trials(study_dir: Path, study_name: str) -> list[optuna.trial.FrozenTrial]:
    path = study_dir / OPTUNA_DB
    if not path.exists():
        return []
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def collect_trials(study_dir: str | Path) -> pd.DataFrame:
    """The tidy table of a study directory (see module docstring); sorted by trial and epoch."""
    study_dir = Path(study_dir)
    spec = load_spec(study_dir)
    reference = get_workload(spec.workload).reference_batch
    # Optuna's states before the result files: a trial finishing between the two reads then
    # shows as running with all its epochs, not as finished with its last epochs missing.
    trials = read_optuna_trials(study_dir, spec.name)
    results = read_results(study_dir)
    records = []
    for trial in trials:
        trial_id = trial.user_attrs.get("tune_trial_id")
        if trial_id is None or "batch_size" not in trial.params:
            continue  # enqueued but never handed to Tune
        outcome = trial.user_attrs.get("outcome", "running")
        params = {k: trial.params.get(k) for k in PARAMS}
        base = {
            "trial_id": trial_id,
            "optuna_number": trial.number,
            "outcome": outcome,
            **params,
            "actual_lr": scaled_lr(
                params["base_lr"], params["scaling_rule"], int(params["batch_size"]), reference
            ),
        }
        # A resumed trial re-reports epochs it had already reported: keep the latest of each.
        by_epoch = {int(r["epoch"]): r for r in results.get(trial_id, []) if "epoch" in r}
        if not by_epoch:
            records.append({**base, **dict.fromkeys(METRICS, math.nan)})
        for epoch in sorted(by_epoch):
            result = by_epoch[epoch]
            records.append({**base, **{k: result.get(k, math.nan) for k in METRICS}})
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return table.sort_values(["optuna_number", "epoch"], kind="stable").reset_index(drop=True)


def write_trial_table(study_dir: str | Path) -> Path:
    """Write `trials.csv` into the study directory and return its path."""
    study_dir = Path(study_dir)
    path = study_dir / TABLE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers never collide
    collect_trials(study_dir).to_csv(tmp, index=False)
    tmp.replace(path)
    return path
