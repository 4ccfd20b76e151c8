"""What a branch study writes into its directory: `branch.md` (the report), `branch.json` (the
same as data), `branch_runs.csv` (one row per branch run), `local_critical.png` and a
TensorBoard run under `summary/` (the figure, the local critical batch per checkpoint, the
report as text). No Ray."""

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
from tuner.branch.plan import MIN_LARGEST_STEPS, PROBE_FRACTION, BranchPlan  # noqa: E402
from tuner.report.format import diff_text, duration, markdown_table, value_text  # noqa: E402
from tuner.spec import StudySpec  # noqa: E402

REPORT, DATA, RUNS, FIGURE = "branch.md", "branch.json", "branch_runs.csv", "local_critical.png"


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
    cost = study_cost(searcher.cost_table(), spec.gpus_per_worker, spec.cpus_per_worker)
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


def render(spec: StudySpec, plan: BranchPlan, data: dict[str, Any]) -> str:
    """branch.md."""
    metric = spec.study_metric
    if spec.branch_tolerance:
        tol = f"a fixed tolerance of {diff_text(metric, spec.branch_tolerance)} (--tolerance)"
    else:
        tol = (
            "half of what k=1 gains over the window at that checkpoint (a rung within it "
            "needs at most about twice k=1's examples: McCandlish et al.'s critical batch "
            "size; --tolerance sets a fixed one)"
        )
    lines = [f"# Branch study {spec.name}: {spec.what}", ""]
    if data["failure"]:
        lines += [f"**The study could not finish: {data['failure']}.**", ""]
    base = data["base_run"] or {}
    lr_from = (
        "given (--base-lr)"
        if data["base_lr_from"] == "given"
        else "the best of a short search: "
        + ", ".join(
            f"{p['base_lr']:.3g} -> {value_text(metric, p['value'])}" for p in data["probes"]
        )
        + f" at {PROBE_FRACTION:.0%} of the budget"
    )
    lines += [
        "## The measurement",
        "",
        f"- Base run: batch {plan.base_batch}, {plan.base_steps} steps ({spec.budget_spec()}), "
        f"base lr {data['base_lr']:.3g} at batch {spec.reference} ({lr_from}); it ends at "
        f"{value_text(metric, base.get('value'))}.",
        f"- Branches from {len(plan.fractions)} checkpoints ("
        + ", ".join(f"{f:.0%}" for f in plan.fractions)
        + f") at batch sizes {', '.join(str(k * plan.base_batch) for k in plan.multipliers)} "
        f"(as far up as each ladder needed), each over the same {plan.window} examples "
        "("
        + ", ".join(
            f"{k * plan.base_batch}: {plan.window_steps(k)} steps" for k in plan.multipliers
        )
        + ").",
        "- A branch's end is the mean of its evaluations over the window's second half "
        "(value and every validation example's: at a constant lr a small batch's weights "
        "keep moving with its gradient noise, which one evaluation would catch).",
        f"- Each rung tries the lr candidates once (the base run's lr at the checkpoint scaled "
        f"by {', '.join(plan.rules)}"
        + (", and half and twice that" if len(plan.rules) == 1 else "")
        + f"), then the best with {plan.seeds} fresh seed(s); a rung is compared with the best "
        f"smaller rung at equal examples, on the whole validation split, within {tol}, "
        f"with one-sided 95% bounds from the seeds and the shared validation examples.",
        "",
    ]
    if plan.largest < spec.batch_sizes[-1]:
        lines.append(
            f"- The ladder stops at batch {plan.largest}, below the grid's "
            f"{spec.batch_sizes[-1]}: a larger batch would take fewer than "
            f"{MIN_LARGEST_STEPS} steps in the window (a longer --window reaches further, "
            f"at the cost of a window over which progress is less linear in examples)."
        )
    lines += [
        "",
        "## Local critical batch size",
        "",
    ]
    rows = pd.DataFrame(
        [
            {
                **p,
                "where": f"{p['checkpoint']:.0%} (step {p['step']})",
                "interval": interval_text(p["low"], p["high"], p["censored"]),
                "gain": p["window_gain"],
                "ladder": ", ".join(f"{r['batch']}: {r['status']}" for r in p["rungs"][1:])
                + (f" ({p['note']})" if p["note"] else ""),
            }
            for p in data["points"]
        ]
    )
    lines.append(
        markdown_table(
            rows,
            [
                ("where", "checkpoint", str),
                ("value_at_checkpoint", "base run there", lambda v: value_text(metric, v)),
                ("gain", "k=1 gain over the window", lambda v: diff_text(metric, v)),
                ("tolerance", "tolerance", lambda v: diff_text(metric, v)),
                ("local_critical", "local critical batch", str),
                ("interval", "interval", str),
                ("ladder", "rungs (vs the best smaller)", str),
            ],
        )
    )
    unjudged = [p for p in data["points"] if not math.isfinite(p["tolerance"])]
    if unjudged:
        lines += [
            "",
            "Where k=1 gained nothing over the window ("
            + ", ".join(f"{p['checkpoint']:.0%}" for p in unjudged)
            + "), there is no progress to share: not measured there.",
        ]
    short = [
        p
        for p in data["points"]
        if spec.branch_tolerance and not p["window_gain"] > 2 * spec.branch_tolerance
    ]
    if short:
        lines += [
            "",
            "Where k=1 gained less than twice the tolerance over the window ("
            + ", ".join(f"{p['checkpoint']:.0%}" for p in short)
            + "), the window is too short to tell batch sizes apart there: every rung "
            "holds because nothing moves. A longer --window would.",
        ]
    aim = data["constant_batch"]
    if aim:
        interval = interval_text(aim["low"], aim["high"], aim["censored"])
        lines += [
            "",
            f"For a constant batch size (what a grid study's critical batch size measures): "
            f"about {aim['batch']}, interval {interval}, the local "
            f"critical batch at the earliest checkpoint ({aim['checkpoint']:.0%}). A run at "
            "one batch size all through is held back at the start of training, where the local "
            "critical batch is smallest; the later checkpoints say how far a batch that grows "
            "with training can go (the schedule below)."
            + (f" Caution: {aim['caution']}." if aim.get("caution") else ""),
        ]
    lines += [
        "",
        "Interval: from the largest batch size shown to hold at every rung up to it "
        "to the one before the first shown degraded; '+': no rung was shown degraded.",
        "",
    ]
    lines += ["### Rungs", ""]
    rung_rows = pd.DataFrame(
        [{**r, "where": f"{p['checkpoint']:.0%}"} for p in data["points"] for r in p["rungs"]]
    )
    lines.append(
        markdown_table(
            rung_rows,
            [
                ("where", "checkpoint", str),
                ("batch", "batch", str),
                ("candidate", "lr that won", str),
                ("lr", "lr", lambda v: f"{v:.3g}"),
                ("value", metric.label, lambda v: value_text(metric, v)),
                ("drop", "drop", lambda v: diff_text(metric, v) if v is not None else "-"),
                (
                    "drop_high",
                    "drop at most",
                    lambda v: diff_text(metric, v) if v is not None else "-",
                ),
                ("status", "status", str),
            ],
        )
    )
    if data["winners"]:
        won = ", ".join(
            f"{label}: {n}" for label, n in sorted(data["winners"].items(), key=lambda x: -x[1])
        )
        lines += ["", f"Which lr won the rungs above k=1: {won}."]
    lines += ["", "## Suggested batch-size schedule", ""]
    if data["schedule"]:
        parts = [f"batch {s['batch']} from {s['from']:.0%}" for s in data["schedule"]]
        criterion = (
            "each rung within the --tolerance"
            if spec.branch_tolerance
            else "at least 90% of the progress k=1 makes"
        )
        lines.append(
            f"{'; '.join(parts)} (Merrill et al.'s batch-size warmup: from each checkpoint, "
            f"the largest doubling shown to lose almost nothing at equal data: "
            f"{criterion}, never shrinking): {data['schedule_steps']} steps "
            f"for the base run's data, against its {plan.base_steps}."
        )
    verify = data["verify"]
    verify_tol = diff_text(metric, spec.branch_tolerance or spec.tolerance)
    if verify and not verify.get("error"):
        verdict = {
            "holds": "keeps within the tolerance",
            "degraded": "falls short by more than the tolerance",
            "unresolved": "cannot be told within the tolerance",
            "no interval": "cannot be told: one run a side, so no interval",
        }[verify["status"]]
        high = verify["drop_high"]
        bound = f" (at most {diff_text(metric, high)})" if math.isfinite(high) else ""
        lines += [
            "",
            f"Verified (--verify-schedule): the schedule reaches "
            f"{value_text(metric, verify['value'])} in {verify['steps']} steps, the base run "
            f"{value_text(metric, verify['base_value'])} in {verify['base_steps']} on the same "
            f"data: drop {diff_text(metric, verify['drop'])}{bound}: it {verdict} "
            f"({verify_tol}).",
        ]
    elif verify:
        lines += ["", "The schedule's run failed."]
    cost = data["cost"]
    lines += [
        "",
        "## What it cost",
        "",
        f"{duration(cost['device_hours'])} of {cost['device']} time ({cost['device']}s x wall "
        f"time of each of its {cost['trials']} trials, start-up included) over "
        f"{duration(cost['wall_hours'])} of wall time: "
        + ", ".join(f"{p} {duration(h)}" for p, h in cost["by_phase"].items())
        + "; by batch size "
        + ", ".join(f"{b}: {duration(h)}" for b, h in cost["by_batch"].items())
        + ".",
        "",
        f"![local critical batch]({FIGURE})",
        "",
    ]
    return "\n".join(lines)


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


def interval_text(low: int, high: int, censored: bool) -> str:
    """'64-256', or '64-256+' where no rung was shown degraded (the high end is "at least")."""
    return f"{low}-{high}" + ("+" if censored else "")


def _point_line(point: LocalCritical) -> str:
    return (
        f"at {point.checkpoint:.0%} of the base run: local critical batch {point.batch} "
        f"({interval_text(point.low, point.high, point.censored)})"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)
