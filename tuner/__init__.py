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

from search_spaces.spaces import SearchSpace
from trainables.workload import Data, Metric, Workload
from tuner.api import StudyResult, load_result, run_study

__all__ = [
    "Data",
    "Metric",
    "SearchSpace",
    "StudyResult",
    "Workload",
    "load_result",
    "run_study",
]
