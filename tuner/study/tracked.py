"""The tracking of one study run (`--mlflow`, `--optuna-storage`), wired into Tune's loop."""

from __future__ import annotations

from typing import Any

from tuner.spec import StudySpec
from tuner.store.optuna_db import optuna_storage
from tuner.tracking.checks import Tracking, save_tracking
from tuner.tracking.mlflow_study import MlflowStudy
from tuner.tracking.optuna_mirror import OptunaMirror


class StudyTracking:
    """MLflow's parent run and the trials' callback, and the Optuna mirror, for one run."""

    def __init__(self, spec: StudySpec, tracking: Tracking, resume: bool):
        from tuner.study.callbacks import TrackingCallback

        self.mlflow = MlflowStudy(tracking.mlflow, spec.study_dir) if tracking.mlflow else None
        self.mirror = None
        if tracking.optuna_storage:
            local = lambda: optuna_storage(spec.study_dir)  # noqa: E731
            self.mirror = OptunaMirror(tracking.optuna_storage, local)
            save_tracking(spec.study_dir, Tracking(optuna_storage=tracking.optuna_storage))
        if self.mlflow is not None:
            self.mlflow.start(spec, resume)
        self.callbacks = [TrackingCallback(self.mlflow)] if self.mlflow is not None else []
        if self.mirror is not None and resume:
            self.mirror.sync_all()  # what the last run did after the mirror last heard

    def attach(self, searcher: Any) -> None:
        if self.mirror is not None and hasattr(searcher, "mirror_to"):
            searcher.mirror_to(self.mirror)

    def finish(self, interrupted: bool) -> None:
        if self.mirror is not None:
            self.mirror.sync_all()  # e.g. trials the study's end closed as lost
        if self.mlflow is not None:
            self.mlflow.finish(interrupted)
