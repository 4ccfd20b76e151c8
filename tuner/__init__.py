"""The study driver and its analysis; docs/architecture.md draws how a study flows.

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
