"""Faults: a training worker killed mid-trial restarts from its last checkpoint, and the
trial ends exactly as an uninterrupted one (same metrics, same steps to any target)."""

import os
import signal
import threading
import time

import pytest
import ray
import ray.train
from ray.train.torch import TorchTrainer

from tests.test_config import base_config
from trainables.ray_worker import train_loop_per_worker
from tuner.cluster.connect import local_ray_kwargs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray():
    context = ray.init(**local_ray_kwargs(num_cpus=2, log_to_driver=False, configure_logging=False))
    yield f"http://{context.dashboard_url}"
    ray.shutdown()


def kill_worker_after_first_checkpoint(
    dashboard: str, run_dir, done: threading.Event, killed: list
) -> None:
    """SIGKILL the training worker process as soon as its first checkpoint is on disk."""
    from ray.util.state import list_actors

    pid = None
    while not done.is_set() and pid is None:  # find the worker first: the state API is slow
        workers = [
            a
            for a in list_actors(address=dashboard, filters=[("state", "=", "ALIVE")])
            if a.class_name == "RayTrainWorker" and a.pid
        ]
        pid = workers[0].pid if workers else None
        time.sleep(0.2)
    while not done.is_set():
        if any(run_dir.glob("**/checkpoint_*")):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def fit(values: dict, storage, name: str):
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=values,
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    ).fit()


def test_killed_worker_resumes_from_checkpoint_exactly(local_ray, tmp_path):
    # Batch 8 on all of digits for 6 epochs: 1074 steps, evaluated (and checkpointed) every 54,
    # so the kill after the first checkpoint lands a third of the way into the first epoch
    # and the retry resumes mid-epoch.
    values = base_config(budget_amount=6, batch_size=8, reference_batch=8, base_lr=0.02)
    # The reference runs in the same kind of worker (one CPU, so one thread: an in-process
    # run with two threads rounds differently and drifts over 6 epochs).
    expected = fit(values, tmp_path, "uninterrupted").metrics

    done, killed = threading.Event(), []
    killer = threading.Thread(
        target=kill_worker_after_first_checkpoint,
        args=(local_ray, tmp_path / "killed", done, killed),
        daemon=True,
    )
    killer.start()
    try:
        result = fit(values, tmp_path, "killed")
    finally:
        done.set()
        killer.join(timeout=10)
    assert killed, "the worker finished before it could be killed"
    assert result.error is None
    final = result.metrics
    assert final["progress"] == 1.0
    assert final["optimizer_steps"] == expected["optimizer_steps"] == 1074
    # Exact resumption: model, optimiser, lr schedule and data order all continue as if
    # nothing had happened, so the final validation numbers are the uninterrupted ones.
    assert final["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert final["val_acc"] == expected["val_acc"]
