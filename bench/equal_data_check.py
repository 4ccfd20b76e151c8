"""A study's equal-data answer against plain in-process runs at the same data, lr and seeds.

For every batch size the study measured at the baseline's data (`frontier.json`: `equal_data_steps`,
`equal_data_lr_factor`), this trains the same configuration (the cell's confirmed peak lr x that
factor, its warmup and weight decay, the same seeds and steps: the confirmation seeds, or the fresh
ones where the line search moved the lr and ran it again) with `trainables.loop.train` in this
process (`bench/inprocess_check.py`'s runner) and prints the study's value beside the in-process
one. Issue 32 asks them to agree within 1 pt.
With `--judged`, the other answer: every batch size at the level it was judged at (its
`steps_judged` and `judged_lr_factor`, the baseline's included) against the study's
`accuracy` (the "given more data" answer), and the baseline at each multiple of its budget a
batch size was compared with (`baseline_multiple`, against `baseline_accuracy`; "8@4x"); a
level the checks chose with the fresh seeds it was measured again with (phase `judge`).

    python bench/equal_data_check.py studies/digits-study [--judged] [--jobs 2]
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

from bench.inprocess_check import run_one  # noqa: E402
from tuner.spec import load_spec  # noqa: E402


def _finite(*values) -> float:
    """The first of `values` that is a finite number (JSON keeps a NaN as NaN)."""
    return next(v for v in values if isinstance(v, int | float) and math.isfinite(v))


def jobs_of(study: Path, judged: bool = False) -> list[dict]:
    """One in-process run per (batch size, seed) of each equal-data level the study judged
    (`judged`: of the level each batch size's main answer was judged at)."""
    spec = load_spec(study)
    frontier = json.loads((study / "frontier.json").read_text())["frontier"]
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    finals = trials.sort_values("optimizer_steps").groupby("trial_id").tail(1)
    extra = ["--dataset", spec.dataset, "--seed", str(spec.seed)]
    jobs = []
    levels = []
    base_batch = min(r["batch_size"] for r in frontier)
    for row in frontier:
        steps, factor = row.get("equal_data_steps"), row.get("equal_data_lr_factor")
        value = row.get("equal_data_accuracy")
        batch = row["batch_size"]
        if judged:
            steps, value = row.get("steps_judged"), row.get("accuracy")
            factor = _finite(row.get("judged_lr_factor"), row.get("baseline_lr_factor"), 1.0)
        elif batch == base_batch:
            continue
        levels.append((row, steps, factor, value, str(batch)))
    if judged:  # and the baseline at each multiple of its budget a batch size was compared with
        base = next(r for r in frontier if r["batch_size"] == base_batch)
        for m in sorted({int(r.get("baseline_multiple") or 1) for r in frontier} - {1}):
            compared = next(r for r in frontier if int(r.get("baseline_multiple") or 1) == m)
            factor = _finite(base.get("baseline_lr_factor"), 1.0)
            steps = m * int(base["budget_steps"])
            levels.append(
                (base, steps, factor, compared["baseline_accuracy"], f"{base_batch}@{m}x")
            )
    for row, steps, factor, value, label in levels:
        batch = row["batch_size"]
        if steps is None or factor is None or value is None:
            continue
        confirm = finals[(finals["cell"] == row["best_cell"]) & (finals["phase"] == "confirm")]
        if confirm.empty:
            continue
        first = confirm.iloc[0]
        seeds = confirm["seed"]
        # a level the checks chose is judged by its fresh seeds (phase judge), where it ran:
        # the judged level, or the lr the equal-data line search chose
        fresh = finals[
            (finals["cell"] == row["best_cell"])
            & (finals["phase"] == "judge")
            & (finals["budget_steps"] == steps)
            & (finals["base_lr"] / float(first["base_lr"])).round(6).eq(round(factor, 6))
        ]
        if len(fresh):
            seeds = fresh["seed"]
        for seed in sorted(seeds.astype(int)):
            jobs.append(
                {
                    "workload": spec.workload,
                    "extra": extra,
                    "batch": int(batch),
                    "lr": float(first["actual_lr"]) * factor,
                    "budget": f"steps:{int(steps)}",
                    "seed": seed,  # the run's own seed, as the study recorded it
                    "warmup": float(first["warmup_fraction"]),
                    "wd": float(first["weight_decay"]),
                    "optimizer": first["optimizer"],
                    "study_value": value,
                    "label": label,
                }
            )
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path)
    p.add_argument("--judged", action="store_true", help="the levels the main answer judged")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    jobs = jobs_of(args.study, args.judged)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_one, jobs))
    by_batch: dict[str, list] = {}
    for job, result in zip(jobs, results, strict=True):
        by_batch.setdefault(job["label"], []).append((job, result))
    for label, runs in by_batch.items():
        job = runs[0][0]
        mean = sum(r["final"] for _, r in runs) / len(runs)
        print(
            f"batch {label:>7} at {job['budget']} peak lr {job['lr']:.4g} seeds "
            f"{[j['seed'] for j, _ in runs]}: study {job['study_value']:.4f}, in-process "
            f"{mean:.4f} (difference {100 * (mean - job['study_value']):+.1f} pt)"
        )


if __name__ == "__main__":
    main()
