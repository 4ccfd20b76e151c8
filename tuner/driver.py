"""Wires one study into Ray Tune: the per-trial driver, searcher, scheduler and callbacks.

Ray Train V2 runs inside Tune through a function trainable (the "driver") that builds and fits
a `TorchTrainer`; `TuneReportCallback` forwards every worker report to Tune. The driver holds a
sliver of CPU; the workers get their own placement group from the `ScalingConfig`.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import optuna
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from search_spaces import define_by_run
from search_spaces.spaces import SearchSpace
from trainables.config import TrialConfig
from trainables.ray_worker import train_loop_per_worker
from trainables.workloads import get_workload
from tuner import storage as store
from tuner.callbacks import EpochTensorBoardCallback, ProgressCallback
from tuner.scheduler import PerBatchSizeASHA
from tuner.searcher import BalancedOptunaSearch
from tuner.spec import StudySpec

METRIC, MODE = "val_acc", "max"
# The driver only waits on the Train controller: it holds no CPU, so that W workers x 1 CPU
# trials pack a node exactly. Tune rejects an empty request, hence a token of memory (bytes).
DRIVER_RESOURCES = {"CPU": 0, "memory": 1024**2}


def trial_driver(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune trainable: run one trial as a Ray Train `TorchTrainer` job."""
    study = StudySpec.from_dict(spec)
    config = TrialConfig.from_dict(study.trial_config(params)).to_dict()
    context = tune.get_context()
    resources = {"CPU": study.cpus_per_worker}
    if study.use_gpu:
        resources["GPU"] = study.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=study.workers_per_trial,
            use_gpu=study.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            # A stable name per Tune trial: a restarted driver resumes its own checkpoints,
            # and concurrent trials never share a run directory.
            name=f"trial-{context.get_trial_id()}",
            storage_path=store.join(study.study_uri, "train_runs"),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(
                max_failures=study.worker_retries, controller_failure_limit=0
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def optuna_storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    """Optuna's storage (SQLite) in the study directory (for an object store, in this
    machine's working copy; tuner/storage.py)."""
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{spec.study_dir / store.OPTUNA_DB}")


def make_searcher(spec: StudySpec, space: SearchSpace) -> BalancedOptunaSearch:
    # constant_liar keeps concurrent TPE suggestions apart; n_startup_trials of random search
    # first, a third of the budget at most.
    sampler = optuna.samplers.TPESampler(
        seed=spec.seed, constant_liar=True, n_startup_trials=max(2, min(10, spec.trials // 3))
    )
    return BalancedOptunaSearch(
        space=partial(define_by_run, space=space, batch_sizes=list(spec.batch_sizes)),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        storage_factory=partial(optuna_storage, spec),
        study_name=spec.name,
        batch_sizes=list(spec.batch_sizes),
        max_epochs=spec.epochs,
    )


def make_scheduler(spec: StudySpec) -> PerBatchSizeASHA:
    return PerBatchSizeASHA(
        metric=METRIC,
        mode=MODE,
        max_t=spec.epochs,
        grace_period=spec.grace_epochs,
        reduction_factor=spec.reduction_factor,
    )


def concurrency(spec: StudySpec) -> int:
    """Trials at once: as many as the cluster's nodes hold (each worker whole on one node), so
    none waits on another; on an autoscaling cluster, what it can grow to."""
    if spec.max_concurrent > 0:
        return spec.max_concurrent
    from tuner.cluster_config import workers_that_fit
    from tuner.session import cluster_nodes

    fits = workers_that_fit(cluster_nodes(), spec.cpus_per_worker, spec.gpus_per_worker)
    return max(1, fits // spec.workers_per_trial)


def trainable(spec: StudySpec):
    return tune.with_resources(
        tune.with_parameters(trial_driver, spec=spec.to_dict()), DRIVER_RESOURCES
    )


def callbacks(spec: StudySpec) -> list[tune.Callback]:
    return [EpochTensorBoardCallback(), ProgressCallback(spec.epochs, spec.batch_sizes)]


def run_config(spec: StudySpec) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=spec.storage if spec.remote else os.path.abspath(spec.storage),
        callbacks=callbacks(spec),
        verbose=0,
        # A failed trial is recorded and the study goes on (no retries of the driver; the
        # Train run inside retries its workers from the last epoch checkpoint).
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
    )


def make_tuner(spec: StudySpec) -> tune.Tuner:
    workload = get_workload(spec.workload)
    return tune.Tuner(
        trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, workload.space),
            scheduler=make_scheduler(spec),
            num_samples=spec.trials,
            max_concurrent_trials=concurrency(spec),
        ),
        run_config=run_config(spec),
    )


def restore_tuner(spec: StudySpec) -> tune.Tuner:
    """Continue an interrupted study: finished trials are kept, unfinished ones resumed."""
    return tune.Tuner.restore(
        spec.study_uri,
        trainable=trainable(spec),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
