"""A plain in-process check of a study's answer: the study's own model, data and trial settings,
trained by `trainables.loop.train` in this process (no Ray, no search), over a small lr sweep.

For each batch size, peak lr and step budget it prints the final value of the study metric,
the best value seen and the first step at which the target was reached; then, per batch size
and budget, the best lr's value. This is what a study's verdict is compared with: a batch size
the study calls degraded must not reach the baseline's value here with more steps or another lr.

    python bench/inprocess_check.py mnist1d --batch-sizes 16,64,256,1024 \\
        --lrs 0.05,0.1,0.2,0.4 --steps 300,600 [--warmup 0.1] [--seeds 1] [--jobs 2]

`--lrs` are peak lrs (the scaling rule is `none`: each lr is used as given); `--steps` are
budgets in optimizer steps (`epochs:E` is also accepted: E epochs at every batch size, with the
workload's step floor; `-- --min-steps 0` drops it: equal data at every batch size, as a
study's equal-data answer is measured). Any other study option (--dataset, --weight-decay is
not one: use `--wd`) is given after `--`, e.g. `-- --dataset synthetic`. Runs are spread over
`--jobs` processes with one torch thread each (the study's own trials also run one per CPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def study_spec(workload: str, extra: list[str]):
    """The spec a `python -m tuner.search WORKLOAD ...` study would run (nothing written)."""
    from tuner import options as opts
    from tuner import resolve

    args = opts.build_parser("").parse_args([workload, "--storage", "/tmp/unused", *extra])
    opts.check_options(args)
    return resolve.build_spec(args, gpus_available=False)


def trial_values(spec, job: dict) -> dict:
    """The trial config a study would give `job`'s batch size, peak lr (as given: rule
    `none`), weight decay, warmup and seed (the budget is the caller's)."""
    return spec.trial_config(
        {
            "batch_size": job["batch"],
            "scaling_rule": "none",
            "optimizer": job["optimizer"],
            "base_lr": job["lr"],
            "weight_decay": job["wd"],
            "warmup_fraction": job["warmup"],
            "seed": job["seed"],
        }
    )


def run_one(job: dict) -> dict:
    """One training run in this process; returns its curve's summary."""
    import torch

    torch.set_num_threads(1)
    from trainables.config import TrialConfig
    from trainables.loop import train

    spec = study_spec(job["workload"], job["extra"])
    values = trial_values(spec, job)
    unit, _, amount = job["budget"].partition(":")
    values |= {"budget_unit": unit, "budget_amount": float(amount)}
    if unit == "steps":
        values["min_steps"] = 0
    config = TrialConfig.from_dict(values)
    metric = spec.study_metric
    curve: list[tuple[int, float]] = []
    ends = {}

    def report(metrics: dict, state: dict | None) -> None:
        curve.append((metrics["optimizer_steps"], metrics[metric.key]))
        ends.update(diverged=metrics["diverged"], budget_steps=metrics["budget_steps"])

    train(config, report=report)
    reached = [s for s, v in curve if metric.reached(v, spec.target)]
    values_seen = [v for _, v in curve if math.isfinite(v)]
    best = (max if metric.mode == "max" else min)(values_seen) if values_seen else math.nan
    return {
        **{k: job[k] for k in ("batch", "lr", "budget", "seed", "warmup", "wd")},
        "steps": ends["budget_steps"],
        "final": curve[-1][1] if curve else math.nan,
        "best": best,
        "to_target": reached[0] if reached else None,
        "diverged": ends["diverged"],
    }


def sweep_arguments(doc: str) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The options an in-process sweep takes (all but its budgets, `--steps`), the command
    line before `--`, and the study options after it."""
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("workload")
    p.add_argument("--batch-sizes", required=True)
    p.add_argument("--lrs", required=True, help="peak lrs, comma-separated")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the budget")
    p.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    return p, argv, extra


def main() -> None:
    p, argv, extra = sweep_arguments(__doc__)
    p.add_argument("--steps", default="", help="budgets: 300,600 (steps) or epochs:10")
    p.add_argument("--json", help="also write every run's summary here")
    args = p.parse_args(argv)
    spec = study_spec(args.workload, extra)
    budgets = [b if ":" in b else f"steps:{b}" for b in args.steps.split(",") if b] or [spec.budget]
    jobs = [
        {
            "workload": args.workload,
            # the workload's step floor, unless the steps are the budget or `-- --min-steps`
            # says otherwise (`--min-steps 0`: equal data at every batch size)
            "extra": extra
            + (
                []
                if b.startswith("steps:") or "--min-steps" in extra
                else ["--min-steps", str(spec.min_steps)]
            ),
            "batch": int(batch),
            "lr": float(lr),
            "budget": b,
            "seed": spec.seed + s,
            "warmup": args.warmup,
            "wd": args.wd,
            "optimizer": args.optimizer,
        }
        for batch, b, lr, s in itertools.product(
            args.batch_sizes.split(","), budgets, args.lrs.split(","), range(args.seeds)
        )
    ]
    print(
        f"{args.workload} on {spec.dataset}: target {spec.target:g}, {len(jobs)} runs, "
        f"warmup {args.warmup:g}, weight decay {args.wd:g}",
        flush=True,
    )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = []
        for r in pool.map(run_one, jobs):
            results.append(r)
            print(
                f"batch {r['batch']:>5} {r['budget']:>10} ({r['steps']} steps) lr {r['lr']:<6g} "
                f"seed {r['seed']}: final {r['final']:.4f} best {r['best']:.4f} "
                f"target at {r['to_target']}{' DIVERGED' if r['diverged'] else ''}",
                flush=True,
            )
    print("\nbest lr per batch size and budget (mean over seeds of the final value):")
    mode_max = spec.study_metric.mode == "max"
    for batch, b in itertools.product(args.batch_sizes.split(","), budgets):
        rows = [r for r in results if r["batch"] == int(batch) and r["budget"] == b]
        by_lr = {}
        for r in rows:
            by_lr.setdefault(r["lr"], []).append(r["final"])
        means = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
        lr = (max if mode_max else min)(means, key=lambda k: means[k])
        print(f"batch {batch:>5} {b:>10}: best lr {lr:g} -> {means[lr]:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
