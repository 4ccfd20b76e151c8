"""Formatting helpers of the report: numbers, percentages, lists and markdown tables."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from trainables.metrics import ACCURACY, StudyMetric


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any) -> str:
    """0.9621 -> '96.2%'; missing -> '-'."""
    return f"{100 * float(value):.1f}%" if finite(value) else "-"


def pts(value: Any) -> str:
    """A difference of accuracies in percentage points: 0.0123 -> '1.2 pt'; missing -> '-'."""
    return f"{100 * float(value):.1f} pt" if finite(value) else "-"


def nats(value: Any) -> str:
    """A validation loss: 1.2345 -> '1.235 nats'; missing -> '-'."""
    return f"{float(value):.3f} nats" if finite(value) else "-"


def value_text(metric: StudyMetric, value: Any) -> str:
    """A value of the study metric: '96.2%', '1.235 nats' for a cross-entropy, '0.4321' for a
    workload's own loss or metric."""
    if metric.unit == "pt":
        return pct(value)
    return nats(value) if metric.unit == "nats" else num(value, 4)


def long_value_text(metric: StudyMetric, value: Any) -> str:
    """As `value_text`, and a loss also as perplexity and bits per byte (the language models'
    tokens are bytes): '1.235 nats (perplexity 3.44, 1.78 bits/byte)'."""
    if metric.unit != "nats" or not finite(value):
        return value_text(metric, value)
    loss = float(value)
    return f"{nats(loss)} (perplexity {math.exp(loss):.3g}, {loss / math.log(2):.3g} bits/byte)"


def diff_text(metric: StudyMetric, value: Any) -> str:
    """A difference of the study metric: '1.2 pt', '0.012 nats' for a cross-entropy, '0.0123'
    in a workload's own units."""
    if metric.unit == "pt":
        return pts(value)
    return nats(value) if metric.unit == "nats" else num(value, 3)


def duration(hours: Any) -> str:
    """A time in hours, readably: 0.0123 -> '44 s', 0.5 -> '30 min', 3.25 -> '3.25 h'."""
    if not finite(hours):
        return "-"
    hours = float(hours)
    if hours < 1 / 60:
        return f"{hours * 3600:.3g} s"
    if hours < 1:
        return f"{hours * 60:.3g} min"
    return f"{hours:.3g} h"


def num(value: Any, digits: int = 3) -> str:
    """A compact number ('0.0123', '1.5e+03'); missing -> '-'."""
    return f"{float(value):.{digits}g}" if finite(value) else "-"


def count(value: Any) -> str:
    return f"{int(value)}" if finite(value) else "-"


def yes_no(value: Any) -> str:
    """True -> 'yes', False -> 'no', unknown (None / NaN) -> '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "yes" if bool(value) else "no"


def batch_list(batches: Sequence[int]) -> str:
    return ", ".join(str(int(b)) for b in batches)


def markdown_table(
    frame: pd.DataFrame, columns: Sequence[tuple[str, str, Callable[[Any], str]]]
) -> str:
    """A GitHub markdown table of (column, header, formatter) triples; '(none)' when empty."""
    if frame.empty:
        return "(none)"
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for _, row in frame.iterrows():
        cells = [fmt(row.get(col)) for col, _, fmt in columns]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def text(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


# Columns both report tables share: outcome counts, then the metric's value and its judgement.
OUTCOME_COLUMNS = [
    ("trials", "search trials", count),
    ("completed", "full", count),
    ("stopped", "stopped", count),
    ("diverged", "diverged", count),
    ("errored", "errored", count),
    ("confirmations", "confirm runs", count),
]


def metric_columns(metric: StudyMetric = ACCURACY) -> list[tuple[str, str, Callable]]:
    """The value of the study metric (accuracy or loss), its spread and its judgement."""
    value = lambda v: value_text(metric, v)  # noqa: E731
    diff = lambda v: diff_text(metric, v)  # noqa: E731
    return [
        ("accuracy", metric.name, value),
        ("accuracy_runs", "runs", count),
        ("accuracy_std", "sd", diff),
        ("val_se", "val SE", diff),
        ("drop", "drop" if metric.mode == "max" else "rise", diff),
        ("drop_high", "drop upper" if metric.mode == "max" else "rise upper", diff),
        ("status", "status", lambda v: "-" if v is None or v != v else str(v)),
    ]


def runs(labels: Sequence[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """Consecutive batch sizes that share a label: [(label, [batches]), ...]."""
    runs: list[tuple[str, list[int]]] = []
    for batch, label in labels:
        if runs and runs[-1][0] == label:
            runs[-1][1].append(batch)
        else:
            runs.append((label, [batch]))
    return runs


def span(batches: list[int]) -> str:
    return f"{batches[0]}" if len(batches) == 1 else f"{batches[0]}-{batches[-1]}"
