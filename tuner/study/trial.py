"""One trial: a Tune function trainable (the "driver") that builds and fits a Ray Train
`TorchTrainer`, whose `TuneReportCallback` forwards every worker report to Tune.

The driver holds a sliver of memory and no CPU; the workers get their own placement group from
the `ScalingConfig`.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import TrialConfig
from trainables.ray_worker import train_loop_per_worker
from tuner.spec import StudySpec
from tuner.store import objects as store
from tuner.store.names import TRAIN_RUNS

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
            storage_path=store.join(study.study_uri, TRAIN_RUNS),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(
                max_failures=study.worker_retries, controller_failure_limit=0
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def trainable(spec: StudySpec):
    """The trial driver with the study's spec bound and its resources declared."""
    return tune.with_resources(
        tune.with_parameters(trial_driver, spec=spec.to_dict()), DRIVER_RESOURCES
    )
