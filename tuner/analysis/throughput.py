"""Throughput per batch size and worker count."""

from __future__ import annotations

import pandas as pd


def throughput(table: pd.DataFrame) -> pd.DataFrame:
    """Median training samples/s per batch size and worker count, over every evaluation window
    (the time between two evaluations, evaluation excluded)."""
    columns = ["batch_size", "workers", "samples_per_second", "windows", "trials"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = table.assign(
        samples_per_second=pd.to_numeric(table["samples_per_second"], errors="coerce"),
        workers=pd.to_numeric(table["workers"], errors="coerce"),
    )
    rows = rows[rows["samples_per_second"].notna() & rows["workers"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    # The median shrugs off the first window's start-up cost and a busy neighbour.
    result = (
        rows.groupby(["batch_size", "workers"])
        .agg(
            samples_per_second=("samples_per_second", "median"),
            windows=("optimizer_steps", "size"),
            trials=("trial_id", "nunique"),
        )
        .reset_index()
    )
    result["workers"] = result["workers"].astype(int)
    return result[columns]
