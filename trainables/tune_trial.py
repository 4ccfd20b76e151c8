"""The adapter between the plain-PyTorch loop and a Tune trial actor: a one-worker trial trains
right in its (reused) trial process, with no Ray Train run around it.

Ray Train starts a controller and a worker process for every `fit()` (about 12 s on 2 CPUs,
30 s on a GPU node); a Tune function trainable with `reuse_actors=True` keeps its process from
one trial to the next, so torch, the model code and the data set are loaded once per actor.
`train_one_worker` is called by the trial driver (`tuner.study.trial`): it resumes from the
trial's latest checkpoint (`trainables.checkpoint_dir`: after a restart by Tune's
`FailureConfig`, or in a resumed study), runs `trainables.loop.train`, and at every evaluation
saves a checkpoint and then reports to Tune.
Trials with two or more workers stay Ray Train runs (`trainables.ray_worker`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch
from ray import tune

from trainables.checkpoint_dir import CheckpointDir
from trainables.config import TrialConfig
from trainables.data import Splits
from trainables.loop import train
from trainables.process import placement_of, process_started
from trainables.trial_data import dataset_args, open_splits

# One data set per process, keyed by everything that decides its contents: a reused actor never
# hands one configuration's data to another, and holds at most one data set in memory.
_DATA: dict[tuple, Splits] = {}
_SERVED: list[bool] = []  # this process has begun a trial before (a reused actor)


def cached_splits(config: TrialConfig) -> Splits:
    """The trial's data set, loaded once per process for as long as trials ask for the same."""
    key = dataset_args(config)
    if key not in _DATA:
        _DATA.clear()  # drop the previous data set before loading the next
        _DATA[key] = open_splits(config)
    return _DATA[key]


def train_one_worker(values: dict[str, Any], cpus: float, checkpoint_uri: str) -> None:
    """Run a one-worker trial in this Tune trial actor, its checkpoints under `checkpoint_uri`;
    every evaluation is a Tune report."""
    trial = TrialConfig.from_dict(values)
    # A reused actor may have served a trial of another size; the threads follow this one's CPUs.
    torch.set_num_threads(max(1, int(cpus)))
    device = torch.device("cuda", 0) if trial.use_gpu else torch.device("cpu")
    if trial.compile:
        # Dynamo's caches outlive a trial: without a reset the next trial's first step would
        # not include its compilation, and shapes piling up would hit the recompile limit.
        torch._dynamo.reset()
    checkpoints = CheckpointDir(checkpoint_uri)
    # where and when it ran: its node, its process, when it began (a trial may wait for its
    # resources after the search handed it out; a new process holds them from its start, so
    # its first trial is charged for starting Python and torch) and when it reported
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    where["trial_began"] = time.time() if _SERVED else process_started()
    where |= placement_of(where["node_id"], device, 1)
    _SERVED.append(True)

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is not None:
            checkpoints.save(state)
        # When Tune stops the trial (ASHA), this call ends the training thread (SystemExit).
        tune.report({**metrics, **where, "reported_at": time.time()})

    train(
        trial,
        report=report,
        device=device,
        resume_state=checkpoints.latest(device),
        splits=cached_splits(trial),
    )
