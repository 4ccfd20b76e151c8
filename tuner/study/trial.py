"""One trial: a Tune function trainable. A one-worker trial trains in it directly
(`trainables.tune_trial`: the actor holds the worker's CPUs and GPUs and is reused across
trials, so a trial starts in about a second). A trial of two or more workers is a "driver"
that builds and fits a Ray Train `TorchTrainer`, whose `TuneReportCallback` forwards every
worker report to Tune; the driver holds a sliver of memory and no CPU, and the workers get
their own placement group from the `ScalingConfig`.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import TrialConfig
from trainables.ray_worker import train_loop_per_worker
from trainables.tune_trial import train_one_worker
from tuner.cluster.placement import ACCELERATOR_PREFIX, ACCELERATOR_SHARE
from tuner.spec import StudySpec
from tuner.store import objects as store
from tuner.store.names import TRAIN_RUNS

# The driver only waits on the Train controller: it holds no CPU, so that W workers x 1 CPU
# trials pack a node exactly. Tune rejects an empty request, hence a token of memory (bytes).
DRIVER_RESOURCES = {"CPU": 0, "memory": 1024**2}

try:  # Ray Train V2 internals, used only by StoppableTorchTrainer below
    from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    from ray.train._internal.session import get_session
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        get_env_vars_to_propagate,
    )
    from ray.train.v2._internal.execution.controller import TrainController

    # Tune may reuse a trial's driver process for the next trial only where a stopped trial's
    # Train run can be ended from it (see StoppableTorchTrainer).
    CAN_REUSE_DRIVERS = True
except ImportError:  # a Ray upgrade moved them: start a driver per trial, as Tune does by default
    CAN_REUSE_DRIVERS = False


class StoppableTorchTrainer(TorchTrainer):
    """A TorchTrainer whose run ends when Tune stops the trial, so its driver can be reused.

    Without reuse Tune kills a stopped trial's driver actor, and the Train controller (and with
    it the workers and their placement group, which fate-share with it) dies with it. A reused
    driver lives on, so here a watcher kills the controller once Tune's session says stop.
    `_initialize_and_run_controller` mirrors Ray 2.60's own, keeping the controller's handle.

    Without Ray Datasets it also drops Train's datasets callback, which starts a DatasetManager
    actor per run all the same: one process (about 2.2 s of CPU importing Ray Train) per trial.
    """

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        env_vars = get_env_vars_to_propagate()
        env_vars.setdefault(
            RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
            DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        )
        controller = ray.remote(
            num_cpus=0,
            label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
            runtime_env={"env_vars": env_vars},
        )(TrainController).remote(**controller_init_kwargs)
        done = threading.Event()
        watcher = threading.Thread(
            target=_kill_when_stopped, args=(controller, get_session().stop_event, done)
        )
        watcher.start()
        try:
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())
        except ray.exceptions.RayActorError:
            if get_session().stop_event.is_set():
                return None  # Tune stopped the trial: its results are already reported
            raise
        finally:
            done.set()
            watcher.join()


def _kill_when_stopped(controller: Any, stop: threading.Event, done: threading.Event) -> None:
    """Kill `controller` if `stop` is set before `done`."""
    while not done.is_set():
        if stop.wait(timeout=0.2):
            ray.kill(controller, no_restart=True)
            return


def worker_resources(study: StudySpec) -> dict[str, float]:
    """What one training worker holds."""
    resources = {"CPU": study.cpus_per_worker}
    if study.use_gpu:
        resources["GPU"] = study.gpus_per_worker
    return resources


def actor_resources(study: StudySpec) -> dict[str, float]:
    """What a one-worker trial's Tune actor holds: the worker's resources, on a node of the
    study's accelerator type where it has one (as Ray Train asks of each of its workers)."""
    resources = worker_resources(study)
    if study.accelerator_type:
        resources[ACCELERATOR_PREFIX + study.accelerator_type] = ACCELERATOR_SHARE
    return resources


def trial_driver(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune trainable: run one trial, in this actor or as a Ray Train `TorchTrainer` job."""
    study = StudySpec.from_dict(spec)
    config = TrialConfig.from_dict(study.trial_config(params)).to_dict()
    context = tune.get_context()
    # A stable directory per Tune trial: a restarted trial resumes its own checkpoints, and
    # concurrent trials never share one.
    run_name = f"trial-{context.get_trial_id()}"
    if study.workers_per_trial == 1:
        checkpoints = store.join(study.study_uri, TRAIN_RUNS, run_name)
        train_one_worker(config, study.cpus_per_worker, checkpoints)
        return
    torch_trainer(study, train_loop_per_worker, config, run_name).fit()


def scaling_config(study: StudySpec) -> ray.train.ScalingConfig:
    """A Ray Train trial's workers: whole on one node where a node holds them (STRICT_PACK), on
    the study's accelerator type (`tuner.cluster.placement`, decided as the study starts)."""
    return ray.train.ScalingConfig(
        num_workers=study.workers_per_trial,
        use_gpu=study.use_gpu,
        resources_per_worker=worker_resources(study),
        placement_strategy=study.placement_strategy,
        accelerator_type=study.accelerator_type or None,
    )


def torch_trainer(
    study: StudySpec, loop: Any, config: dict[str, Any], run_name: str
) -> TorchTrainer:
    """The Ray Train run of one trial of two or more workers: `loop(config)` on each, every
    worker report forwarded to Tune, its run's files under the study's TRAIN_RUNS/run_name."""
    trainer_class = StoppableTorchTrainer if CAN_REUSE_DRIVERS else TorchTrainer
    return trainer_class(
        loop,
        train_loop_config=config,
        scaling_config=scaling_config(study),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=store.join(study.study_uri, TRAIN_RUNS),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(
                max_failures=study.worker_retries, controller_failure_limit=0
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )


def reuses_actors(spec: StudySpec) -> bool:
    """Whether Tune may run a study's next trial in a finished trial's process."""
    return spec.workers_per_trial == 1 or CAN_REUSE_DRIVERS


def trainable(spec: StudySpec):
    """The trial function with the study's spec bound and its resources declared: a one-worker
    trial's actor holds the worker's resources; a driver, a token."""
    resources = actor_resources(spec) if spec.workers_per_trial == 1 else DRIVER_RESOURCES
    return tune.with_resources(tune.with_parameters(trial_driver, spec=spec.to_dict()), resources)
