"""The one adapter between the plain-PyTorch loop and Ray Train workers.

`train_loop_per_worker` is what `TorchTrainer` runs on every worker: it resumes from Ray Train's
latest checkpoint (after a worker-group restart), runs `trainables.loop.train`, and turns every
epoch into a `ray.train.report` with a checkpoint written by rank 0.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from trainables.checkpoint_dir import STATE_FILE as CHECKPOINT_FILE
from trainables.checkpoint_dir import load_state, plain_state
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.process import placement_of, process_started


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run one trial's training on this worker (Ray Train entry point)."""
    trial = TrialConfig.from_dict(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if trial.use_gpu else torch.device("cpu")

    resume_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            resume_state = load_state(os.path.join(directory, CHECKPOINT_FILE), device)

    # where and when it ran (rank 0's node and process; see trainables.tune_trial)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    where["trial_began"] = process_started()  # a new worker group per trial
    where |= placement_of(where["node_id"], device, world)  # every rank: a collective

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        metrics = {**metrics, **where, "reported_at": time.time()}
        # Every rank must call report (it is a barrier); only rank 0 writes the checkpoint.
        if rank == 0 and state is not None:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(plain_state(state), os.path.join(directory, CHECKPOINT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        if world == 1:  # DDP over one process only adds overhead
            return model
        return ray.train.torch.prepare_model(model, move_to_device=False)

    train(
        trial,
        report=report,
        rank=rank,
        world=world,
        device=device,
        wrap_model=wrap,
        resume_state=resume_state,
    )
