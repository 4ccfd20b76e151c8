"""The "study adequacy" table: what an expert checks before believing a map (the Deep Learning
Tuning Playbook's checklist): enough trials per batch size, how many diverged, whether the best
sits on an edge of what was searched, and how far the confirmation seeds spread."""

from __future__ import annotations

import math

import pandas as pd

from tuner.analysis.frontier import DegradationMap
from tuner.report.format import count, diff_text, finite, markdown_table, text


def adequacy_rows(m: DegradationMap) -> pd.DataFrame:
    """Per batch size: search trials, the share that diverged, the best's searched values on a
    range edge (`m.warnings`, the lr's open side where the checks found one), the judged runs
    and their spread."""
    edges: dict[int, list[str]] = {}
    for warning in m.warnings:
        edges.setdefault(int(warning["batch_size"]), []).append(
            f"{warning['param']} ({warning.get('side', 'edge')})"
        )
    rows = []
    for row in m.frontier.itertuples(index=False):
        batch = int(row.batch_size)
        trials = int(getattr(row, "trials", 0) or 0)
        diverged = int(getattr(row, "diverged", 0) or 0)
        named = list(edges.get(batch, []))
        lr_edge = getattr(row, "lr_edge", None)
        if isinstance(lr_edge, str) and not any(n.startswith("base_lr") for n in named):
            named.append(f"base_lr ({lr_edge})")
        rows.append(
            {
                "batch_size": batch,
                "search_trials": trials,
                "diverged_share": diverged / trials if trials else math.nan,
                "errored": int(getattr(row, "errored", 0) or 0),
                "on_edge": ", ".join(named) or "none",
                "judged_runs": int(getattr(row, "accuracy_runs", 0) or 0),
                "judged_diverged": int(getattr(row, "accuracy_diverged", 0) or 0),
                "seed_sd": getattr(row, "accuracy_std", math.nan),
            }
        )
    return pd.DataFrame(rows)


def adequacy_table(m: DegradationMap) -> list[str]:
    """The report's section (empty before any trial)."""
    if m.frontier.empty or "accuracy_runs" not in m.frontier:
        return []
    share = lambda v: f"{100 * v:.0f}%" if finite(v) else "-"  # noqa: E731
    return [
        "## Study adequacy",
        "",
        "Before believing the map: search trials per batch size and the share that diverged "
        "(many diverged: the lr range reaches too high, and the search had fewer usable "
        "points), searched values of the best configuration on an edge of their range (the "
        "optimum may lie beyond it), and the runs each verdict rests on with their spread "
        "over seeds (one run: no spread, no interval).",
        "",
        markdown_table(
            adequacy_rows(m),
            [
                ("batch_size", "batch", count),
                ("search_trials", "search trials", count),
                ("diverged_share", "diverged", share),
                ("errored", "errored", count),
                ("on_edge", "best on a range edge", text),
                ("judged_runs", "judged runs", count),
                ("judged_diverged", "of them diverged", count),
                ("seed_sd", "sd over seeds", lambda v: diff_text(m.metric, v)),
            ],
        ),
        "",
    ]
