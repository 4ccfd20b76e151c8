"""A branch study's trials: one Tune function trainable for its four kinds of job, each a plain
`trainables.loop.train` run (or several) in the trial's reused process.

- `probe`: the base run's schedule at one lr, stopped at a fraction of its budget;
- `base`: the base run, keeping its state at the checkpoints the branches start from
  (`trainables.checkpoint_dir`, under STUDY/branch_points, local or in an object store);
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
from typing import Any

import torch
from ray import tune

from trainables.checkpoint_dir import CheckpointDir
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.metrics import get_metric
from trainables.tune_trial import cached_splits
from tuner.analysis.branch import BranchRun, best_candidate, smoothed_end
from tuner.spec import StudySpec
from tuner.store import objects as store

POINTS = "branch_points"  # the base run's checkpoints, under the study


class _Enough(Exception):
    """A probe has trained as far as it should."""


def point_uri(study: StudySpec, step: int) -> str:
    return store.join(study.study_uri, POINTS, f"step-{step:08d}")


def run_once(
    values: dict[str, Any],
    device: torch.device,
    *,
    start_state: dict[str, Any] | None = None,
    lr_fn: Callable[[int], float] | None = None,
    keep_steps: tuple[int, ...] = (),
    on_state=None,
    stop_step: int = 0,
    test_at_end: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Train one config to its end (or `stop_step`), from `start_state` with the lr
    `lr_fn(step)` where given: its last metrics, every evaluation's (step, examples, value,
    val_loss, lr) and its last state."""
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
            device=device,
            splits=cached_splits(config),
            # the optimizer's buffers would be shared (and moved on) between branches
            start_state=copy.deepcopy(start_state) if start_state else None,
            keep_steps=keep_steps,
            lr_fn=lr_fn,
            test_at_end=test_at_end,
        )
    return dict(last), history, end.get("state")


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
        "train_s": float(metrics.get("window_time_s", math.nan)),
    }


def constant(lr: float) -> Callable[[int], float]:
    return lambda _step: lr


def branch_trial(job: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune trainable: run one job of a branch study and report its records once."""
    study = StudySpec.from_dict(spec)
    torch.set_num_threads(max(1, int(study.cpus_per_worker)))
    device = torch.device("cuda", 0) if study.use_gpu else torch.device("cpu")
    metric = study.study_metric
    kind = job["kind"]
    if kind == "probe":
        metrics, history, _ = run_once(job["config"], device, stop_step=job["stop_step"])
        record = run_record(metrics, metric.key, base_lr=job["config"]["base_lr"])
        tune.report({"kind": kind, "record": json.dumps(record), "history": json.dumps(history)})
        return
    if kind == "base":

        def keep(step: int, state: dict[str, Any]) -> None:
            CheckpointDir(point_uri(study, step)).save(state)

        metrics, history, _ = run_once(
            job["config"], device, keep_steps=tuple(job["keep_steps"]), on_state=keep
        )
        record = run_record(metrics, metric.key, base_lr=job["config"]["base_lr"])
        tune.report({"kind": kind, "record": json.dumps(record), "history": json.dumps(history)})
        return
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
        tune.report({"kind": kind, "runs": json.dumps(records)})
        return
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
        tune.report({"kind": kind, "record": json.dumps(record), "history": json.dumps(history)})
        return
    raise ValueError(f"unknown branch job {kind!r}")


def trainable(spec: StudySpec):
    """The branch trial with the study's spec bound and one worker's resources."""
    resources: dict[str, float] = {"CPU": spec.cpus_per_worker}
    if spec.use_gpu:
        resources["GPU"] = spec.gpus_per_worker
    return tune.with_resources(tune.with_parameters(branch_trial, spec=spec.to_dict()), resources)
