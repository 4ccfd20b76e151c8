"""A study's steps to target against plain in-process runs (issue 32 item 6).

Every budget-free run of the study (phase `budget_free`: its configuration's peak lr, weight
decay, momentum, warmup in steps and seed, a constant lr judged on the weight average, ending
at the target or its bound) is trained again with `trainables.loop.train` in this process;
each batch size's steps to target are then read from those runs by the product's own rule
(`tuner.analysis.steps`: the lrs where every seed reached the target, the earliest crossing,
interpolated) and printed beside the study's (`frontier.json`).

    python bench/steps_to_target_check.py studies/digits-study [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inprocess_check import study_spec, trial_values  # noqa: E402
from tuner.spec import load_spec  # noqa: E402


def run_one(job: dict) -> dict:
    """One budget-free run in this process: its evaluations and how it ended."""
    import torch

    torch.set_num_threads(1)
    from trainables.config import TrialConfig
    from trainables.loop import train

    spec = study_spec(job["workload"], job["extra"])
    values = trial_values(spec, job) | {
        "budget_unit": "steps",
        "budget_amount": float(job["steps"]),
        "min_steps": 0,
        "momentum": job["momentum"],
        "budget_free": True,
        "warmup_in_steps": job["warmup_steps"],
        "stop_at_target": spec.target,
    }
    key = spec.study_metric.key
    rows: list[dict] = []

    def report(metrics: dict, state: dict | None) -> None:
        rows.append({k: metrics.get(k) for k in ("optimizer_steps", key, "diverged")})
        rows[-1]["reached"] = metrics.get("reached_target")

    train(TrialConfig.from_dict(values), report=report)
    return {**job, "curve": rows}


def jobs_of(study: Path) -> list[dict]:
    spec = load_spec(study)
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    free = trials[trials["phase"] == "budget_free"]
    extra = ["--dataset", spec.dataset, "--seed", str(spec.seed)]
    jobs = []
    for trial_id, rows in free.groupby("trial_id"):
        first = rows.iloc[0]
        jobs.append(
            {
                "trial_id": trial_id,
                "workload": spec.workload,
                "extra": extra,
                "batch": int(first["batch_size"]),
                "lr": float(first["actual_lr"]),
                "steps": int(first["budget_steps"]),
                "seed": int(first["seed"]),
                "warmup": 0.0,
                "warmup_steps": int(first["warmup_steps"]),
                "wd": float(first["weight_decay"]),
                "momentum": float(first["momentum"])
                if "momentum" in rows and pd.notna(first["momentum"])
                else 0.9,
                "optimizer": first["optimizer"],
                "base_lr": float(first["base_lr"]),
                "cell": first["cell"],
            }
        )
    return jobs


def in_process_steps(runs: list[dict], study: Path) -> pd.DataFrame:
    """Each batch size's steps to target from the in-process runs, by the study's rule."""
    from tuner.analysis.steps import first_crossings, measured_runs, steps_to_target

    spec = load_spec(study)
    metric, rows = spec.study_metric, []
    for run in runs:
        reached = any(r["reached"] for r in run["curve"])
        diverged = any(r["diverged"] for r in run["curve"])
        for point in run["curve"]:
            rows.append(
                {
                    "trial_id": run["trial_id"],
                    "batch_size": run["batch"],
                    "cell": run["cell"],
                    "scaling_rule": "none",
                    "phase": "budget_free",
                    "base_lr": run["base_lr"],
                    "seed": run["seed"],
                    "outcome": "target" if reached else "diverged" if diverged else "completed",
                    "optimizer_steps": point["optimizer_steps"],
                    metric.key: point[metric.key],
                    "diverged": point["diverged"],
                }
            )
    table = pd.DataFrame(rows)
    measured, _ = measured_runs(table)
    runs_of = (
        measured.groupby("trial_id")
        .agg(batch_size=("batch_size", "first"), diverged=("diverged", "any"))
        .reset_index()
    )
    return steps_to_target(first_crossings(measured, spec.target, metric), runs_of)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    jobs = jobs_of(args.study)
    print(f"{len(jobs)} budget-free runs to train again", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run_one, jobs))
    ours = in_process_steps(runs, args.study).set_index("batch_size")
    frontier = json.loads((args.study / "frontier.json").read_text())["frontier"]
    for row in frontier:
        batch = row["batch_size"]
        if batch not in ours.index:
            continue
        mine = ours.loc[batch]
        theirs = row.get("steps")
        if theirs is None or not math.isfinite(theirs):
            theirs = row.get("steps_at_most")
        here = mine["steps"] if math.isfinite(mine["steps"]) else mine["steps_at_most"]
        print(
            f"batch {batch:>6}: steps to target study {theirs}, in-process {here} "
            f"({int(mine['reached'])} of {int(mine['candidates'])} counted runs reached it)"
        )


if __name__ == "__main__":
    main()
