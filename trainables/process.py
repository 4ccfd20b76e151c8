"""Where and when a trial's process runs: when the process started (what a trial in a new
process is charged from: its resources are held from the process's start, Python, Ray and
torch loading included; `tuner.analysis.cost`), and on which nodes and devices its workers
ran (the report's placement line, issue 33)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

_LOADED = time.time()  # this module's import: a process's start where /proc does not say


def process_started() -> float:
    """When this process started, seconds since the epoch (Linux's /proc; elsewhere when this
    module was imported, after Python, Ray and torch)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return _LOADED


def device_name(device: torch.device) -> str:
    """What a worker trains on, as the report names it: the GPU's model, else "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def placement_of(node_id: str, device: torch.device, world: int) -> dict[str, Any]:
    """Where a trial's workers ran, from every worker (a collective: each calls it once, in
    a trial of `world` workers): `nodes`, the distinct nodes; `device_name`, the distinct
    devices joined by "+" (one name: every worker on one kind)."""
    here = (node_id, device_name(device))
    everywhere = [here]
    if world > 1:
        import torch.distributed as dist

        everywhere = [None] * world
        dist.all_gather_object(everywhere, here)
    names = sorted({name for _, name in everywhere})
    return {"nodes": len({node for node, _ in everywhere}), "device_name": "+".join(names)}
