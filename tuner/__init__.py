"""The study driver and its analysis; docs/architecture.md draws how a study flows.

Public: `Workload` (with `Metric`, `Data`, `SearchSpace`) declares a study's model, data, loss,
metric and defaults (docs/own-model.md); `run_study` runs a study from Python and returns a
`StudyResult`.

- `search` (`python -m tuner.search`) and `options`: the CLI and every check on its input.
- `spec`: the frozen study spec; `outcomes`: how a trial ended; `errors`: the one bad-input error.
- `study/`: the Ray Tune / Ray Train wiring (session, experiment, trial, searcher, scheduler,
  callbacks).
- `cluster/`: `ray up` configs checked offline, cluster capacity, joining a cluster.
- `store/`: study files, object-store storage, Optuna's database, the trial table.
- `analysis/`: the degradation map as pure functions; `report/` (`python -m tuner.report`): the
  verdict, markdown, JSON, figures and TensorBoard summary.

Ray is imported only in `study/`, `cluster/connect.py` and `cluster/config.py` (and, outside this
package, `trainables/ray_worker.py`).
"""

import importlib
from typing import Any

from search_spaces.spaces import SearchSpace
from trainables.workload import Data, Metric, Workload

# Loaded on first use (PEP 562): `tuner.api` reaches Ray, and every module of this package
# imports the package itself, so an eager import here would load Ray into the analysis and the
# report (tests/test_architecture.py checks both, statically and in a fresh interpreter).
LAZY = {"run_study": "tuner.api", "StudyResult": "tuner.api", "load_result": "tuner.api"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")


__all__ = [
    "Data",
    "Metric",
    "SearchSpace",
    "StudyResult",
    "Workload",
    "load_result",
    "run_study",
]
