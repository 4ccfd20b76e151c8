"""Search ranges per workload (`spaces`), the cells a study stratifies into (`cells`) and the
per-cell Optuna search itself (`cell_search`); plain Python, no Ray."""

from search_spaces.spaces import SPACES, SearchSpace, get_space

__all__ = ["SPACES", "SearchSpace", "get_space"]
