"""A whole study at cluster scale on this machine: many slots, a stand-in for training.

    python bench/cluster_scale.py [--slots 32] [--speculate N] [--json PATH] [-- study options...]
    python bench/cluster_scale.py --slots 16 --bookkeeping 2000 --json out.json

A local Ray declares `--slots` logical CPUs and runs one study through the product's own Tune
experiment (`tuner.study.experiment.make_tuner`: its searcher, ASHA, Optuna storage, state
saving, callbacks), then writes its trial table and report as a study does. Only the trial
function is a stand-in: it sleeps its step time and reports a curve from a known model, so the
study's verdict and critical batch can be checked against the truth:

- steps to reach a fixed quality at batch B: S(B) = S_MIN (1 + B_CRIT / B) (McCandlish et al.'s
  S = S_min (1 + B_noise / B), `--critical` sets B_CRIT);
- accuracy after s steps: A0 + (A_MAX - A0) (1 - exp(-3 q s / S(B))), with q the lr's quality,
  exp(-ln(lr / lr_opt(B))^2 / (2 * 0.8^2)), lr_opt growing linearly with B up to B_CRIT, flat
  beyond; plus a seed's noise (sd NOISE);
- a run whose lr is above DIVERGE x lr_opt(B) diverges at its first evaluation (chance level);
- a step takes STEP_S (x B / 256 above 256: compute-bound), scaled by `--step-s`.

Prints one JSON object (and writes it to `--json`): `wall_s`, `critical_path_s` (a lower bound:
the busiest slot's share of the work, or the longest chain of phases a batch size must run one
after another: search, confirmation, each check level; whichever is longer), `utilisation`
(trial-seconds over slot-seconds of the wall time), `trials`, `driver_cpu_s_per_trial` (this
process's CPU, threads included, over the experiment), `bytes_per_trial` (the study directory's
size over trials), and the truth check: per batch size the study's judged accuracy against the
model's at the same steps, and the critical batch estimated against B_CRIT.

`--bookkeeping N`: Ray's release test "bookkeeping overhead" scaled to this machine: N trials of
one second each (one batch size, no confirmations, checks or rule test); its minimum wall time
is N / slots seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

A0, A_MAX, NOISE, DIVERGE = 0.1, 0.99, 0.002, 8.0
S_MIN, STEP_S, LR_REF = 20, 0.02, 0.05

DEFAULT_STUDY = [
    "simple_cnn", "--dataset", "digits", "--batch-sizes", "8,16,32,64,128,256,512",
    "--budget", "epochs:2", "--min-steps", "0", "--rules", "linear,sqrt", "--trials", "56",
    "--seeds", "2", "--target", "0.95", "--eval-every", "10",
]  # fmt: skip
BOOKKEEPING = [
    "simple_cnn", "--dataset", "digits", "--batch-sizes", "8", "--budget", "steps:10",
    "--min-steps", "0", "--seeds", "0", "--no-checks", "--no-rule-test", "--eval-every", "10",
    "--no-report",
]  # fmt: skip
EXAMPLES = 1437  # digits' training examples: epochs become steps as in the real study


def lr_opt(batch: int, reference: int, critical: int) -> float:
    return LR_REF * min(batch, critical) / reference


def truth_accuracy(steps: float, batch: int, lr: float, reference: int, critical: int) -> float:
    """The model's accuracy after `steps` at `batch` with peak lr `lr` (no noise)."""
    quality = math.exp(-(math.log(lr / lr_opt(batch, reference, critical)) ** 2) / (2 * 0.8**2))
    needed = S_MIN * (1 + critical / batch)
    return A0 + (A_MAX - A0) * (1 - math.exp(-3 * quality * steps / needed))


def standin(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """The trial: sleeps its steps, reports the model's curve with a trial's metric names."""
    from ray import tune

    from trainables.budget import evaluation_steps
    from trainables.budget_free import evaluation_grid

    batch, reference = int(params["batch_size"]), setup["reference"]
    factor = {"none": 1.0, "linear": batch / reference, "sqrt": math.sqrt(batch / reference)}
    lr = float(params["base_lr"]) * factor[params["scaling_rule"]]
    total = int(params.get("budget_steps") or 0) or setup["total_steps"](batch)
    evals = evaluation_steps(total, setup["eval_every"] or max(1, round(total / 20)))
    free = bool(params.get("budget_free"))  # a budget-free run: its grid, ends at the target
    if free:
        evals = evaluation_grid(total)
    step_s = setup["step_s"] * max(1.0, batch / 256)
    noise = random.Random(hash((params.get("seed"), params["base_lr"]))).gauss(0, NOISE)
    unstable = lr > DIVERGE * lr_opt(batch, reference, setup["critical"])
    done = 0
    for step in evals:
        time.sleep((step - done) * step_s)
        done = step
        acc = A0 if unstable else truth_accuracy(step, batch, lr, reference, setup["critical"])
        acc = min(1.0, acc + (0 if unstable else noise))
        reached = free and acc >= setup["target"]
        tune.report(
            {
                "optimizer_steps": step,
                "examples_seen": step * batch,
                "epoch": step * batch / EXAMPLES,
                "progress": step / total,
                "train_loss": 1 - acc,
                "val_acc": acc,
                "val_loss": 1 - acc,
                "lr": lr,
                "samples_per_second": batch / step_s,
                "tokens_per_second": batch / step_s,
                "window_time_s": step_s,
                "first_step_s": step_s,
                "diverged": unstable,
                "reached_target": reached,
                "resumed_at_step": 0,
                "budget_steps": total,
                "warmup_steps": 0,
                "peak_lr": lr,
                "global_batch": batch,
                "per_worker_batch": batch,
                "accumulation_steps": 1,
                "micro_batch": batch,
                "tokens_per_example": 1,
                "workers": 1,
            }
        )
        if unstable or reached:
            return


def critical_path(last: Any, busy: dict[str, float], slots: int) -> float:
    """A lower bound on the wall time: the work spread over every slot, or the longest chain of
    phases one batch size runs one after another (its search, its confirmation, each check
    level), whichever is longer. `last`: each trial's last row; `busy`: its seconds."""
    chains = []
    for _, cell in last.groupby("cell"):
        levels = cell.groupby(["phase", "budget_steps"])["trial_id"].apply(list)
        chains.append(sum(max(busy[t] for t in ids) for ids in levels))
    return max(sum(busy.values()) / slots, max(chains, default=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--critical", type=int, default=128, help="the truth's B_CRIT")
    parser.add_argument("--step-s", type=float, default=STEP_S)
    parser.add_argument("--bookkeeping", type=int, default=0, help="N one-second trials")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--speculate", type=int, help="the study's --speculate (default: its own, by its slots)"
    )
    parser.add_argument("study", nargs=argparse.REMAINDER, help="study options after --")
    args = parser.parse_args()

    import ray
    from ray import tune

    from tuner import options as opts
    from tuner import resolve
    from tuner.cluster.connect import local_ray_kwargs
    from tuner.spec import save_spec
    from tuner.store.table import collect_trials, read_results, write_trial_table
    from tuner.study import experiment

    storage = tempfile.mkdtemp(prefix="cluster-scale-")
    study = [a for a in args.study if a != "--"] or DEFAULT_STUDY
    if args.speculate is not None:
        study = [*study, "--speculate", str(args.speculate)]
    step_s = args.step_s
    if args.bookkeeping:  # one-second trials: 10 steps of 0.1 s, one evaluation at the end
        study = [*BOOKKEEPING, "--trials", str(args.bookkeeping)]
        step_s = 0.1
    cli = opts.build_parser().parse_args([*study, "--storage", storage, "--name", "scale"])
    spec = resolve.build_spec(cli, gpus_available=False)
    budget = spec.budget_spec()

    def total_steps(batch: int) -> int:
        return budget.steps(EXAMPLES, batch)

    setup = {
        "reference": spec.reference,
        "critical": args.critical,
        "step_s": step_s,
        "eval_every": spec.eval_every,
        "total_steps": total_steps,
        "target": spec.target,
    }
    ray.init(**local_ray_kwargs(num_cpus=args.slots, log_to_driver=False, logging_level="ERROR"))
    save_spec(spec)
    fn = tune.with_resources(tune.with_parameters(standin, setup=setup), {"CPU": 1})
    tuner = experiment.make_tuner(spec, trainable_=fn)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    tuner.fit()
    wall = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ray.shutdown()
    write_trial_table(spec.study_dir)
    if not args.bookkeeping:
        from tuner.report.write import write_report

        write_report(spec.study_dir)
    table = collect_trials(spec.study_dir)
    trials = table["trial_id"].nunique()
    size = sum(f.stat().st_size for f in Path(spec.study_dir).rglob("*") if f.is_file())
    last = table.sort_values("optimizer_steps").groupby("trial_id").tail(1)
    results = read_results(Path(spec.study_dir))
    busy = {t: max(r.get("time_total_s", 0.0) for r in rows) for t, rows in results.items()}
    out: dict[str, Any] = {
        "slots": args.slots,
        "wall_s": round(wall, 1),
        "critical_path_s": round(critical_path(last, busy, args.slots), 1),
        "utilisation": round(sum(busy.values()) / (args.slots * wall), 3),
        "trials": int(trials),
        "driver_cpu_s_per_trial": round(
            (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / trials, 3
        ),
        "bytes_per_trial": int(size / trials),
        "study_dir": str(spec.study_dir),
    }
    if args.bookkeeping:
        out["minimum_s"] = args.bookkeeping / args.slots
    else:
        out["truth"] = truth_check(spec, args.critical)
        out |= predicted(spec, total_steps, step_s, args.slots, last, busy)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def predicted(
    spec: Any, total_steps: Any, step_s: float, slots: int, last: Any, busy: dict[str, float]
) -> dict[str, Any]:
    """What `--dry-run --slots` predicts for this study (tuner.analysis.schedule: its planned
    jobs, a trial's seconds from the stand-in's step time plus the trials' measured mean
    start-up), and the part of the measured work it does not plan (the adaptive checks)."""
    from tuner.analysis.schedule import simulate, study_jobs

    rows = last.set_index("trial_id")
    slept = {
        t: rows.at[t, "optimizer_steps"] * step_s * max(1.0, rows.at[t, "batch_size"] / 256)
        for t in busy
        if t in rows.index
    }
    overhead = sum(busy[t] - slept[t] for t in slept) / max(1, len(slept))

    def seconds(batch: int, n: int) -> float:
        return n * step_s * max(1.0, batch / 256) + overhead

    from tuner.dry_run import check_caps

    found = simulate(study_jobs(spec, total_steps, seconds), slots)
    caps = check_caps(spec, EXAMPLES)
    worst = simulate(study_jobs(spec, total_steps, seconds, caps.__getitem__), slots)
    planned = last["phase"].isin(["search", "confirm", "rule"]).sum()
    return {
        "predicted_wall_s": round(found.wall_s, 1),
        "predicted_critical_path_s": round(found.critical_path_s, 1),
        # every batch size through every round of the checks up to the cap: the most
        "predicted_worst_wall_s": round(worst.wall_s, 1),
        "trial_overhead_s": round(overhead, 2),
        "unplanned_trials": int(len(last) - planned),  # checks, equal data, fresh seeds
    }


def truth_check(spec: Any, critical: int) -> dict[str, Any]:
    """The study's map (frontier.json) against the model: per batch size its judged accuracy
    against the model's at the same steps and lr, and at the best lr; the verdict's 'holds up
    to' against the model's at the same steps; the critical batch against B_CRIT."""
    path = Path(spec.study_dir) / "frontier.json"
    if not path.is_file():
        return {"error": "no frontier.json: the study wrote no report"}
    found = json.loads(path.read_text())
    tolerance = float(found["tolerance"])
    rows, holds = {}, None
    best: dict[int, float] = {}
    for row in found["frontier"]:
        batch, steps = int(row["batch_size"]), row.get("judged_steps") or row.get("budget_steps")
        if steps is None or row.get("accuracy") is None:
            continue
        best[batch] = truth_accuracy(
            steps, batch, lr_opt(batch, spec.reference, critical), spec.reference, critical
        )
        lr = row.get("best_actual_lr")
        rows[batch] = {
            "steps": steps,
            "status": row.get("status"),
            "study": round(float(row["accuracy"]), 4),
            "truth_at_its_lr": round(
                truth_accuracy(steps, batch, float(lr), spec.reference, critical), 4
            )
            if lr
            else None,
            "truth_at_best_lr": round(best[batch], 4),
        }
    base = min(best, default=None)
    if base is not None:
        holding = [b for b in sorted(best) if best[b] >= best[base] - tolerance]
        holds = max((b for b in holding if all(c in holding for c in best if c <= b)), default=None)
    return {
        "batch": rows,
        "holds_up_to": {"study": found.get("holds_up_to"), "truth_at_its_steps": holds},
        "critical_batch": {
            "study": found.get("critical_batch", {}).get("b_crit"),
            "ci": [
                found.get("critical_batch", {}).get("ci_low"),
                found.get("critical_batch", {}).get("ci_high"),
            ],
            "truth": critical,
        },
    }


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
