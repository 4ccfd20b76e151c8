"""Where a study's trials run: each multi-worker trial whole on one node where a node can hold
it, and every trial on one accelerator type (issue 33, item 4).

A data-parallel trial whose workers straddle two nodes, or mix an A10G with an A100, measures
its placement: its step time (and so the throughput and time-to-target tables) follows the
slowest link and the slowest device. Ray places a Ray Train worker group by its
`ScalingConfig.placement_strategy` (`PACK`, Ray's default, packs *where it can* and otherwise
spreads; `STRICT_PACK` places the whole group on one node or waits) and restricts it to one
accelerator type by `accelerator_type` (every worker asks for a sliver of the node resource
`accelerator_type:TYPE` that Ray gives each GPU node). This module decides both from the
cluster's nodes as resource dictionaries: plain Python, tested without a cluster.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuner.cluster.capacity import workers_that_fit
from tuner.errors import InputError

ACCELERATOR_PREFIX = "accelerator_type:"  # Ray's node resource per accelerator type
STRICT_PACK = "STRICT_PACK"
PACK = "PACK"
# What a one-worker trial's actor asks of its node's accelerator resource (Ray Train asks the
# same for each of its workers: ray.air.config.ScalingConfig).
ACCELERATOR_SHARE = 0.001


@dataclass(frozen=True)
class Placement:
    """How the study's trials are placed, and what to tell the user about it."""

    strategy: str  # of a multi-worker trial's placement group: STRICT_PACK or PACK
    accelerator_type: str  # "" for any node
    notes: tuple[str, ...] = ()


def node_types(node: dict[str, float]) -> set[str]:
    """The accelerator types a node declares (`accelerator_type:A10G` -> A10G)."""
    return {k[len(ACCELERATOR_PREFIX) :] for k in node if k.startswith(ACCELERATOR_PREFIX)}


def plan_placement(
    nodes: list[dict[str, float]],
    workers_per_trial: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    accelerator_type: str = "",
) -> Placement:
    """Decide a study's placement on `nodes` (what the cluster has or can add).

    - The accelerator type: the one asked for (`--accelerator-type`), which some node must
      declare (unless a node's resources are not known yet, as an autoscaler's unfilled
      node type: then it is trusted); else, for a GPU study on nodes of several types, a
      type one node of which holds a whole trial, of those the one that holds the most
      workers at once (said in a note); else none.
    - `STRICT_PACK` where one node (of that type) holds a whole trial, so no trial straddles
      nodes; else `PACK`, with a note that trials span nodes.
    Raises `InputError` for a type no node has."""
    notes: list[str] = []

    def holds(node: dict[str, float]) -> bool:
        return workers_that_fit([node], cpus_per_worker, gpus_per_worker) >= workers_per_trial

    declared = Counter(t for node in nodes for t in node_types(node))
    if accelerator_type:
        # a node type whose resources are not known yet (an autoscaler's `resources: {}`)
        # may be of any type; else a type no node has would leave every trial waiting
        unknown = any(not node for node in nodes)
        if accelerator_type not in declared and not unknown:
            kinds = ", ".join(sorted(declared)) or "none declared"
            raise InputError(
                f"--accelerator-type {accelerator_type}: no node of the cluster has it "
                f"(its types: {kinds})"
            )
    elif gpus_per_worker > 0 and len(declared) > 1:

        def preference(kind: str) -> tuple[bool, int]:
            """(a node of this type holds a whole trial, the workers its nodes hold)"""
            typed = [n for n in nodes if kind in node_types(n)]
            return (
                any(holds(n) for n in typed),
                workers_that_fit(typed, cpus_per_worker, gpus_per_worker),
            )

        accelerator_type = max(sorted(declared), key=preference)
        notes.append(
            f"the cluster has {len(declared)} accelerator types ({', '.join(sorted(declared))}); "
            f"every trial runs on {accelerator_type}, the type with the most room for whole "
            f"trials (--accelerator-type picks another)"
        )
    candidates = [n for n in nodes if not accelerator_type or accelerator_type in node_types(n)]
    if not declared:  # no node says its type: any node may be one
        candidates = nodes
    whole = any(holds(node) for node in candidates)
    if workers_per_trial > 1 and not whole:
        notes.append(
            f"no node holds all {workers_per_trial} workers of a trial: trials span nodes "
            f"(their step times include the network between them)"
        )
    return Placement(STRICT_PACK if whole else PACK, accelerator_type, tuple(notes))


def placement_text(strategy: str, accelerator_type: str, workers_per_trial: int) -> str:
    """One sentence on how trials were placed, for the report."""
    where = f" on {accelerator_type} only" if accelerator_type else ""
    if workers_per_trial == 1:
        return f"one worker per trial{where}"
    how = (
        "each trial whole on one node (STRICT_PACK)"
        if strategy == STRICT_PACK
        else "trials may span nodes (PACK: no node holds a whole trial)"
    )
    return f"{workers_per_trial} workers per trial, {how}{where}"


def where_trials_ran(table: Any) -> dict[str, Any]:
    """Where a study's trials ran, from its trial table (one row per report; `node_id` the
    rank-0 worker's node, `nodes` and `device_name` over all of a trial's workers; studies
    made before these were reported have none): node count, trials by node count, devices."""
    if table is None or len(table) == 0 or "node_id" not in table:
        return {}
    trials = table.groupby("trial_id")
    nodes = trials["nodes"].max() if "nodes" in table else None
    devices = table["device_name"].dropna() if "device_name" in table else []
    return {
        "nodes_used": int(table["node_id"].dropna().nunique()),
        "trials": int(trials.ngroups),
        # trials whose workers were on more than one node (unknown: not reported)
        "trials_spanning_nodes": None if nodes is None else int((nodes > 1).sum()),
        "devices": sorted({str(d) for d in devices}),
    }


def where_text(spec_strategy: str, accelerator_type: str, workers: int, ran: dict) -> str:
    """The report's placement line: the rule, then where the trials ran."""
    text = placement_text(spec_strategy, accelerator_type, workers)
    if not ran:
        return text
    text += f"; {ran['trials']} trials ran on {ran['nodes_used']} node(s)"
    if ran["devices"]:
        text += f" ({', '.join(ran['devices'])})"
    spanning = ran["trials_spanning_nodes"]
    if workers > 1 and spanning is not None:
        text += (
            f", {spanning} of them on more than one node"
            if spanning
            else ", each whole on one node"
        )
    return text
