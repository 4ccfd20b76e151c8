"""Do steps to target follow the budget? (issue 20 item 1)

Trains a workload's batch sizes in this process (`trainables.loop.train`, no Ray) under a step
budget S and under 2S, at each given peak lr and seed, and reads the steps to the target the
way a study does (`tuner.analysis.steps.first_crossings`: the crossing interpolated between the
evaluations around it), and, for comparison, as the first evaluation at the target (what
studies read before: an evaluation interval is 1/20 of the budget, so it doubles with it).
Prints, per batch size, the earliest crossing over lrs and seeds under each budget (as a study
pools its runs) and the ratio 2S / S: within 20% means the measure does not follow the budget.

    python bench/budget_doubling.py mnist1d --batch-sizes 256,1024 --lrs 0.1,0.2 \\
        --steps 600 [--seeds 2] [--jobs 2] [-- --dataset mnist1d]
"""

from __future__ import annotations

import itertools
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inprocess_check import study_spec, sweep_arguments, trial_values  # noqa: E402


def run_one(job: dict) -> dict:
    """One run; its evaluations (steps, value, diverged)."""
    import torch

    torch.set_num_threads(1)
    from trainables.config import TrialConfig
    from trainables.loop import train

    spec = study_spec(job["workload"], job["extra"])
    budget = {"budget_unit": "steps", "budget_amount": float(job["steps"]), "min_steps": 0}
    values = trial_values(spec, job) | budget
    if job.get("budget_free") is not None:  # the study's steps-to-target arm
        values |= {"budget_free": True, "warmup_in_steps": job["budget_free"]}
    key = spec.study_metric.key
    curve: list[dict] = []
    train(
        TrialConfig.from_dict(values),
        report=lambda m, s: curve.append(
            {k: m.get(k) for k in ("optimizer_steps", key, "diverged")}
        ),
    )
    return {**job, "curve": curve}


def crossing(run: dict, target: float, metric) -> tuple[float, float]:
    """The study's crossing (interpolated) and the first evaluation at the target; inf if
    never reached."""
    import pandas as pd

    from tuner.analysis.steps import first_crossings

    rows = [
        {
            "trial_id": "t",
            "batch_size": run["batch"],
            "cell": "c",
            "scaling_rule": "none",
            "phase": "search",
            "optimizer_steps": point["optimizer_steps"],
            "examples_seen": point["optimizer_steps"] * run["batch"],
            metric.key: point[metric.key],
            "diverged": point["diverged"],
            "outcome": "completed",
        }
        for point in run["curve"]
    ]
    found = first_crossings(pd.DataFrame(rows), target, metric)
    if not len(found) or not math.isfinite(found["steps"].iloc[0]):
        return math.inf, math.inf
    return float(found["steps"].iloc[0]), float(found["first"].iloc[0])


def main() -> None:
    p, argv, extra = sweep_arguments(__doc__)
    p.add_argument("--steps", type=int, required=True, help="the shorter budget S")
    p.add_argument(
        "--budget-free",
        type=int,
        metavar="WARMUP_STEPS",
        help="run the study's steps-to-target arm (warmup in steps, constant lr, weight average)",
    )
    args = p.parse_args(argv)
    spec = study_spec(args.workload, extra)
    metric, target = spec.study_metric, spec.target
    jobs = [
        {
            "workload": args.workload,
            "extra": extra,
            "batch": int(batch),
            "lr": float(lr),
            "steps": steps,
            "seed": spec.seed + s,
            "warmup": args.warmup,
            "wd": args.wd,
            "optimizer": args.optimizer,
            "budget_free": args.budget_free,
        }
        for batch, steps, lr, s in itertools.product(
            args.batch_sizes.split(","),
            (args.steps, 2 * args.steps),
            args.lrs.split(","),
            range(args.seeds),
        )
    ]
    print(f"{args.workload} on {spec.dataset}: target {target:g}, {len(jobs)} runs", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run_one, jobs))
    table = {}
    for run in runs:
        interpolated, first = crossing(run, target, metric)
        table[(run["batch"], run["steps"], run["lr"], run["seed"])] = (interpolated, first)
        print(
            f"batch {run['batch']:>5} steps {run['steps']:>5} lr {run['lr']:<6g} seed "
            f"{run['seed']}: crossing {interpolated:7.1f}  first evaluation {first:7.1f}  final "
            f"{run['curve'][-1][metric.key]:.4f}",
            flush=True,
        )
    print("\nper batch size: the earliest crossing over lrs and seeds (as a study pools them)")
    for batch in sorted({k[0] for k in table}):
        parts = []
        for which, name in ((0, "interpolated"), (1, "first evaluation")):
            short, long = (
                min(v[which] for k, v in table.items() if k[0] == batch and k[1] == steps)
                for steps in (args.steps, 2 * args.steps)
            )
            ratio = long / short if math.isfinite(short) and math.isfinite(long) else math.nan
            parts.append(f"{name} {short:.0f} -> {long:.0f} (x{ratio:.2f})")
        print(f"batch {batch:>5}: " + ";  ".join(parts))


if __name__ == "__main__":
    main()
