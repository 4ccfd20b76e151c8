"""Throughput per batch size and worker count."""

from __future__ import annotations

import pandas as pd


def throughput(table: pd.DataFrame) -> pd.DataFrame:
    """Median training samples/s (and tokens/s for token sequences: 0 otherwise) per batch size
    and worker count, over every evaluation window (the time between two evaluations,
    evaluation excluded)."""
    columns = ["batch_size", "workers", "samples_per_second", "tokens_per_second", "windows"]
    columns.append("trials")
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = table.assign(
        samples_per_second=pd.to_numeric(table["samples_per_second"], errors="coerce"),
        workers=pd.to_numeric(table["workers"], errors="coerce"),
        tokens_per_second=pd.to_numeric(
            table.get("tokens_per_second", pd.Series(0.0, index=table.index)), errors="coerce"
        ).fillna(0.0),
    )
    rows = rows[rows["samples_per_second"].notna() & rows["workers"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    # The median shrugs off the first window's start-up cost and a busy neighbour.
    result = (
        rows.groupby(["batch_size", "workers"])
        .agg(
            samples_per_second=("samples_per_second", "median"),
            tokens_per_second=("tokens_per_second", "median"),
            windows=("optimizer_steps", "size"),
            trials=("trial_id", "nunique"),
        )
        .reset_index()
    )
    result["workers"] = result["workers"].astype(int)
    return result[columns]
