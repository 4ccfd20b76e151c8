"""The verdict's lines on steps to target and the critical batch size (`tuner.report.verdict`
opens the report with them): the pooled steps per batch size, the bounds (never reached: lower;
past the target at the first evaluation: upper), the fit, its interval and the regimes."""

from __future__ import annotations

import math

import pandas as pd

from tuner.analysis.frontier import DegradationMap
from tuner.analysis.steps import BUDGET_FREE
from tuner.report.format import batch_list, finite, num, runs, span, value_text


def steps_measure(m: DegradationMap) -> str:
    """How the study measured steps to target (a clause: what a batch size's steps are)."""
    free = m.trials[m.trials["phase"] == BUDGET_FREE] if "phase" in m.trials else m.trials
    if not len(free) or "steps_measure" not in m.frontier:
        return "the earliest crossing of any run of the batch size"
    warmup = pd.to_numeric(free.get("warmup_steps", pd.Series(dtype=float)), errors="coerce")
    warmup = warmup.dropna()
    ramp = f"after a {int(warmup.max())}-step warmup " if len(warmup) and warmup.max() > 0 else ""
    return (
        "the earliest crossing of the budget-free runs of the batch size's best configuration: "
        f"its lr held constant {ramp}and judged on a moving average of the weights, so that "
        "nothing in them depends on the budget, line-searched for the fewest steps, an lr "
        "where a seed missed the target left out"
    )


def critical_verdict(m: DegradationMap) -> list[str]:
    """Steps-to-target, the critical batch size, its fit quality and the regimes."""
    frontier = m.frontier
    reached = frontier[frontier["steps"].notna()]
    censored = frontier[frontier["steps"].isna() & frontier["censored_at"].notna()]
    at_most = frontier["steps_at_most"] if "steps_at_most" in frontier else frontier["steps"] * 0
    at_once = frontier[frontier["steps"].isna() & at_most.notna()]
    metric = m.metric
    target = value_text(metric, m.target)
    lines = []
    if len(reached) or len(at_once):
        shown = pd.concat([reached, at_once]).sort_values("batch_size")
        points = ", ".join(
            f"{int(r.batch_size)}: before step {int(r.steps_at_most)}"
            if not finite(r.steps)
            else f"{int(r.batch_size)}: {round(r.steps)}"
            + (
                f" ({int(r.steps_before)}-{int(r.steps_first)})"
                if finite(r.steps_before) and finite(r.steps_first)
                else ""
            )
            for r in shown.itertuples(index=False)
        )
        lines.append(
            f"Steps to reach {target} {metric.label}: {points} ({steps_measure(m)}; interpolated "
            f"between the evaluations around it, which are in brackets)."
        )
    if len(at_once):
        lines.append(
            "Past the target at their first evaluation, so their crossing is only known to lie "
            "before it, entered in the fit as upper bounds (evaluate more often with "
            "--eval-every, or set a harder --target, to resolve them): "
            + batch_list(at_once["batch_size"])
            + "."
        )
    if len(censored):
        lines.append(
            "Never reached the target, entered in the fit as lower bounds: "
            + ", ".join(
                f"batch {int(r.batch_size)} (> {int(r.censored_at)} steps)"
                for r in censored.itertuples(index=False)
            )
            + "."
        )
    if reached.empty and at_once.empty:
        return lines or [f"No trial ran long enough to be measured against {target} yet."]
    if m.fit is None:
        known = (
            f"only batch {batch_list(reached['batch_size'])} did"
            if len(reached)
            else "none did (only before a first evaluation)"
        )
        lines.append(
            f"The critical batch size needs at least 2 batch sizes that reach {target} at a "
            f"known step; {known}."
        )
        return lines
    quality = (
        f"R^2 {num(m.fit.r2, 2)}, largest residual x{num(math.exp(m.fit.max_abs_residual), 2)}"
    )
    low, high = m.b_crit_ci
    at_least = f"; 95% CI from {num(low)}" if finite(low) and math.isinf(m.fit.b_crit) else ""
    if math.isinf(m.fit.b_crit):
        lines.append(
            f"Steps fall as fast as 1/B across the batch sizes measured ({quality}{at_least}): "
            f"perfect scaling throughout, so the critical batch size is beyond batch "
            f"{int(reached['batch_size'].max())}."
        )
        return lines
    if m.fit.points < 3:
        ci = "2 batch sizes only: the curve passes through both exactly, so indicative, no CI"
    elif not finite(low):
        ci = "no 95% CI: too few resamples could be fitted"
    else:
        ci = f"95% CI {num(low)}-{num(high) if finite(high) else 'unbounded'}"
        if m.b_crit_ci_stretched:
            ci += ", reaching out to the estimate, which lay outside the resamples' 95%"
    regimes = runs(
        [
            (int(b), r)
            for b, r in zip(frontier["batch_size"], frontier["regime"], strict=True)
            if isinstance(r, str)
        ]
    )
    regime_text = ", ".join(f"{label} at batch {span(batches)}" for label, batches in regimes)
    fit_text = f"fit of S(B) = S_min (1 + B_crit/B), {quality}"
    if m.b_crit_at_least is not None:
        lines.append(
            f"Critical batch size beyond the grid: at least {num(m.b_crit_at_least)} (the "
            f"interval's low end, above the largest batch size {int(frontier['batch_size'].max())};"
            f" the fit's {num(m.fit.b_crit)} is an extrapolation; {ci}; {fit_text}): "
            f"{regime_text} (regimes at B_crit = {num(m.b_crit_at_least)}, the least the data "
            f"allow)."
        )
        return lines
    lines.append(
        f"Critical batch size about {num(m.fit.b_crit)} ({ci}; {fit_text}): {regime_text}."
    )
    return lines
