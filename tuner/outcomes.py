"""How a trial ended, decided in one place for the searcher, the results table and the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OUTCOMES = ("completed", "stopped", "diverged", "errored", "running")


def trial_outcome(
    last: Mapping[str, Any] | None, *, error: bool, max_epochs: int, finished: bool = True
) -> str:
    """`completed` (full budget), `stopped` (early, by ASHA), `diverged`, `errored`, `running`."""
    if error:
        return "errored"
    if last is not None and bool(last.get("diverged", False)):
        return "diverged"
    if not finished:
        return "running"
    if last is None or "epoch" not in last:
        return "errored"  # finished without a single report: nothing was measured
    return "completed" if int(last["epoch"]) >= max_epochs else "stopped"
