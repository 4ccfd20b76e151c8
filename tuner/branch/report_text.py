"""A branch study's report (`branch.md`) as text, from what the study measured (`branch.json`'s
data). No Ray, no files."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner.branch.plan import MIN_LARGEST_STEPS, PROBE_FRACTION, BranchPlan
from tuner.cluster.placement import where_text
from tuner.report.format import diff_text, duration, markdown_table, value_text
from tuner.spec import StudySpec

FIGURE = "local_critical.png"  # beside branch.md, which shows it


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
        "- Placement: "
        + where_text(
            spec.placement_strategy,
            spec.accelerator_type,
            spec.workers_per_trial,
            data.get("placement") or {},  # studies written before jobs reported it: none
        )
        + ".",
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


def interval_text(low: int, high: int, censored: bool) -> str:
    """'64-256', or '64-256+' where no rung was shown degraded (the high end is "at least")."""
    return f"{low}-{high}" + ("+" if censored else "")
