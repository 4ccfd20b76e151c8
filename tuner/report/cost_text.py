"""The report's cost line: device time by phase and batch size, and the trials' wait for
resources apart from it (`tuner.analysis.cost`)."""

from __future__ import annotations

from tuner.analysis.cost import StudyCost
from tuner.analysis.frontier import DegradationMap
from tuner.report.format import duration


def cost_verdict(m: DegradationMap) -> list[str]:
    """What the study cost in device time, by phase and by batch size."""
    cost = m.cost
    if cost is None or not cost.trials:
        return []
    phases = ", ".join(f"{name} {duration(h)}" for name, h in cost.by_phase.items())
    batches = ", ".join(f"{b}: {duration(h)}" for b, h in sorted(cost.by_batch.items()))
    return [
        f"Cost: {duration(cost.device_hours)} of {cost.device} time ({cost.device}s x wall time "
        f"of each of its {cost.trials} trials, start-up included) over {duration(cost.wall_hours)} "
        f"of wall time: {phases}; by batch size {batches}." + waiting_text(cost)
    ]


def waiting_text(cost: StudyCost) -> str:
    """The trials' wait for resources (handed out, not yet begun), where it came to a second."""
    if cost.waiting_hours * 3600 < 1:
        return ""
    return (
        f" Waiting for resources (from the search handing a trial out to its process beginning "
        f"it): {duration(cost.waiting_hours)} over the trials, not in the cost."
    )
