"""Figures of the degradation map: each function takes analysis outputs and returns a Figure.

Figures are built with `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot state),
so they draw the same on a headless node, inside tests, or next to a running study. Every
function draws a readable "no data" panel instead of failing when its inputs are empty.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tuner.analysis.critical import CriticalFit  # noqa: E402
from tuner.analysis.frontier import DegradationMap  # noqa: E402
from tuner.report.format import diff_text  # noqa: E402

FIGURE_TITLES = {
    "accuracy_vs_batch": "Accuracy vs batch size",
    "steps_to_target": "Steps to target vs batch size",
    "lr_vs_batch": "Best learning rate vs batch size",
    "accuracy_heatmap": "Accuracy, batch size x scaling rule",
    "throughput": "Throughput vs batch size",
    "time_vs_compute": "Time to target vs compute, on the study's hardware",
    "validation_curves": "Validation curves of the best search trial per batch size",
}
FIGSIZE = (7.0, 4.5)
RULE_COLORS = {"none": "tab:red", "linear": "tab:blue", "sqrt": "tab:green"}


def _figure(size: tuple[float, float] = FIGSIZE) -> tuple[Figure, object]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _no_data(ax, message: str) -> None:
    """Say in the panel what is missing, rather than leaving it blank."""
    ax.text(
        0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.35"
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _batch_axis(ax, batch_sizes: list[int]) -> None:
    """Log2 batch-size axis labelled with the grid's batch sizes."""
    ax.set_xscale("log", base=2)
    if batch_sizes:
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.minorticks_off()
    ax.margins(x=0.06)
    ax.set_xlabel("batch size")


def _rule_color(rule: str) -> str | None:
    return RULE_COLORS.get(rule)


STATUS_MARKERS = {
    "baseline": ("s", "black"),
    "holds": ("o", "tab:green"),
    "unresolved": ("D", "tab:orange"),
    "degraded": ("X", "tab:red"),
    "under-trained": ("v", "tab:purple"),
    "under-searched": ("<", "tab:brown"),
    "unstable": ("*", "tab:pink"),  # a judged run diverged
    "no interval": ("P", "tab:gray"),  # one run on a side
}


def accuracy_vs_batch(m: DegradationMap, budget: str | None = None) -> Figure:
    """Confirmed accuracy per batch size (mean over fresh seeds, with its uncertainty), one line
    per rule, the tolerance band below the baseline, and each batch size's verdict."""
    fig, ax = _figure()
    best = m.frontier[m.frontier["accuracy"].notna()]
    if best.empty:
        _no_data(ax, f"no trial has run its whole budget yet: no {m.metric.noun} to show")
        return fig
    rules = m.by_rule[m.by_rule["accuracy"].notna()] if "accuracy" in m.by_rule else m.by_rule
    if rules["scaling_rule"].nunique() < 2:
        rules = rules.iloc[0:0]  # one rule: its line is the black one
    for rule, group in rules.groupby("scaling_rule"):
        ax.plot(
            group["batch_size"],
            group["accuracy"],
            "o--",
            lw=1.0,
            ms=3,
            alpha=0.7,
            color=_rule_color(rule),
            label=f"rule: {rule}",
        )
    # 1.645 standard errors: the one-sided 95% bound the verdict uses, on each side.
    se = np.sqrt(
        [
            (e.val_var if np.isfinite(e.val_var) else 0.0)
            + (e.seed_var if np.isfinite(e.seed_var) else 0.0)
            for e in best["estimate"]
        ]
    )
    ax.errorbar(
        best["batch_size"],
        best["accuracy"],
        yerr=1.645 * se,
        fmt="-",
        color="black",
        lw=1.5,
        capsize=3,
        label="best cell, confirmed (+- 1.645 SE: seeds and validation set)",
    )
    for status, (marker, color) in STATUS_MARKERS.items():
        rows = best[best["status"] == status]
        if len(rows):
            ax.plot(rows["batch_size"], rows["accuracy"], marker, color=color, ms=8, label=status)
    if m.baseline is not None:
        batch, base = m.baseline
        worst = base.mean - m.metric.sign * m.tolerance  # the tolerance's far end
        tolerance = diff_text(m.metric, m.tolerance)
        ax.axhspan(
            min(worst, base.mean),
            max(worst, base.mean),
            color="tab:orange",
            alpha=0.15,
            label=f"within {tolerance} of batch-{batch} baseline",
        )
        ax.axhline(base.mean, color="tab:orange", lw=1)
    _batch_axis(ax, m.batch_sizes)
    ax.set_ylabel(f"final {m.metric.label}")
    title = f"{m.metric.noun.capitalize()} vs batch size"
    ax.set_title(f"{title} (budget {budget})" if budget else title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def steps_to_target(m: DegradationMap) -> Figure:
    """Steps to target vs batch size on log-log axes, with perfect scaling and the fit; batch
    sizes that never reached the target drawn as lower bounds."""
    fig, ax = _figure()
    measured = m.frontier[m.frontier["steps"].notna()]
    if measured.empty:
        _no_data(
            ax,
            f"no trial reached the target {m.metric.noun} {m.target:.3g}:\n"
            "no steps-to-target (lower it with --target, or give a larger --budget)",
        )
        return fig
    ax.errorbar(
        measured["batch_size"],
        measured["steps"],
        yerr=[
            (measured["steps"] - measured["steps_before"]).fillna(0).to_numpy(),
            (measured["steps_first"] - measured["steps"]).fillna(0).to_numpy(),
        ],
        fmt="o",
        color="black",
        ms=7,
        capsize=3,
        label="measured (earliest crossing, interpolated; bar: the evaluations around it)",
        zorder=3,
    )
    grid = np.geomspace(min(m.batch_sizes), max(m.batch_sizes), 200)
    anchor = measured.iloc[0]
    ax.plot(
        grid,
        anchor["steps"] * anchor["batch_size"] / grid,
        ":",
        color="0.4",
        label="perfect scaling (steps x batch = const)",
    )
    _draw_fit(ax, m.fit, grid, m.b_crit_ci)
    # the bounds: never reached (more than this), past the target at once (at most this)
    for column, marker, color, label in (
        ("censored_at", "^", "tab:red", "target not reached: more than this many steps"),
        ("steps_at_most", "v", "tab:blue", "past the target at its first evaluation: at most this"),
    ):
        if column not in m.frontier:
            continue
        bounded = m.frontier[m.frontier["steps"].isna() & m.frontier[column].notna()]
        if len(bounded):
            ax.plot(bounded["batch_size"], bounded[column], marker, color=color, ms=9, label=label)
    _batch_axis(ax, m.batch_sizes)
    ax.set_yscale("log")
    ax.set_ylabel(f"optimizer steps to val acc >= {m.target:.3g}")
    ax.set_title("Steps to target vs batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return fig


def _draw_fit(ax, fit: CriticalFit | None, grid: np.ndarray, ci: tuple[float, float]) -> None:
    """The fitted S(B) curve and B_crit with its interval, when they fall in view."""
    if fit is None:
        return
    label = "fit S_min (1 + B_crit / B)"
    ax.plot(grid, fit.steps(grid), "-", color="tab:purple", label=label)
    if math.isfinite(fit.b_crit) and fit.b_crit > 0:
        ax.axvline(
            fit.b_crit, color="tab:purple", ls="--", lw=1, label=f"B_crit ~ {fit.b_crit:.3g}"
        )
        low, high = ci
        if math.isfinite(low) and math.isfinite(high) and high > low:
            ax.axvspan(
                max(low, grid[0] / 2),
                min(high, grid[-1] * 2),
                color="tab:purple",
                alpha=0.08,
                label="B_crit 95% CI",
            )
    ax.set_xlim(grid[0] / 1.5, grid[-1] * 1.5)


def lr_vs_batch(m: DegradationMap) -> Figure:
    """Best actual lr per batch size, every scored trial faintly, and the scaling predictions."""
    fig, ax = _figure()
    best = m.best_hparams
    if best.empty:
        _no_data(ax, "no finished trial yet: no best learning rate")
        return fig
    scored = m.trials[m.trials["final"] & (m.trials["phase"] == "search")]
    ax.scatter(
        scored["batch_size"],
        scored["actual_lr"],
        s=12,
        color="0.7",
        label="search trials that ran their budget",
    )
    for rule, group in best.groupby("scaling_rule"):
        ax.plot(
            group["batch_size"],
            group["actual_lr"],
            "o",
            ms=8,
            color=_rule_color(rule),
            label=f"best trial (rule: {rule})",
            zorder=3,
        )
    ax.plot(best["batch_size"], best["actual_lr"], "-", color="black", lw=1)
    anchor = best.iloc[0]
    ax.plot(
        best["batch_size"],
        best["lr_linear"],
        "--",
        color="tab:blue",
        label=f"linear rule from batch {int(anchor['batch_size'])}",
    )
    ax.plot(
        best["batch_size"],
        best["lr_sqrt"],
        "--",
        color="tab:green",
        label=f"square-root rule from batch {int(anchor['batch_size'])}",
    )
    _batch_axis(ax, m.batch_sizes)
    ax.set_yscale("log")
    ax.set_ylabel("peak learning rate (after the scaling rule)")
    ax.set_title("Best learning rate vs batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return fig


def accuracy_heatmap(m: DegradationMap) -> Figure:
    """Accuracy per batch size x scaling rule; each cell says its evidence and verdict."""
    fig, ax = _figure()
    table = m.by_rule
    if table.empty or "accuracy" not in table or table["accuracy"].notna().sum() == 0:
        _no_data(ax, "no trial has run its whole budget yet: no batch size x rule map")
        return fig
    grid = table.pivot(index="scaling_rule", columns="batch_size", values="accuracy")
    evidence = table.pivot(index="scaling_rule", columns="batch_size", values="evidence")
    status = table.pivot(index="scaling_rule", columns="batch_size", values="status")
    grid = grid.reindex(columns=m.batch_sizes)
    evidence = evidence.reindex(index=grid.index, columns=m.batch_sizes).fillna(0)
    status = status.reindex(index=grid.index, columns=m.batch_sizes)
    image = ax.imshow(
        np.ma.masked_invalid(grid.to_numpy(dtype=float)), cmap="viridis", aspect="auto"
    )
    low, high = image.get_clim()
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value, n, verdict = grid.iat[i, j], int(evidence.iat[i, j]), status.iat[i, j]
            label = verdict if isinstance(verdict, str) else ""
            text = f"{value:.3f}\n{label} (n={n})" if pd.notna(value) else f"-\n(n={n})"
            # Dark text on the bright (high) end of viridis, white on the dark end.
            bright = pd.notna(value) and high > low and (value - low) / (high - low) > 0.6
            color = "0.3" if pd.isna(value) else "black" if bright else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(grid.shape[1]), [str(b) for b in grid.columns])
    ax.set_yticks(range(grid.shape[0]), list(grid.index))
    ax.set_xlabel("batch size")
    ax.set_ylabel("lr scaling rule")
    ax.set_title(
        f"{m.metric.noun.capitalize()} per batch size x rule (n = runs of the whole budget)"
    )
    fig.colorbar(image, ax=ax, label=f"final {m.metric.label}")
    return fig


def throughput(m: DegradationMap) -> Figure:
    """Training samples per second vs batch size, one line per worker count."""
    fig, ax = _figure()
    if m.throughput.empty:
        _no_data(ax, "no evaluation reported yet: no throughput")
        return fig
    for workers, group in m.throughput.groupby("workers"):
        ax.plot(
            group["batch_size"],
            group["samples_per_second"],
            "o-",
            label=f"{int(workers)} worker(s)",
        )
    _batch_axis(ax, m.batch_sizes)
    ax.set_yscale("log")
    ax.set_ylabel("training samples / s (median over evaluation windows)")
    ax.set_title("Throughput vs batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def time_vs_compute(m: DegradationMap) -> Figure:
    """Hours of training to the target against the device-hours they take, one point per batch
    size and worker count: what a larger batch buys in wall time and costs in device time on
    the hardware the study ran on (training only; start-up and evaluations are extra)."""
    fig, ax = _figure()
    timing = m.time_to_target
    if timing is None or timing.empty:
        _no_data(ax, "no batch size reached the target with a measured throughput")
        return fig
    unit = m.cost.device if m.cost else "device"
    for workers, group in timing.groupby("workers"):
        ax.plot(
            group["device_hours_to_target"],
            group["hours_to_target"],
            "o-",
            label=f"{int(workers)} worker(s)",
        )
        for row in group.itertuples(index=False):
            ax.annotate(
                f"B={int(row.batch_size)}",
                (row.device_hours_to_target, row.hours_to_target),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{unit}-hours to target (training)")
    ax.set_ylabel("hours to target (training)")
    ax.set_title("Time to target vs compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def validation_curves(m: DegradationMap, table: pd.DataFrame) -> Figure:
    """The study metric (validation accuracy or loss) of each batch size's best search trial,
    against epochs (equal data) and against optimizer steps (equal updates)."""
    fig = Figure(figsize=(11.0, 4.5), layout="constrained")
    by_epoch, by_step = fig.subplots(1, 2)
    best = m.best_hparams
    if best.empty or table.empty:
        _no_data(by_epoch, "no trial has run its whole budget yet")
        _no_data(by_step, "no trial has run its whole budget yet")
        return fig
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(best)))
    for color, row in zip(colors, best.itertuples(index=False), strict=True):
        curve = table[table["trial_id"] == row.trial_id].sort_values("optimizer_steps")
        label = f"batch {int(row.batch_size)} ({row.scaling_rule})"
        values = curve[m.metric.key]
        by_epoch.plot(curve["epoch"], values, "o-", ms=2, color=color, label=label)
        by_step.plot(curve["optimizer_steps"], values, "o-", ms=2, color=color, label=label)
    for ax in (by_epoch, by_step):
        ax.axhline(m.target, color="0.4", ls=":", label=f"target {m.target:.3g}")
        ax.set_ylabel(m.metric.label)
        ax.grid(alpha=0.3)
    by_epoch.set_xlabel("epochs (passes over the training set)")
    by_epoch.set_xscale("log")
    by_step.set_xlabel("optimizer steps")
    by_step.set_xscale("log")
    by_epoch.set_title("Best search trial per batch size: vs epochs")
    by_step.set_title("... and vs optimizer steps")
    by_epoch.legend(fontsize=8)
    return fig


def all_figures(
    m: DegradationMap, table: pd.DataFrame, budget: str | None = None
) -> dict[str, Figure]:
    """The report's figures by file stem, in the order the report shows them."""
    return {
        "accuracy_vs_batch": accuracy_vs_batch(m, budget),
        "steps_to_target": steps_to_target(m),
        "lr_vs_batch": lr_vs_batch(m),
        "accuracy_heatmap": accuracy_heatmap(m),
        "throughput": throughput(m),
        "time_vs_compute": time_vs_compute(m),
        "validation_curves": validation_curves(m, table),
    }


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG (atomically: a reader never sees half a file) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(path)
    return path
