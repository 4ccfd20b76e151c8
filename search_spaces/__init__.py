"""Per-workload search ranges and the define-by-run function Optuna samples from."""

from search_spaces.spaces import SPACES, SearchSpace, define_by_run, get_space

__all__ = ["SPACES", "SearchSpace", "define_by_run", "get_space"]
