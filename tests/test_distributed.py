"""A real Ray Train trial with two CPU workers (gloo): the global batch is split across them
and one data-parallel step equals one single-process step at the same global batch."""

import math
import os

import pytest
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from tests.test_config import base_config
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.ray_worker import CHECKPOINT_FILE, train_loop_per_worker
from tuner.cluster.connect import local_ray_kwargs

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(**local_ray_kwargs(num_cpus=2, log_to_driver=False, configure_logging=False))
    yield
    ray.shutdown()


def test_two_workers_split_the_batch_and_match_one_process(local_ray, tmp_path):
    # simple_cnn has no BatchNorm, so per-worker statistics cannot make the two runs differ.
    values = base_config(
        batch_size=64, num_workers=2, budget_amount=1, base_lr=0.01, max_train_examples=512
    )
    result = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=values,
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(
            name="two-workers",
            storage_path=str(tmp_path),
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    ).fit()
    assert result.error is None
    with result.checkpoint.as_directory() as directory:
        distributed = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=False)

    reports, states = [], []
    single = TrialConfig.from_dict({**values, "num_workers": 1})
    train(single, report=lambda m, s: (reports.append(m), states.append(s)))
    assert distributed["step"] == states[-1]["step"] == 512 // 64
    for name, tensor in states[-1]["model"].items():
        torch.testing.assert_close(
            distributed["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name
        )
    metrics = result.metrics
    assert metrics["workers"] == 2 and metrics["per_worker_batch"] == 32
    assert metrics["global_batch"] == 64 and metrics["examples_seen"] == 512
    # The noise scale was measured on step 0 in both runs (a worker's first half, under
    # no_sync, against the all-reduced step; one process: the batch's halves; the next would
    # be 512 examples later, beyond these 8 steps), without changing the weights (above).
    assert metrics["gns_steps"] == reports[-1]["gns_steps"] == 1
    assert math.isfinite(metrics["gns_trace"]) and math.isfinite(metrics["gns_grad_sq"])
