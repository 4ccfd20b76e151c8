"""What a cluster can hold: its possible nodes and how many trial workers fit on them.

Plain Python over resource dictionaries (`{"CPU": 8, "GPU": 4}`), so the capacity rules are
tested without a cluster; `tuner.cluster.connect` asks Ray for the nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tuner.errors import InputError

# Where `ray up` leaves the resolved config (node types with their resources filled in from the
# instance types) on the head node; a study submitted with `ray job submit` runs there.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def possible_nodes(config: dict[str, Any]) -> list[dict[str, float]]:
    """The resources of every node the cluster can ever have: the head, and each worker node
    type at its `max_workers` (all types together capped by the global `max_workers`, the
    largest types first: an upper bound of what the autoscaler can add).

    Node types with `resources: {}` (AWS fills them in from the instance type at `ray up`) count
    as empty; on a `ray up` head node `BOOTSTRAP_CONFIG` has them filled in.
    """
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")

    def resources(node_type: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in (node_type.get("resources") or {}).items()}

    nodes = [resources(types[head])] if head in types else []
    budget = int(config.get("max_workers", 0))
    workers = sorted(
        (t for name, t in types.items() if name != head), key=lambda t: -sum(resources(t).values())
    )
    for node_type in workers:
        count = max(0, min(int(node_type.get("max_workers", budget)), budget))
        nodes += [resources(node_type)] * count
        budget -= count
    return nodes


def workers_that_fit(
    nodes: list[dict[str, float]], cpus_per_worker: float, gpus_per_worker: float
) -> int:
    """How many trial workers (each `cpus_per_worker` CPUs and `gpus_per_worker` GPUs, on one
    node) the given nodes hold at once. Exact for identical workers: a worker never spans nodes.
    """
    total = 0
    for node in nodes:
        fits = []
        for name, need in (("CPU", cpus_per_worker), ("GPU", gpus_per_worker)):
            if need > 0:
                fits.append(int(node.get(name, 0) // need))
        if not fits:
            return sys.maxsize  # a worker that asks for nothing fits anywhere
        total += min(fits)
    return total


def check_fits(
    nodes: list[dict[str, float]],
    workers_per_trial: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
) -> None:
    """Raise `InputError` when one trial asks for more than the cluster can ever hold at once:
    its workers, each whole on one node (a worker never spans nodes)."""
    fits = workers_that_fit(nodes, cpus_per_worker, gpus_per_worker)
    if fits >= workers_per_trial:
        return
    cpu = sum(n.get("CPU", 0) for n in nodes)
    gpu = sum(n.get("GPU", 0) for n in nodes)
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise InputError(
        f"one trial needs {workers_per_trial} workers x ({cpus_per_worker:g} CPU, "
        f"{gpus_per_worker:g} GPU) on one node each, but the cluster holds {fits} such "
        f"worker(s) ({len(nodes)} node(s), {cpu:g} CPU, {gpu:g} GPU; the largest node "
        f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower "
        f"--workers-per-trial / --cpus-per-worker or grow the cluster"
    )
