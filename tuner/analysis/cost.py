"""What a study cost: each trial's device time and the study's, by phase and by batch size.

A trial's wall time runs from when its process began it (`trial_began`; a trial that did not
say: from when the search handed it to Tune, Optuna's start time) to when the search was told
how it ended, so it includes starting its processes, loading data and every evaluation, not
only training, less the time it was down (`downtime_s`: a trial running when the study was
killed, from the last save to the resume). The time from the search handing it out to its
process beginning it, waiting for resources, is reported apart (`waiting_hours`), not charged.
Its device time is that wall time x its workers x what each worker holds: GPUs on GPU workers,
else CPUs (a 0.25-GPU worker costs a quarter of a GPU's time). The study's wall time is from
its first trial's start to its last trial's end, less the time it was down (the trials' `down`
intervals, each moment once). Plain pandas, no Ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

PHASES = {
    "search": "search",
    "confirm": "confirmation",
    "extend": "checks (lr and steps)",
    "rule": "rule test",
    "judge": "fresh seeds at the judged levels",
    "budget_free": "budget-free steps to target",
}


@dataclass(frozen=True)
class StudyCost:
    """Device time in hours ("GPU" or "CPU" hours), in total and by phase and batch size."""

    device: str
    device_hours: float
    wall_hours: float
    trials: int
    by_phase: dict[str, float] = field(default_factory=dict)
    by_batch: dict[int, float] = field(default_factory=dict)
    # trial-hours between the search handing a trial out and its process beginning it (an
    # autoscaled node starting, a busy cluster): reported apart, never charged
    waiting_hours: float = 0.0


def trial_costs(table: pd.DataFrame, per_worker: float, workers: int = 1) -> pd.DataFrame:
    """One row per trial with a start and an end: its batch size, phase, wall and device
    seconds from when its process began it (else from when the search handed it out) to its
    end, less the time the study was down (`per_worker`: GPUs or CPUs each worker holds;
    `workers`: the study's workers per trial, for a trial that ended before reporting how many
    it had)."""
    columns = ["trial_id", "batch_size", "phase", "workers", "wall_s", "device_s", "waiting_s"]
    if table.empty or "started" not in table:
        return pd.DataFrame(columns=columns)
    rows = []
    for trial_id, group in table.groupby("trial_id", sort=False):
        started = pd.to_numeric(group["started"], errors="coerce").min()
        ended = pd.to_numeric(group["ended"], errors="coerce").max()
        # From when its process began it, where it said (issue 33): the wait for resources
        # after the search handed it out (an autoscaled node starting, a busy cluster) holds
        # no device of the study's.
        began = pd.to_numeric(group.get("trial_began", pd.Series(dtype=float)), errors="coerce")
        handed = started
        if began.notna().any() and math.isfinite(started):
            started = max(started, float(began.min()))
        if not (math.isfinite(started) and math.isfinite(ended)):
            continue  # still running, or never started
        reported = pd.to_numeric(group["workers"], errors="coerce").max()
        count = int(reported) if math.isfinite(reported) else workers
        # a trial of an interrupted study is not charged for the time it was down (only what
        # of it came after the trial began)
        intervals = down_intervals(group)
        if intervals:
            clipped = [(max(a, started), min(b, ended)) for a, b in intervals]
            down = union_seconds([(a, b) for a, b in clipped if b > a])
        else:
            total = pd.to_numeric(group.get("downtime_s", pd.Series(dtype=float)), "coerce")
            down = total.max() if total.notna().any() else 0.0
        wall = max(ended - started - down, 0.0)
        # waiting for resources: handed out to begun, less any time the study was down then
        waited = [(max(a, handed), min(b, started)) for a, b in intervals]
        waiting = max(started - handed - union_seconds([(a, b) for a, b in waited if b > a]), 0)
        rows.append(
            {
                "trial_id": trial_id,
                "batch_size": int(group["batch_size"].iloc[0]),
                "phase": group["phase"].iloc[0],
                "workers": count,
                "wall_s": wall,
                "device_s": wall * count * per_worker,
                "waiting_s": waiting,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def down_intervals(table: pd.DataFrame) -> list[tuple[float, float]]:
    """When the study was down (its `down` column: JSON [[from, to], ...] per trial)."""
    if "down" not in table:
        return []
    found = []
    for text in table["down"].dropna().unique():
        found += [(float(a), float(b)) for a, b in (json.loads(text) if text else [])]
    return found


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """The time the intervals cover together (each moment once)."""
    total, reach = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def study_cost(
    table: pd.DataFrame, gpus_per_worker: float, cpus_per_worker: float, workers: int = 1
) -> StudyCost:
    """The study's cost from its trial table and what each worker holds."""
    device = "GPU" if gpus_per_worker > 0 else "CPU"
    per_worker = gpus_per_worker if gpus_per_worker > 0 else cpus_per_worker
    trials = trial_costs(table, per_worker, workers)
    if trials.empty:
        return StudyCost(device, 0.0, 0.0, 0)
    starts = pd.to_numeric(table["started"], errors="coerce")
    ends = pd.to_numeric(table["ended"], errors="coerce")
    span = ends.max() - starts.min()
    by_phase = trials.groupby("phase")["device_s"].sum() / 3600
    by_batch = trials.groupby("batch_size")["device_s"].sum() / 3600
    return StudyCost(
        device=device,
        device_hours=float(trials["device_s"].sum() / 3600),
        # the study's own time: not the time it was down between an interruption and its resume
        wall_hours=float(max(span - union_seconds(down_intervals(table)), 0.0) / 3600),
        trials=len(trials),
        by_phase={
            PHASES.get(p, p): float(by_phase[p])
            for p in [
                *[p for p in PHASES if p in by_phase],
                *sorted(set(by_phase.index) - set(PHASES)),
            ]
        },
        by_batch={int(b): float(h) for b, h in by_batch.items()},
        waiting_hours=float(trials["waiting_s"].sum() / 3600),
    )


def time_to_target(steps: pd.DataFrame, speed: pd.DataFrame, per_worker: float) -> pd.DataFrame:
    """Shallue et al.'s steps to target turned into the user's hardware: per batch size and
    worker count, the training time to reach the target (steps x batch / measured samples/s)
    and its device time (x workers x devices per worker). Training only: start-up and
    evaluations come on top (they are in the study's cost)."""
    columns = ["batch_size", "workers", "hours_to_target", "device_hours_to_target"]
    if steps.empty or speed.empty:
        return pd.DataFrame(columns=columns)
    reached = steps[pd.to_numeric(steps["steps"], errors="coerce").notna()][["batch_size", "steps"]]
    rows = reached.merge(speed[["batch_size", "workers", "samples_per_second"]], on="batch_size")
    rows = rows[pd.to_numeric(rows["samples_per_second"], errors="coerce") > 0]
    hours = rows["steps"] * rows["batch_size"] / rows["samples_per_second"] / 3600
    out = rows.assign(
        hours_to_target=hours, device_hours_to_target=hours * rows["workers"] * per_worker
    )
    return out[columns].sort_values(["batch_size", "workers"]).reset_index(drop=True)
