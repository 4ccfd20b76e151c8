"""Faults: a training worker killed mid-trial restarts from its last checkpoint, and the
trial ends exactly as an uninterrupted one (same metrics, same steps to any target): a Ray
Train worker (multi-worker trials) and a one-worker trial's own Tune actor."""

import os
import signal
import threading
import time

import pytest
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer

from tests.test_config import base_config
from trainables.ray_worker import train_loop_per_worker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def kill_worker_after_first_checkpoint(
    dashboard: str, run_dir, done: threading.Event, killed: list
) -> None:
    """SIGKILL the training worker process once Train has registered a checkpoint of it."""
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
        # Once Train's controller has registered a checkpoint (it writes its snapshot then):
        # it polls the workers' reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, and a worker
        # killed before a poll takes its unread reports with it, so the retry rightly starts
        # from step 0 (the kill right after the first checkpoint file always did, unnoticed).
        if (run_dir / "checkpoint_manager_snapshot.json").exists():
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
    # Batch 8 on all of digits for 120 steps (two thirds of its first epoch: 180 steps), evaluated
    # and checkpointed every 10, so the kill after the first registered checkpoint lands
    # mid-epoch and the retry resumes mid-epoch (its data order must continue exactly).
    values = base_config(
        budget_unit="steps", budget_amount=120, eval_every=10, batch_size=8, reference_batch=8
    )
    values["base_lr"] = 0.02
    # The reference runs in the same kind of worker (one CPU, so one thread: an in-process
    # run with two threads rounds differently and drifts).
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
    assert final["optimizer_steps"] == expected["optimizer_steps"] == 120
    # the retry resumed from a checkpoint, mid-run (a retry from step 0 ends with the same
    # numbers, so only this tells them apart)
    assert 0 < final["resumed_at_step"] < 120 and final["resumed_at_step"] % 10 == 0
    assert expected["resumed_at_step"] == 0
    # Exact resumption: model, optimiser, lr schedule and data order all continue as if
    # nothing had happened, so the final validation numbers are the uninterrupted ones.
    assert final["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert final["val_acc"] == expected["val_acc"]


class KillAtFirstReport(tune.Callback):
    """SIGKILL a trial's process at its first report (its checkpoint is already saved)."""

    def __init__(self):
        self.killed: list[int] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed:
            os.kill(result["pid"], signal.SIGKILL)
            self.killed.append(result["pid"])


def tune_one_worker_trial(storage, name: str, callbacks=()) -> list[dict]:
    """One one-worker trial of a real study spec, run by Tune as a study runs it (the study's
    trainable, actor reuse, --worker-retries 2): every result it reported, in order."""
    from tuner.options import build_parser
    from tuner.resolve import build_spec
    from tuner.study.trial import trainable

    cli = ["simple_cnn", "--dataset", "digits", "--budget", "steps:120", "--eval-every", "30"]
    spec = build_spec(
        build_parser().parse_args([*cli, "--storage", str(storage), "--name", name]), False
    )
    assert spec.workers_per_trial == 1 and spec.worker_retries == 2
    params = {"batch_size": 32, "scaling_rule": "linear", "optimizer": "sgd", "base_lr": 0.05}
    params |= {"warmup_fraction": 0.1, "weight_decay": 1e-4}
    results = []

    class Collect(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            results.append(result)

    tuner = tune.Tuner(
        trainable(spec),
        param_space=params,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=spec.study_uri.rsplit("/", 1)[0],
            callbacks=[Collect(), *callbacks],
            failure_config=tune.FailureConfig(max_failures=spec.worker_retries),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    assert not grid.errors
    return results


def test_killed_one_worker_trial_resumes_from_its_checkpoint_exactly(local_ray, tmp_path):
    """A one-worker trial trains in its Tune actor: killed after its first evaluation, Tune
    restarts it, it resumes at that evaluation's step (not at 0), and it ends exactly as an
    uninterrupted trial."""
    expected = tune_one_worker_trial(tmp_path, "uninterrupted")
    killer = KillAtFirstReport()
    got = tune_one_worker_trial(tmp_path, "killed", [killer])
    assert killer.killed, "the trial was never killed"
    steps = [r["optimizer_steps"] for r in got]
    # the first report (step 30) came before the kill; the restarted process reported its
    # checkpoint's evaluation again, then resumed there
    assert steps == [30, 30, 60, 90, 120]
    assert [r["resumed_at_step"] for r in got] == [0, 0, 30, 30, 30]
    assert got[1]["window_time_s"] == got[0]["window_time_s"]  # the same evaluation
    assert got[0]["pid"] != got[1]["pid"] == got[-1]["pid"]  # a second process did the rest
    assert [r["resumed_at_step"] for r in expected] == [0, 0, 0, 0]
    for a, b in zip(got[1:], expected, strict=True):
        assert a["val_loss"] == b["val_loss"] and a["val_acc"] == b["val_acc"]
        assert a["train_loss"] == b["train_loss"]
