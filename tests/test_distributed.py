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
from trainables.per_example import decode
from trainables.ray_worker import CHECKPOINT_FILE, train_loop_per_worker

pytestmark = pytest.mark.ray


def fit_two_workers(values: dict, storage, name: str):
    """A Ray Train run of `values` with two CPU workers and no retries."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=values,
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    ).fit()


def test_two_workers_split_the_batch_and_match_one_process(local_ray, tmp_path):
    # simple_cnn has no BatchNorm, so per-worker statistics cannot make the two runs differ.
    values = base_config(
        batch_size=64, num_workers=2, budget_amount=1, base_lr=0.01, max_train_examples=512
    )
    result = fit_two_workers(values, tmp_path, "two-workers")
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
    # where its workers ran, gathered from both (one machine: one node, a CPU each)
    assert (metrics["nodes"], metrics["device_name"]) == (1, "cpu")
    # Each worker scored its half of the validation split; the run's record of every example
    # is both halves in the split's order, as one process scores it (paired comparisons).
    kept = decode(metrics["val_per_example"])
    assert kept.size == metrics["val_examples"] == reports[-1]["val_examples"]
    assert kept.mean() == pytest.approx(metrics["val_acc"])
    assert (kept == decode(reports[-1]["val_per_example"])).all()
    assert len(reports) > 1 and all("val_per_example" not in r for r in reports[:-1])
    # The noise scale was measured on step 0 in both runs (a worker's first half, under
    # no_sync, against the all-reduced step; one process: the batch's halves; the next would
    # be 512 examples later, beyond these 8 steps), without changing the weights (above).
    assert metrics["gns_steps"] == reports[-1]["gns_steps"] == 1
    assert math.isfinite(metrics["gns_trace"]) and math.isfinite(metrics["gns_grad_sq"])


def test_a_metric_of_its_own_sees_every_workers_validation_outputs(local_ray, tmp_path):
    """Two workers each hold half the validation split; the workload's own metric (not a mean
    of per-batch values) is computed on all of it, as one process computes it; its own loss
    is averaged across both."""
    import textwrap

    from tests.test_own_workload import REGRESSION
    from trainables.workloads import by_value

    namespace: dict = {}
    exec(textwrap.dedent(REGRESSION), namespace)
    values = base_config(
        workload=by_value(namespace["workload"]),
        dataset="default",
        batch_size=32,
        num_workers=2,
        budget_unit="steps",
        budget_amount=20,
        eval_every=10,
        base_lr=0.05,
        reference_batch=32,
        metric="mae",
        metric_mode="min",
        bn_mode="per_worker",
    )
    result = fit_two_workers(values, tmp_path, "own-metric")
    assert result.error is None
    reports = []
    train(
        TrialConfig.from_dict({**values, "num_workers": 1}), report=lambda m, s: reports.append(m)
    )
    metrics = result.metrics
    assert metrics["val_examples"] == reports[-1]["val_examples"] == 120
    assert metrics["val_metric"] == pytest.approx(reports[-1]["val_metric"], rel=1e-4)
    assert metrics["val_loss"] == pytest.approx(reports[-1]["val_loss"], rel=1e-4)
