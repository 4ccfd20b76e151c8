"""A branch study's trials: one Tune function trainable for its four kinds of job, each a plain
`trainables.loop.train` run (or several): with one worker per trial in the trial's reused
process, with two or more as a Ray Train run of data-parallel workers (the grid's
`tuner.study.trial.torch_trainer`), each worker running the same job on its share of every batch.

- `probe`: the base run's schedule at one lr, stopped at a fraction of its budget;
- `base`: the base run, keeping its state at the checkpoints the branches start from
  (`trainables.checkpoint_dir`, under STUDY/branch_points, local or in an object store); a base
  run started again (a resumed study, a retried trial) goes on from the latest of them;
- `rung`: from one checkpoint, at k x the base batch for the window's examples: each lr
  candidate once (the search), then the best one with fresh seeds (the confirmation);
- `verify`: the suggested batch-size schedule, from the first checkpoint it changes at.
Each reports once, at its end, with its runs' records (a JSON string: Tune flattens dicts).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray import tune

from trainables.checkpoint_dir import CheckpointDir
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.metrics import get_metric
from trainables.process import placement_of
from trainables.tune_trial import cached_splits
from tuner.analysis.branch import BranchRun, best_candidate, smoothed_end
from tuner.spec import StudySpec
from tuner.store import objects as store
from tuner.study.trial import DRIVER_RESOURCES, actor_resources, torch_trainer

POINTS = "branch_points"  # the base run's checkpoints, under the study


class _Enough(Exception):
    """A probe has trained as far as it should."""


@dataclass(frozen=True)
class Workers:
    """Where a job runs: this process alone, or rank `rank` of `world` Ray Train workers, each
    running the same job on its share of every batch (the model wrapped by `wrap`)."""

    rank: int = 0
    world: int = 1
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model


def point_uri(study: StudySpec, step: int) -> str:
    return store.join(study.study_uri, POINTS, f"step-{step:08d}")


def run_once(
    values: dict[str, Any],
    device: torch.device,
    *,
    workers: Workers | None = None,
    start_state: dict[str, Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    lr_fn: Callable[[int], float] | None = None,
    keep_steps: tuple[int, ...] = (),
    on_state=None,
    stop_step: int = 0,
    test_at_end: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Train one config to its end (or `stop_step`), from `start_state` with the lr
    `lr_fn(step)` where given (or going on from its own `resume_state`), on this process or as
    one of `workers`: its last metrics, every evaluation's (step, examples, value, val_loss,
    lr) and its last state."""
    workers = workers or Workers()
    config = TrialConfig.from_dict(values)
    key = get_metric(config.metric, config.metric_mode).key
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    end: dict[str, Any] = {}

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        last.clear()
        last.update(metrics)
        step = int(metrics["optimizer_steps"])
        history.append(
            {
                "step": step,
                "examples": int(metrics["examples_seen"]),
                "value": float(metrics.get(key, math.nan)),
                "val_loss": float(metrics["val_loss"]),
                "lr": float(metrics["lr"]),
                "per_example": metrics.get("val_per_example"),
                "diverged": bool(metrics.get("diverged", False)),
            }
        )
        if state is not None:
            end["state"] = state
            if on_state is not None and step in keep_steps:
                on_state(step, state)
        if stop_step and step >= stop_step:
            raise _Enough

    with contextlib.suppress(_Enough):  # a probe's end
        train(
            config,
            report=report,
            rank=workers.rank,
            world=workers.world,
            wrap_model=workers.wrap,
            device=device,
            splits=cached_splits(config),
            # the optimizer's buffers would be shared (and moved on) between branches
            start_state=copy.deepcopy(start_state) if start_state else None,
            resume_state=resume_state,
            keep_steps=keep_steps,
            lr_fn=lr_fn,
            test_at_end=test_at_end,
        )
    return dict(last), history, end.get("state")


def latest_kept(
    study: StudySpec, keep_steps: list[int], device: torch.device
) -> dict[str, Any] | None:
    """The base run's latest kept state, where an earlier start of it kept one: a base run
    started again goes on from there (its evaluations so far replayed from the state), not
    from step 0. None for a first start."""
    for step in sorted(keep_steps, reverse=True):
        state = CheckpointDir(point_uri(study, step)).latest(device)
        if state is not None:
            return state
    return None


def run_record(metrics: dict[str, Any], key: str, **about: Any) -> dict[str, Any]:
    """A branch run's record: where it started, what it tried, how it ended."""
    diverged = bool(metrics.get("diverged", False))
    value = float(metrics.get(key, math.nan))
    return {
        **about,
        "value": math.nan if diverged or not math.isfinite(value) else value,
        "val_loss": float(metrics.get("val_loss", math.nan)),
        "val_examples": int(metrics.get("val_examples", 0)),
        "val_loss_sd": float(metrics.get("val_loss_sd", math.nan)),
        "per_example": metrics.get("val_per_example"),
        "diverged": diverged,
        "steps": int(metrics.get("optimizer_steps", 0)),
        "workers": int(metrics.get("workers", 1)),
        "per_worker_batch": int(metrics.get("per_worker_batch", 0)),
        "train_s": float(metrics.get("window_time_s", math.nan)),
    }


def constant(lr: float) -> Callable[[int], float]:
    return lambda _step: lr


def job_result(
    job: dict[str, Any], study: StudySpec, device: torch.device, workers: Workers | None = None
) -> dict[str, Any]:
    """Run one job of a branch study: what its trial reports, once, at its end."""
    workers = workers or Workers()
    metric = study.study_metric
    kind = job["kind"]
    if kind == "probe":
        metrics, history, _ = run_once(
            job["config"], device, workers=workers, stop_step=job["stop_step"]
        )
        record = run_record(metrics, metric.key, base_lr=job["config"]["base_lr"])
        return {"kind": kind, "record": json.dumps(record), "history": json.dumps(history)}
    if kind == "base":

        def keep(step: int, state: dict[str, Any]) -> None:
            if workers.rank == 0:  # every worker holds the same state
                CheckpointDir(point_uri(study, step)).save(state)

        kept = latest_kept(study, job["keep_steps"], device)
        metrics, history, _ = run_once(
            job["config"],
            device,
            workers=workers,
            resume_state=kept,
            keep_steps=tuple(job["keep_steps"]),
            on_state=keep,
        )
        record = run_record(metrics, metric.key, base_lr=job["config"]["base_lr"])
        record["resumed_at_step"] = int(metrics.get("resumed_at_step", 0))
        return {"kind": kind, "record": json.dumps(record), "history": json.dumps(history)}
    if kind == "rung":
        start = CheckpointDir(point_uri(study, job["step"])).latest(device)
        if start is None:
            raise FileNotFoundError(f"no base-run checkpoint at step {job['step']}")
        about = {"checkpoint": job["checkpoint"], "multiplier": job["multiplier"]}
        records = []
        late = tuple(job["late_steps"])

        def branch(config, lr):
            metrics, history, _ = run_once(
                config,
                device,
                workers=workers,
                start_state=start,
                lr_fn=constant(lr),
                keep_steps=late,
                test_at_end=False,
            )
            return smoothed_end(history, metric.key, metrics)

        for label, lr in job["candidates"]:
            metrics = branch(job["configs"][str(job["search_seed"])], lr)
            rec = run_record(
                metrics, metric.key, **about, candidate=label, lr=lr, seed=job["search_seed"]
            )
            records.append({**rec, "phase": "search"})
        # the winner as the analysis will read it (tuner.analysis.branch.best_candidate)
        winner = best_candidate([BranchRun.from_record(r) for r in records], metric)
        if winner is not None:
            lr = next(r["lr"] for r in records if r["candidate"] == winner)
            for seed in job["confirm_seeds"]:
                metrics = branch(job["configs"][str(seed)], lr)
                rec = run_record(metrics, metric.key, **about, candidate=winner, lr=lr)
                records.append({**rec, "seed": seed, "phase": "confirm"})
        return {"kind": kind, "runs": json.dumps(records)}
    if kind == "verify":
        state = CheckpointDir(point_uri(study, job["from_step"])).latest(device)
        if state is None:
            raise FileNotFoundError(f"no base-run checkpoint at step {job['from_step']}")
        history: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        steps, examples = job["from_step"], job["from_examples"]
        for segment in job["segments"]:
            # The lr follows the base run's schedule by examples seen, scaled by the rule.
            lrs = segment["lrs"]
            metrics, part, state = run_once(
                segment["config"],
                device,
                workers=workers,
                start_state=state,
                lr_fn=lambda step, lrs=lrs: lrs[min(step, len(lrs) - 1)],
            )
            history += [
                {**h, "step": h["step"] + steps, "examples": h["examples"] + examples} for h in part
            ]
            steps += int(metrics.get("optimizer_steps", 0))
            examples += int(metrics.get("examples_seen", 0))
            if metrics.get("diverged"):
                break
        record = run_record(metrics, metric.key)
        record |= {"steps": steps, "examples": examples}
        return {"kind": kind, "record": json.dumps(record), "history": json.dumps(history)}
    raise ValueError(f"unknown branch job {kind!r}")


def with_run_options(job: dict[str, Any], study: StudySpec) -> dict[str, Any]:
    """The job with this run's data options in each of its configs: a job planned before an
    interruption runs with what `--resume` may change (`--data-dir`, `--loader-workers`)."""
    job = copy.deepcopy(job)
    configs = [job["config"]] if "config" in job else []
    configs += list(job.get("configs", {}).values())
    configs += [segment["config"] for segment in job.get("segments", [])]
    for config in configs:
        config["data_dir"] = study.data_dir
        config["loader_workers"] = study.loader_workers or max(1, int(study.cpus_per_worker))
    return job


def branch_trial(job: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune trainable: run one job of a branch study and report its records once, in this
    process (one worker) or as a Ray Train run of the study's workers per trial."""
    study = StudySpec.from_dict(spec)
    job = with_run_options(job, study)
    if study.workers_per_trial == 1:
        torch.set_num_threads(max(1, int(study.cpus_per_worker)))
        device = torch.device("cuda", 0) if study.use_gpu else torch.device("cpu")
        tune.report({**job_result(job, study, device), **where_it_ran(device, 1)})
        return
    run_name = f"branch-{tune.get_context().get_trial_id()}"
    torch_trainer(study, branch_worker, {"job": job, "spec": spec}, run_name).fit()


def branch_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: this worker's share of one job; every rank reports the same
    result (a report is a barrier), rank 0's reaches Tune."""
    study = StudySpec.from_dict(config["spec"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if study.use_gpu else torch.device("cpu")
    workers = Workers(
        context.get_world_rank(),
        context.get_world_size(),
        lambda model: ray.train.torch.prepare_model(model, move_to_device=False),
    )
    where = where_it_ran(device, workers.world)  # every rank: a collective
    ray.train.report({**job_result(config["job"], study, device, workers), **where})


def where_it_ran(device: torch.device, world: int) -> dict[str, Any]:
    """A job's placement as a grid trial reports it (`trainables.process.placement_of`): its
    rank-0 node, the distinct nodes of its workers, their devices."""
    node = ray.get_runtime_context().get_node_id()
    return {"node_id": node, **placement_of(node, device, world)}


def trainable(spec: StudySpec):
    """The branch trial with the study's spec bound: a one-worker trial's actor holds the
    worker's resources; a Ray Train run's driver, a token (its workers hold their own)."""
    one = spec.workers_per_trial == 1
    resources = actor_resources(spec) if one else DRIVER_RESOURCES
    return tune.with_resources(tune.with_parameters(branch_trial, spec=spec.to_dict()), resources)
