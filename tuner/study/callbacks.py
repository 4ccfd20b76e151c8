"""Tune callbacks: per-trial TensorBoard files against optimizer steps, and a progress line."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from trainables.metrics import ACCURACY, StudyMetric
from tuner.outcomes import TRIAL_SCALARS as SCALARS
from tuner.outcomes import trial_outcome
from tuner.study.saving import compact_ended
from tuner.tracking.mlflow_study import outcome_of

STEP = "optimizer_steps"  # the x axis of every per-trial curve


def _plain(value: Any) -> Any:
    """Plain Python scalars only: numpy types break TensorBoard's hparams plugin."""
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item"):
        return value.item()
    return value


class StepTensorBoardCallback(TBXLoggerCallback):
    """Every reported metric against optimizer steps (Tune's default uses training_iteration,
    which restarts on resume), and the trial's hyperparameters with its final metrics at its end.

    Subclassing TBXLoggerCallback makes Tune skip its default one, so each trial directory
    holds one event file, with tags `trial/<metric>`.
    """

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer = self._trial_writer[trial]
        step = int(result.get(STEP, iteration))
        logged = {}
        for key in SCALARS:
            value = _plain(result.get(key))
            if isinstance(value, (int, float)) and value == value:  # NaN is dropped
                writer.add_scalar(f"trial/{key}", value, global_step=step)
                logged[key] = float(value)
        logged[STEP] = float(step)
        self._trial_result[trial] = logged
        writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial not in self._trial_writer:
            return
        final = self._trial_result.get(trial) or {}
        if trial.evaluated_params:
            params = {k: _plain(v) for k, v in trial.evaluated_params.items()}
            peak_lr = (trial.last_result or {}).get("peak_lr")
            if peak_lr is not None:
                params["peak_lr"] = float(peak_lr)  # the actual lr, after the scaling rule
            metrics = {f"final/{k}": v for k, v in final.items()}
            metrics["final/failed"] = float(failed)
            self._write_hparams(trial, params, metrics)
        self._trial_writer[trial].close()
        del self._trial_writer[trial]
        self._trial_result.pop(trial, None)

    def _write_hparams(self, trial: Any, params: dict, metrics: dict) -> None:
        from tensorboardX.summary import hparams

        _, session_start, session_end = hparams(hparam_dict=params, metric_dict=metrics)
        writer = self._trial_writer[trial]
        # Session start/end only: the experiment description (which columns the HParams tab
        # shows) comes from the study summary (tuner/report/tensorboard.py). Several
        # descriptions under one logdir make TensorBoard pick whichever it reads first.
        for summary in (session_start, session_end):
            writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            writer.add_scalar(key, value)


class CompactEndedTrials(Callback):
    """Keeps each save of Tune's experiment state smaller: a trial that ended normally drops
    what only a running one needs (`tuner.study.saving.compact_ended`); an errored one, which
    a resume may run again, keeps it."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        compact_ended(trial)


class ProgressCallback(Callback):
    """One line whenever the study's state changes (at most every `every_s` seconds): trials done
    / running / stopped / diverged / errored, confirmation runs, and the best value of the study
    metric so far per batch size."""

    def __init__(
        self, batch_sizes: tuple[int, ...], metric: StudyMetric = ACCURACY, every_s: float = 5.0
    ):
        self.batch_sizes, self.metric, self.every_s = tuple(batch_sizes), metric, every_s
        self.best: dict[int, float] = {}
        self.outcomes: dict[str, str] = {}
        self.running: set[str] = set()
        self.confirming: set[str] = set()
        self._last_print = 0.0
        self._last_line = ""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        if trial.config.get("phase", "search") != "search":
            self.confirming.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        batch = int(trial.config.get("batch_size", 0))
        value = result.get(self.metric.key)
        if value is not None and not result.get("diverged"):
            score = self.metric.score(float(value))
            self.best[batch] = max(self.best.get(batch, -float("inf")), score)
        self._show()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(force=True)

    def _finish(self, trial: Any, error: bool) -> None:
        self.running.discard(trial.trial_id)
        self.outcomes[trial.trial_id] = trial_outcome(trial.last_result or None, error=error)
        self._show(force=True)

    def line(self) -> str:
        counts = dict.fromkeys(("completed", "target", "stopped", "diverged", "errored"), 0)
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        best = ", ".join(
            f"{b}: {self.metric.value(self.best[b]):.3f}" if b in self.best else f"{b}: -"
            for b in self.batch_sizes
        )
        target = f", at target {counts['target']}" if counts["target"] else ""
        confirm = f" (confirmations and checks {len(self.confirming)})" if self.confirming else ""
        return (
            f"trials done {len(self.outcomes)}{confirm} (completed {counts['completed']}"
            f"{target}, stopped {counts['stopped']}, diverged {counts['diverged']}, errored "
            f"{counts['errored']}), running {len(self.running)} | best {self.metric.label} by "
            f"batch: {best}"
        )

    def _show(self, force: bool = False) -> None:
        line = self.line()
        now = time.monotonic()
        if line != self._last_line and (force or now - self._last_print >= self.every_s):
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
            self._last_print, self._last_line = now, line


class TrackingCallback(Callback):
    """Each trial's start, evaluations and end to MLflow (tuner.tracking.mlflow_study). Saved
    with Tune's state without its client: a resumed study gives it a fresh one."""

    def __init__(self, study: Any):
        self.study = study

    def __getstate__(self) -> dict[str, Any]:
        return {"study": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell("start a trial's run", "trial_started", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        self._tell("log a trial's evaluation", "trial_result", trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = outcome_of(trial.last_result or None, error=False)
        self._tell("end a trial's run", "trial_ended", trial.trial_id, outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = outcome_of(trial.last_result or None, error=True)
        self._tell("end a trial's run", "trial_ended", trial.trial_id, outcome)

    def _tell(self, what: str, method: str, *args: Any) -> None:
        # Tune counts an exception in a callback as the trial's error: never let one out.
        if self.study is not None:
            self.study._call(what, getattr(self.study, method), *args)
