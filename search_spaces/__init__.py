"""Search ranges, the per-cell search and its checks (the ranges of each built-in workload are
part of its definition, `trainables.workloads`)."""

from search_spaces.spaces import SearchSpace

__all__ = ["SearchSpace"]
