"""What a branch study writes into its directory: `branch.md` (the report, its text from
`tuner.branch.report_text`), `branch.json` (the same as data), `branch_runs.csv` (one row per
branch run), `local_critical.png` and a TensorBoard run under `summary/` (the figure, the local
critical batch per checkpoint, the report as text). No Ray."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from tuner.analysis.accuracy import compare, estimate  # noqa: E402
from tuner.analysis.branch import (  # noqa: E402
    LocalCritical,
    batch_schedule,
    constant_batch,
    late_start_caution,
)
from tuner.analysis.cost import study_cost  # noqa: E402
from tuner.analysis.paired import per_example_matrix  # noqa: E402
from tuner.branch.plan import PROBE_FRACTION, BranchPlan  # noqa: E402
from tuner.branch.report_text import FIGURE, interval_text, render  # noqa: E402
from tuner.cluster.placement import where_trials_ran  # noqa: E402
from tuner.spec import StudySpec  # noqa: E402

REPORT, DATA, RUNS = "branch.md", "branch.json", "branch_runs.csv"


def plan_line(spec: StudySpec, plan: BranchPlan) -> str:
    ladder = ", ".join(f"{k * plan.base_batch}: {plan.window_steps(k)}" for k in plan.multipliers)
    lr = f"lr {spec.base_lr:g}" if spec.base_lr else "lr from a short search"
    return (
        f"branch study {spec.name}: {spec.what}, base run at batch {plan.base_batch} "
        f"({plan.base_steps} steps, {lr}), branches from {len(plan.fractions)} checkpoints "
        f"({', '.join(f'{f:.0%}' for f in plan.fractions)}) over {plan.window} examples "
        f"(steps by batch size: {ladder}), results in {spec.study_dir}"
    )


def _history(job) -> list[dict[str, Any]]:
    return json.loads(job.result["history"]) if "history" in job.result else []


def _record(job) -> dict[str, Any] | None:
    return json.loads(job.result["record"]) if "record" in job.result else None


def findings(spec: StudySpec, plan: BranchPlan, searcher) -> dict[str, Any]:
    """Everything the study found, as plain data (branch.json)."""
    metric = spec.study_metric
    measured = searcher.measured() if not searcher.failure else []
    base = next((j for j in searcher.jobs if j.kind == "base"), None)
    history = _history(base) if base else []
    at_step = {h["step"]: h for h in history}
    points = []
    for point in measured:
        step = plan.checkpoints[plan.fractions.index(point.checkpoint)]
        reference = point.rungs[0].estimate.mean
        start = at_step.get(step, {}).get("value", math.nan)
        points.append(
            {
                "checkpoint": point.checkpoint,
                "step": step,
                "examples": step * plan.base_batch,
                "value_at_checkpoint": start,
                # what k = 1 gained over the window: the ladder can only tell batch sizes
                # apart where this is well above the tolerance
                "window_gain": metric.sign * (reference - start),
                "tolerance": point.tolerance,
                "local_critical": point.batch,
                "low": point.low,
                "efficient": point.efficient,
                "high": point.high,
                "censored": point.censored,
                "note": point.note,
                "rungs": [
                    {
                        "batch": r.batch,
                        "multiplier": r.multiplier,
                        "candidate": r.candidate,
                        "lr": r.lr,
                        "value": r.estimate.mean,
                        "runs": r.estimate.n,
                        "drop": r.comparison.drop if r.comparison else None,
                        "drop_low": r.comparison.low if r.comparison else None,
                        "drop_high": r.comparison.high if r.comparison else None,
                        "status": r.comparison.status if r.comparison else "reference",
                        "paired": r.comparison.paired if r.comparison else None,
                    }
                    for r in point.rungs
                ],
            }
        )
    schedule = batch_schedule(measured, plan.base_batch) if measured else []
    table = searcher.cost_table()
    cost = study_cost(table, spec.gpus_per_worker, spec.cpus_per_worker)
    probes = [
        (j.payload["config"]["base_lr"], _record(j)) for j in searcher.jobs if j.kind == "probe"
    ]
    return {
        "workload": spec.workload,
        "dataset": spec.dataset,
        "metric": metric.key,
        "tolerance": spec.branch_tolerance or "half the k=1 gain",
        "failure": searcher.failure,
        "plan": dataclasses.asdict(plan),
        "base_lr": searcher.base_lr,
        "base_lr_from": "given" if spec.base_lr else "short search",
        "probes": [
            {
                "base_lr": lr,
                "value": r["value"] if r else None,
                "stopped_at_fraction": PROBE_FRACTION,
            }
            for lr, r in probes
        ],
        "base_run": _record(base) if base else None,
        "base_history": history,
        "points": points,
        "constant_batch": _constant(constant_batch(measured)),
        "schedule": [{"from": f, "batch": b} for f, b in schedule],
        "schedule_steps": schedule_steps(plan, schedule) if schedule else None,
        "verify": verify_result(spec, searcher, base),
        "winners": dict(Counter(r["candidate"] for p in points for r in p["rungs"][1:])),
        "cost": dataclasses.asdict(cost),
        "placement": where_trials_ran(table[table["node_id"].notna()]),
    }


def schedule_steps(plan: BranchPlan, schedule: list[tuple[float, int]]) -> int:
    """Optimizer steps of the base run's data under `schedule`."""
    bounds = [plan.checkpoints[plan.fractions.index(f)] if f > 0 else 0 for f, _ in schedule]
    bounds.append(plan.base_steps)
    return sum(
        (end - start) // (batch // plan.base_batch)
        for (_, batch), start, end in zip(schedule, bounds[:-1], bounds[1:], strict=True)
    )


def verify_result(spec: StudySpec, searcher, base) -> dict[str, Any] | None:
    """The schedule's run against the base run at the same data."""
    job = next((j for j in searcher.jobs if j.kind == "verify"), None)
    if job is None:
        return None
    mine, theirs = _record(job), _record(base)
    if mine is None or theirs is None:
        return {"error": True}
    per = [r["per_example"] for r in (theirs, mine)]
    matrices = [per_example_matrix([p]) if p else None for p in per]
    sides = [
        estimate([r["value"]], r["val_examples"], "confirmed", r["val_loss_sd"], m)
        for r, m in zip((theirs, mine), matrices, strict=True)
    ]
    c = compare(*sides, spec.branch_tolerance or spec.tolerance, metric=spec.study_metric)
    return {
        "value": mine["value"],
        "base_value": theirs["value"],
        "steps": mine["steps"],
        "base_steps": theirs["steps"],
        "drop": c.drop,
        "drop_high": c.high,
        "status": c.status,
        "history": _history(job),
    }


def figure(spec: StudySpec, plan: BranchPlan, data: dict[str, Any]) -> Figure:
    """The local critical batch size over training (and the base run's metric)."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    points = data["points"]
    if points:
        x = [100 * p["checkpoint"] for p in points]
        y = np.array([p["local_critical"] for p in points], dtype=float)
        low = y - np.array([p["low"] for p in points])
        high = np.array([p["high"] for p in points]) - y
        ax.errorbar(x, y, yerr=[low, high], fmt="o-", capsize=4, label="local critical batch")
        for p, xi in zip(points, x, strict=True):
            if p["censored"]:
                ax.annotate("at least", (xi, p["high"]), textcoords="offset points", xytext=(4, 4))
    if data["schedule"]:
        steps = [(100 * s["from"], s["batch"]) for s in data["schedule"]] + [(100, 0)]
        xs = [s for s, _ in steps]
        ys = [b for _, b in steps[:-1]] + [steps[-2][1]]
        ax.step(xs, ys, where="post", color="0.5", linestyle="--", label="suggested schedule")
    ax.set_yscale("log", base=2)
    ladder = [k * plan.base_batch for k in plan.multipliers]
    ax.set_yticks(ladder, [str(b) for b in ladder])
    ax.minorticks_off()
    ax.set_xlabel("base run's progress (% of its budget)")
    ax.set_ylabel("batch size")
    ax.set_xlim(0, 100)
    ax.set_title(f"Local critical batch size over training ({spec.workload}, {spec.dataset})")
    ax.legend(loc="upper left")
    return fig


def write_study(spec: StudySpec, plan: BranchPlan, searcher) -> Path:
    """Write every output into the study directory; returns the report's path."""
    folder = spec.study_dir
    folder.mkdir(parents=True, exist_ok=True)
    data = findings(spec, plan, searcher)
    (folder / DATA).write_text(json.dumps(data, indent=1, default=_plain))
    runs = pd.DataFrame([dataclasses.asdict(r) for r in searcher.all_runs()])
    runs.drop(columns=["per_example"], errors="ignore").to_csv(folder / RUNS, index=False)
    fig = figure(spec, plan, data)
    fig.savefig(folder / FIGURE, dpi=110)
    text = render(spec, plan, data)
    (folder / REPORT).write_text(text)
    tensorboard(folder / "summary", data, folder / FIGURE, text)
    return folder / REPORT


def rewrite(study_dir: Path, spec: StudySpec, tensorboard_too: bool = True) -> Path:
    """`python -m tuner.report` on a branch study: branch.md, the figure and the TensorBoard
    run written again from what the study measured (branch.json), at this code's rendering.
    `NotFinished` where the study has not written branch.json (running, or interrupted)."""
    found = study_dir / DATA
    if not found.is_file():
        raise NotFinished(
            f"{study_dir} is a branch study with no {DATA} yet: it is running, or was "
            f"interrupted (continue it: python -m tuner.search --resume --name {spec.name} and "
            f"its --storage)"
        )
    data = json.loads(found.read_text())
    plan = BranchPlan(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()}
    )
    fig = figure(spec, plan, data)
    fig.savefig(study_dir / FIGURE, dpi=110)
    text = render(spec, plan, data)
    (study_dir / REPORT).write_text(text)
    if tensorboard_too:  # in place of the run's, not beside it (TensorBoard would show both)
        for old in (study_dir / "summary").glob("events.out.tfevents.*"):
            old.unlink()
        tensorboard(study_dir / "summary", data, study_dir / FIGURE, text)
    return study_dir / REPORT


class NotFinished(Exception):
    """A branch study's report asked for before the study wrote what it measured."""


def tensorboard(where: Path, data: dict[str, Any], figure_path: Path, text: str) -> None:
    """The local critical batch per checkpoint (x = progress in %), the figure, the report."""
    with SummaryWriter(str(where)) as writer:
        for p in data["points"]:
            step = round(100 * p["checkpoint"])
            writer.add_scalar("branch/local_critical", p["local_critical"], step)
            writer.add_scalar("branch/local_critical_low", p["low"], step)
            writer.add_scalar("branch/local_critical_high", p["high"], step)
        writer.add_scalar("branch/device_hours", data["cost"]["device_hours"], 0)
        image = np.asarray(Image.open(figure_path).convert("RGB"))
        writer.add_image("map/local_critical", image, 0, dataformats="HWC")
        writer.add_text("report", text, 0)


def summary(spec: StudySpec, plan: BranchPlan, searcher) -> list[str]:
    """The lines the CLI prints at the end."""
    if searcher.failure:
        return [f"error: {searcher.failure}"]
    measured = searcher.measured()
    lines = [_point_line(point) for point in measured]
    first = constant_batch(measured)
    if first is not None:
        lines.append(
            f"for a constant batch size: about {first.batch} "
            f"({interval_text(first.low, first.high, first.censored)}),"
            f" the local critical batch at {first.checkpoint:.0%}"
        )
        caution = late_start_caution(first)
        if caution:
            lines.append(f"caution: {caution}")
    return lines


def _constant(point: LocalCritical | None) -> dict[str, Any] | None:
    if point is None:
        return None
    return {
        "checkpoint": point.checkpoint,
        "batch": point.batch,
        "low": point.low,
        "high": point.high,
        "censored": point.censored,
        "caution": late_start_caution(point),
    }


def _point_line(point: LocalCritical) -> str:
    return (
        f"at {point.checkpoint:.0%} of the base run: local critical batch {point.batch} "
        f"({interval_text(point.low, point.high, point.censored)})"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)
