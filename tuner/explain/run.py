"""Why large batches degrade, measured on a study's saved weights (no Ray; files only).

For the best finished trial of each batch size (highest final validation accuracy; its weights
are the last checkpoint Ray Train kept, `train_runs/trial-<id>/checkpoint_*/state.pt`):

- sharpness: the top Hessian eigenvalue of the training loss and Keskar et al.'s
  epsilon-sharpness on a fixed training subset (`--examples`, the same for every batch size);
- Li et al.'s 1-D and 2-D landscapes along filter-normalised random directions (the same seeds
  for every batch size), BatchNorm statistics recomputed at every point;
- Keskar et al.'s interpolation between the smallest and the largest batch size's solutions,
  a in [-1, 2];
- the gradient noise scale B_simple the trials logged while training, against the critical
  batch size the report fitted (McCandlish et al. expect agreement within about 10x).

A checkpoint that vanishes while being read (a running study keeps only each trial's latest)
skips that batch size with a note, so the command is safe on a running study.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainables import geometry
from trainables.batchnorm import apply_bn_mode
from trainables.checkpoint_dir import load_state
from trainables.datasets import DEFAULT_DATA_DIR
from trainables.metrics import ACCURACY, StudyMetric
from tuner.analysis.trials import FINAL, trial_summary
from tuner.errors import InputError
from tuner.explain.write import write_outputs
from tuner.report.format import value_text
from tuner.spec import StudySpec, load_spec
from tuner.store.names import TRAIN_RUNS
from tuner.store.table import collect_trials
from tuner.trust import Untrusted, check_trusted

ALPHAS = [round(a, 2) for a in np.linspace(-1.0, 2.0, 13)]
BATCH = 128  # examples per forward pass of the measurements


def best_trials(
    table: pd.DataFrame, batch_sizes: tuple[int, ...] | None, metric: StudyMetric = ACCURACY
) -> pd.DataFrame:
    """The best finished trial of every batch size (highest final validation accuracy, or
    lowest validation loss)."""
    summary = trial_summary(table, metric)
    finished = summary[summary["outcome"].isin(FINAL) & summary["final_value"].notna()]
    if batch_sizes:
        finished = finished[finished["batch_size"].isin(batch_sizes)]
    order = finished.assign(_score=finished["final_value"] * metric.sign)
    order = order.sort_values("_score", ascending=False, kind="stable").drop(columns="_score")
    return order.groupby("batch_size", sort=True).head(1).sort_values("batch_size")


def checkpoint_of(study_dir: Path, trial_id: str) -> Path | None:
    """The latest checkpoint file of a trial, None when it has none (yet)."""
    runs = sorted((study_dir / TRAIN_RUNS / f"trial-{trial_id}").glob("checkpoint_*/state.pt"))
    return runs[-1] if runs else None


def _model(spec: StudySpec, input_shape, classes: int) -> torch.nn.Module:
    model = spec.load_workload().build_model(input_shape, classes)
    return apply_bn_mode(model, spec.bn_mode, spec.ghost_batch, spec.workers_per_trial)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int, device: str):
    return [
        (x[i : i + size].to(device), y[i : i + size].to(device)) for i in range(0, len(y), size)
    ]


def explain(
    study_dir: Path,
    batch_sizes: tuple[int, ...] | None = None,
    grid: int = 11,
    examples: int = 512,
    device: str = "cpu",
    progress: bool = True,
    weight_decays: tuple[float, ...] = (),
    trust_code: bool = False,
) -> Path:
    """Measure, write why.md / why.json / figures / TensorBoard, and return why.md's path.
    Imports the study's workload and loads its checkpoints: only for a study this user made on
    this machine, or with `trust_code` (tuner.trust)."""
    if not (study_dir / "study.json").exists():
        raise InputError(f"{study_dir}: not a study directory (no study.json)")
    try:
        check_trusted(study_dir / "study.json", "explain", trust_code)
    except Untrusted as error:
        raise InputError(str(error)) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: this machine has no CUDA GPU; use --device cpu")
    spec = load_spec(study_dir)
    if spec.method == "branch":  # its branches keep no weights to measure
        raise InputError(
            f"{study_dir}: a branch study keeps no trained weights to measure; explain reads a "
            f"grid study's confirmation runs (python -m tuner.search {spec.workload} with "
            f"--method grid, the default)"
        )
    table = collect_trials(study_dir)
    best = best_trials(table, batch_sizes, spec.study_metric)
    if best.empty:
        raise InputError(
            f"{study_dir}: no finished trial{' at those batch sizes' if batch_sizes else ''} "
            f"yet; run it again once trials have finished"
        )
    workload = spec.load_workload()
    splits = workload.open(
        spec.dataset, spec.data_dir or DEFAULT_DATA_DIR, spec.seed, spec.max_train_examples
    )
    loss_fn = workload.loss  # None: cross-entropy
    if not hasattr(splits.train, "x"):
        raise InputError(f"--dataset {spec.dataset}: explain reads in-memory data sets only")
    keep = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(spec.seed))
    keep = keep[: min(examples, len(keep))]
    train = _batches(splits.train.x[keep], splits.train.y[keep], BATCH, device)
    val = _batches(splits.val.x, splits.val.y, BATCH, device)
    # BatchNorm statistics are re-estimated in the BN batch the model trained with.
    bn_size = spec.ghost_batch if spec.bn_mode == "ghost" else BATCH
    bn = _batches(splits.train.x[keep], splits.train.y[keep], bn_size, device)

    notes: list[str] = []
    solutions: dict[int, dict[str, torch.Tensor]] = {}
    rows: list[dict[str, Any]] = []
    landscapes: dict[int, dict[str, Any]] = {}
    line = np.linspace(-1.0, 1.0, grid)
    steps = _progress(best, progress)
    for _, trial in steps:
        batch = int(trial["batch_size"])
        path = checkpoint_of(study_dir, trial["trial_id"])
        try:
            state = load_state(path, device) if path else None
        except (FileNotFoundError, RuntimeError, EOFError):
            state = None
        if state is None:
            notes.append(f"batch {batch}: trial {trial['trial_id']} has no readable checkpoint")
            continue
        model = _model(spec, splits.input_shape, splits.num_classes).to(device)
        model.load_state_dict(state["model"])
        solutions[batch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        d1 = geometry.filter_normalised_direction(model, seed=1)
        d2 = geometry.filter_normalised_direction(model, seed=2)
        rows.append(
            {
                "batch_size": batch,
                "trial_id": trial["trial_id"],
                "val_acc": float(trial["final_val_acc"]),
                "value_text": value_text(spec.study_metric, trial["final_value"]),
                "train_loss": geometry.mean_loss(model, train, loss_fn),
                "top_hessian_eigenvalue": geometry.top_hessian_eigenvalue(
                    model, train, iterations=30, tolerance=1e-3, loss_fn=loss_fn
                ),
                "epsilon_sharpness": geometry.epsilon_sharpness(
                    model, train, epsilon=1e-3, loss_fn=loss_fn
                ),
            }
        )
        landscapes[batch] = {
            "line": line.tolist(),
            "loss_1d": geometry.landscape(model, train, [d1], [(a,) for a in line], bn, loss_fn),
            "loss_2d": np.array(
                geometry.landscape(
                    model, train, [d1, d2], [(a, b) for a in line for b in line], bn, loss_fn
                )
            )
            .reshape(grid, grid)
            .tolist(),
            "val_acc": float(trial["final_val_acc"]),
            "weight_decay": float(trial["weight_decay"]),
        }
    interpolation: list[dict[str, float]] = []
    pair = (min(solutions), max(solutions)) if len(solutions) >= 2 else None
    if pair:
        model = _model(spec, splits.input_shape, splits.num_classes).to(device)
        interpolation = geometry.interpolate(
            model, solutions[pair[0]], solutions[pair[1]], ALPHAS, bn, val, loss_fn
        )
    decay_grid = []
    if weight_decays:
        decay_grid = weight_decay_grid(
            spec, best, weight_decays, splits, (train, bn), line, device, progress
        )
    noise = noise_scale_summary(table, best, study_dir)
    result = {
        "batch_sizes": [r["batch_size"] for r in rows],
        "examples": int(len(keep)),
        "sharpness": rows,
        "interpolation": {
            "small": pair[0] if pair else None,
            "large": pair[1] if pair else None,
            "points": interpolation,
        },
        "landscapes": {str(b): v for b, v in landscapes.items()},
        "noise_scale": noise,
        "weight_decay_grid": decay_grid,
        "notes": notes,
        "metric_label": spec.study_metric.label,
    }
    return write_outputs(study_dir, result)


def weight_decay_grid(
    spec: StudySpec,
    best: pd.DataFrame,
    weight_decays: tuple[float, ...],
    splits,
    data: tuple[list, list],
    line: np.ndarray,
    device: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """Li et al.'s Figure 3: the smallest and the largest batch size's best configuration trained
    again in-process (same budget and seed) with each weight decay, and the 2-D landscape of each
    solution along the same two filter-normalised directions' seeds."""
    from trainables.config import TrialConfig
    from trainables.loop import train as train_trial

    train, bn = data
    ends = best.iloc[[0, -1]] if len(best) >= 2 else best
    jobs = [(trial, wd) for _, trial in ends.iterrows() for wd in weight_decays]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="batch x weight decay", leave=False)
    out = []
    for trial, wd in jobs:
        seed = trial["seed"] if pd.notna(trial["seed"]) else spec.seed
        params = {k: trial[k] for k in ("scaling_rule", "optimizer", "base_lr", "warmup_fraction")}
        params |= {"batch_size": int(trial["batch_size"]), "weight_decay": wd, "seed": int(seed)}
        values = spec.trial_config(params)
        values |= {"use_gpu": device == "cuda", "decode": "cpu", "compile": False}
        finals: list[tuple[dict, dict]] = []
        train_trial(
            TrialConfig.from_dict(values),
            report=lambda m, s, into=finals: into.append((m, s)),
            device=torch.device(device),
            splits=dataclasses.replace(splits),
        )
        metrics, state = finals[-1]
        model = _model(spec, splits.input_shape, splits.num_classes).to(device)
        model.load_state_dict(state["model"])
        d1 = geometry.filter_normalised_direction(model, seed=1)
        d2 = geometry.filter_normalised_direction(model, seed=2)
        coords = [(a, b) for a in line for b in line]
        out.append(
            {
                "batch_size": int(trial["batch_size"]),
                "weight_decay": float(wd),
                "val_acc": float(metrics["val_acc"]),
                "line": line.tolist(),
                "loss_2d": np.array(
                    geometry.landscape(
                        model, train, [d1, d2], coords, bn, spec.load_workload().loss
                    )
                )
                .reshape(len(line), len(line))
                .tolist(),
            }
        )
    return out


def _progress(best: pd.DataFrame, show: bool):
    rows = list(best.iterrows())
    if not show:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc="explain", unit="batch size", leave=False)


def noise_scale_summary(table: pd.DataFrame, best: pd.DataFrame, study_dir: Path) -> dict:
    """B_simple over training for each best trial, and how its last value compares with B_crit."""
    curves = {}
    for _, trial in best.iterrows():
        rows = table[(table["trial_id"] == trial["trial_id"]) & table["gns_b_simple"].notna()]
        if not rows.empty:
            curves[str(int(trial["batch_size"]))] = {
                "steps": rows["optimizer_steps"].astype(float).tolist(),
                "b_simple": rows["gns_b_simple"].astype(float).tolist(),
            }
    b_crit = None
    frontier = study_dir / "frontier.json"
    if frontier.exists():
        critical = json.loads(frontier.read_text()).get("critical_batch", {})
        if critical.get("status") == "fit" and math.isfinite(critical.get("b_crit", math.nan)):
            b_crit = float(critical["b_crit"])
    finals = [c["b_simple"][-1] for c in curves.values() if c["b_simple"]]
    summary: dict[str, Any] = {"curves": curves, "b_crit": b_crit}
    if finals and b_crit:
        typical = float(np.median(finals))
        ratio = typical / b_crit
        summary |= {
            "b_simple_final_median": typical,
            "ratio_to_b_crit": ratio,
            "agree_within_10x": bool(0.1 <= ratio <= 10),
        }
    return summary
