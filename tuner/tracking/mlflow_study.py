"""A study in an MLflow tracking server: one parent run per study, a nested run per trial.

The parent holds the study's options (params), its spec, and at the end the verdict, report,
`frontier.json`, trial table and figures (artifacts) with the headline numbers (metrics). Each
trial's run holds its hyperparameters, phase, batch size, seed and cell (params), every
evaluation as metrics against optimizer steps (and the study metric against examples seen, as
`by_examples/<metric>`), and its outcome (tag `outcome`: completed, target, stopped, diverged,
errored). Seeds of one configuration share the tag `config`, so MLflow groups them.

MLflow's own `MLflowLoggerCallback` (Ray Tune) makes no parent run and Optuna's
`MLflowCallback(nested=True)` none either (ray #19909, optuna #5148): hence this, on MLflow's
plain client. A resumed study finds its parent and its trials' runs again (`tracking.json`,
and the runs' `trial_id` tags). A server that stops answering is said once; nothing more is
sent and the study goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tuner.outcomes import TRIAL_SCALARS as METRICS
from tuner.outcomes import trial_outcome
from tuner.tracking.checks import Tracking, save_tracking, saved_tracking

EXPERIMENT = "batch-scaling"  # unless $MLFLOW_EXPERIMENT_NAME names another
PARAM_MAX = 6000  # MLflow's longest param value
BY_EXAMPLES = ("val_acc", "val_metric", "val_loss")
NOT_CONFIG = ("seed", "phase")  # what differs between the seeds of one configuration
STATUS = {"completed": "FINISHED", "target": "FINISHED", "stopped": "KILLED"}
ARTIFACTS = ("report.md", "frontier.json", "trials.csv", "branch.md", "branch.json")


def config_group(config: dict[str, Any]) -> str:
    """One tag value for every seed of one configuration (its cell and hyperparameters)."""
    same = {k: v for k, v in sorted(config.items()) if k not in NOT_CONFIG}
    return hashlib.sha1(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _plain(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def spec_params(spec: Any) -> dict[str, str]:
    """The study's options as MLflow params (one level, strings, MLflow's length limit)."""
    params = {}
    for key, value in dataclasses.asdict(spec).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True, default=str)
        params[key] = str(value)[:PARAM_MAX]
    return params


def outcome_of(last: dict[str, Any] | None, error: bool) -> str:
    """A trial's outcome (tuner.outcomes); a branch job (one report, at its end, with its
    `kind`) ran to its end unless it errored, or its run diverged."""
    if last is None or "kind" not in last or error:
        return trial_outcome(last, error=error)
    record = json.loads(last["record"]) if isinstance(last.get("record"), str) else {}
    return "diverged" if record.get("diverged") else "completed"


def branch_evaluation(entry: dict[str, Any], metric_key: str) -> dict[str, Any]:
    """A branch run's evaluation (tuner.branch: step, examples, value) as a trial reports one."""
    return {
        "optimizer_steps": entry.get("step"),
        "examples_seen": entry.get("examples"),
        metric_key: entry.get("value"),
        "val_loss": entry.get("val_loss"),
        "lr": entry.get("lr"),
    }


def evaluation_metrics(result: dict[str, Any], now: int) -> list[Any]:
    """One evaluation as MLflow metrics: against optimizer steps, and the study metric's
    values against examples seen (`by_examples/...`)."""
    from mlflow.entities import Metric

    step = _plain(result.get("optimizer_steps"))
    if step is None:
        return []
    metrics = []
    for key in METRICS:
        value = _plain(result.get(key))
        if value is not None:
            metrics.append(Metric(key, value, now, int(step)))
    examples = _plain(result.get("examples_seen"))
    for key in BY_EXAMPLES:
        value = _plain(result.get(key))
        if value is not None and examples is not None:
            metrics.append(Metric(f"by_examples/{key}", value, now, int(examples)))
    return metrics


class MlflowStudy:
    """The MLflow side of one study run (the driver's; not thread-safe, Tune's loop is one)."""

    def __init__(self, uri: str, study_dir: Path):
        from mlflow.tracking import MlflowClient

        # MLflow retries a failed request 7 times with backoff (minutes): a study must not
        # wait on a server that went away.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # One line per ended run ("View run ... at") would bury the study's own progress.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
        self.uri, self.study_dir = uri, study_dir
        self.client = MlflowClient(tracking_uri=uri)
        self.parent: str | None = None
        self.experiment: str | None = None  # the parent's experiment id
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.broken = False
        self.metric_key = "val_acc"  # the study metric's (set by `start`)

    # --- calls that may fail ---------------------------------------------------------------

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)`, or None once anything failed: tracking never stops a study."""
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # the server, or a bug here: said once, the study goes on
            self.broken = True
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            print(
                f"warning: MLflow at {self.uri} failed ({what}: {type(error).__name__}: "
                f"{first}); the study goes on and writes its own files, nothing more is sent "
                f"to MLflow",
                file=sys.stderr,
                flush=True,
            )
            return None

    # --- the study -------------------------------------------------------------------------

    def start(self, spec: Any, resume: bool) -> None:
        """The parent run: a new one, or (resumed) the one the study started with."""
        metric = getattr(spec, "study_metric", None)
        self.metric_key = metric.key if metric is not None else self.metric_key
        saved = (saved_tracking(self.study_dir).get("mlflow") or {}) if resume else {}
        if saved.get("uri") == self.uri and saved.get("parent_run_id"):
            self.parent, self.experiment = saved["parent_run_id"], saved.get("experiment_id")
            self._call("resume the parent run", self.client.update_run, self.parent, "RUNNING")
            self._call("find the trials' runs", self._find_runs)
            return
        self._call("start the parent run", self._new_parent, spec)

    def _new_parent(self, spec: Any) -> None:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"batch_scaling.study": spec.name, "batch_scaling.dir": str(self.study_dir)}
        run = self.client.create_run(experiment, run_name=spec.name, tags=tags)
        self.parent = run.info.run_id
        params = [Param(k, v) for k, v in spec_params(spec).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.parent, params=params[i : i + 100])
        spec_file = self.study_dir / "study.json"
        if spec_file.is_file():
            self.client.log_artifact(self.parent, str(spec_file))
        self.experiment = experiment
        ids = {"experiment_id": experiment, "parent_run_id": self.parent}
        save_tracking(self.study_dir, Tracking(mlflow=self.uri), **ids)

    def _find_runs(self) -> None:
        """The runs a resumed study's trials already have (tagged with their trial id)."""
        if self.experiment is None:  # a tracking.json written without it
            self.experiment = self.client.get_run(self.parent).info.experiment_id
        query = f"tags.mlflow.parentRunId = '{self.parent}'"
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment], query, max_results=1000, page_token=token
            )
            for child in page:
                if "trial_id" in child.data.tags:
                    self.runs[child.data.tags["trial_id"]] = child.info.run_id
            token = page.token
            if not token:
                return

    # --- trials ----------------------------------------------------------------------------

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        if self.parent is None:
            return
        if trial_id in self.runs:  # resumed: its run goes on
            run = self.runs[trial_id]
            self._call("resume a trial's run", self.client.update_run, run, "RUNNING")
            return
        self._call("start a trial's run", self._new_trial, trial_id, config)

    def _new_trial(self, trial_id: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # A branch study's jobs have a kind (probe, base, rung) where a grid's have a phase.
        inner = config.get("config") if isinstance(config.get("config"), dict) else {}
        cell = str(config.get("cell") or f"b{config.get('batch_size', inner.get('batch_size'))}")
        phase = str(config.get("phase") or config.get("kind") or "search")
        tags = {
            "mlflow.parentRunId": self.parent,
            "trial_id": trial_id,
            "phase": phase,
            "cell": cell,
            "config": config_group(config),
        }
        run = self.client.create_run(
            self.experiment,
            run_name=f"{cell}-{phase}-{trial_id}",
            tags=tags,
        )
        self.runs[trial_id] = run.info.run_id
        params = [Param(k, str(v)[:PARAM_MAX]) for k, v in sorted(config.items())]
        self.client.log_batch(run.info.run_id, params=params[:100])

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """One evaluation of a grid trial; a branch job reports once, at its end: its
        evaluations (`history`) or its branch runs' ends (`runs`, a rung's candidates and
        seeds, as `rung/<phase>-<candidate>-seed<seed>`)."""
        run = self.runs.get(trial_id)
        if run is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        if isinstance(result.get("history"), str):
            for entry in json.loads(result["history"]):
                metrics += evaluation_metrics(branch_evaluation(entry, self.metric_key), now)
        elif isinstance(result.get("runs"), str):
            for record in json.loads(result["runs"]):
                value = _plain(record.get("value"))
                if value is not None:
                    key = f"rung/{record.get('phase')}-{record.get('candidate')}-seed"
                    key += str(record.get("seed"))
                    metrics.append(Metric(key, value, now, int(record.get("steps", 0))))
        else:
            metrics = evaluation_metrics(result, now)
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            chunk = metrics[i : i + 1000]
            self._call("log a trial's evaluation", self.client.log_batch, run, metrics=chunk)

    def trial_ended(self, trial_id: str, outcome: str) -> None:
        run = self.runs.get(trial_id)
        if run is None:
            return
        self._call("tag a trial's outcome", self.client.set_tag, run, "outcome", outcome)
        status = STATUS.get(outcome, "FAILED")
        self._call("end a trial's run", self.client.set_terminated, run, status)

    # --- the end ---------------------------------------------------------------------------

    def finish(self, interrupted: bool = False) -> None:
        """The report's files and headline numbers on the parent run, which ends (KILLED when
        the study was interrupted: a resume continues it)."""
        if self.parent is None:
            return
        self._call("send the report", self._send_report)
        status = "KILLED" if interrupted else "FINISHED"
        self._call("end the parent run", self.client.set_terminated, self.parent, status)

    def _send_report(self) -> None:
        for name in ARTIFACTS:
            if (self.study_dir / name).is_file():
                self.client.log_artifact(self.parent, str(self.study_dir / name))
        figures = self.study_dir / "figures"
        if figures.is_dir():
            self.client.log_artifacts(self.parent, str(figures), artifact_path="figures")
        frontier = self.study_dir / "frontier.json"
        if not frontier.is_file():
            return
        report = json.loads(frontier.read_text())
        verdict = "\n".join(report.get("verdict", [])) + "\n"
        self.client.log_text(self.parent, verdict, "verdict.txt")
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numbers = {
            "holds_up_to": report.get("holds_up_to"),
            **{f"critical_batch/{k}": v for k, v in (report.get("critical_batch") or {}).items()},
            **{f"cost/{k}": v for k, v in (report.get("cost") or {}).items()},
        }
        metrics = [
            Metric(k, v, now, 0)
            for k, v in ((k, _plain(v)) for k, v in numbers.items())
            if v is not None
        ]
        if metrics:
            self.client.log_batch(self.parent, metrics=metrics)
