"""The report's critical-batch section and its JSON summary (`render` puts them in place)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tuner.analysis.critical import MAXIMAL_PARALLELISM_MIN, MIN_POINTS_FOR_CI, PERFECT_SCALING_MAX
from tuner.analysis.frontier import DegradationMap
from tuner.report.format import finite, num


def plain(value: Any) -> Any:
    """JSON-safe value: numpy scalars to Python, NaN / inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def critical_summary(m: DegradationMap) -> dict[str, Any]:
    """The critical-batch fit as plain values, with a status saying what it means."""
    thresholds = {
        "perfect_scaling_max_b_over_bcrit": PERFECT_SCALING_MAX,
        "maximal_parallelism_min_b_over_bcrit": MAXIMAL_PARALLELISM_MIN,
    }
    if m.fit is None:
        points = int(m.frontier["steps"].notna().sum())
        return {"status": "insufficient", "points": points, "regime_thresholds": thresholds}
    status = "unbounded" if math.isinf(m.fit.b_crit) else "fit"
    return plain(
        {
            "status": status,
            "b_crit": m.fit.b_crit,
            "ci_low": m.b_crit_ci[0],
            "ci_high": m.b_crit_ci[1],
            "s_min": m.fit.s_min,
            "e_min": m.fit.e_min,
            "points": m.fit.points,
            "censored_points": m.fit.censored,
            "upper_bound_points": m.fit.at_most,
            # the interval's low end beyond the grid's largest batch size: "at least" this
            "beyond_grid_at_least": m.b_crit_at_least,
            "ci_stretched_to_estimate": m.b_crit_ci_stretched,
            "r2_log": m.fit.r2,
            "log_residuals": {str(b): r for b, r in m.fit.residuals},
            "bootstrap_replicates": m.b_crit_replicates,
            "regime_thresholds": thresholds,
        }
    )


def critical_section(m: DegradationMap) -> list[str]:
    lines = [
        "S(B) = S_min (1 + B_crit / B) fitted to steps to target (least squares in 1/B, "
        "relative residuals, S_min and E_min >= 0); CI from 95% bootstrap over each batch "
        "size's trials. Regimes: perfect scaling for B <= B_crit/"
        f"{1 / PERFECT_SCALING_MAX:g} (local slope steeper than -0.8), maximal data "
        f"parallelism for B >= {MAXIMAL_PARALLELISM_MIN:g} B_crit (flatter than -0.2), "
        "diminishing returns between.",
        "",
    ]
    summary = critical_summary(m)
    if summary["status"] == "insufficient":
        return [
            *lines,
            f"Not fitted: {summary['points']} batch size(s) reached the target "
            f"(at least 2 needed).",
        ]
    b_crit = (
        "unbounded (perfect scaling throughout)"
        if summary["status"] == "unbounded"
        else num(m.fit.b_crit)
    )
    if m.b_crit_at_least is not None:
        b_crit = f"beyond the grid: at least {num(m.b_crit_at_least)} (the fit says {b_crit})"
    low, high = m.b_crit_ci
    if finite(low):
        ci = (
            f"95% CI {num(low)} to {num(high) if finite(high) else 'unbounded'} "
            f"({m.b_crit_replicates} bootstrap fits"
            + (
                ", reaching out to the estimate, which lay outside their 95%)"
                if m.b_crit_ci_stretched
                else ")"
            )
        )
    else:
        ci = f"no CI (needs {MIN_POINTS_FOR_CI} batch sizes reaching the target)"
    residuals = ", ".join(f"{b}: x{num(math.exp(r), 3)}" for b, r in m.fit.residuals)
    censored = f", {m.fit.censored} censored (lower bounds)" if m.fit.censored else ""
    if m.fit.at_most:
        censored += f", {m.fit.at_most} past the target at once (upper bounds)"
    return [
        *lines,
        f"- B_crit: {b_crit}; {ci}",
        f"- S_min {num(m.fit.s_min)} steps, E_min {num(m.fit.e_min)} examples; "
        f"{m.fit.points} points{censored}, R^2 (log steps) {num(m.fit.r2)}",
        f"- residuals (observed / fitted steps): {residuals}",
    ]
