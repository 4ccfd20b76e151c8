"""Cross-worker reductions of the training loop: `torch.distributed` collectives where a
process group of more than one worker exists, the identity in a single process (tests,
one-worker trials)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every worker, in place (unchanged in a single process)."""
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(value: Any) -> list[Any]:
    """`value` of every worker, by rank (just this one's in a single process)."""
    if _distributed():
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, value)
        return parts
    return [value]
