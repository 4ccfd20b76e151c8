"""Ray Tune's OptunaSearch with a fair share of trials per batch size and honest outcomes.

Plain TPE over the joint space lets the sampler crowd batch sizes it happens to like (measured
here: 7/31/11/11 trials over four batch sizes) and leaves holes at the large end of the map. So
the batch size of each new trial is fixed to the grid entry with the fewest trials so far
(`enqueue_trial` pins it; TPE samples the rest), while TPE still learns from every trial: lr,
warmup and weight decay are in batch-independent units (base lr at the reference batch).

Tune tells Optuna that an ASHA-stopped trial *completed* with its truncated value, and TPE would
then treat an epoch-1 accuracy as a final result. Here a trial that did not run its full budget
(stopped early or diverged) is told as PRUNED: TPE ranks pruned trials by their last
intermediate value and below every completed trial. Errored trials are FAIL. The outcome is also
stored as a user attribute of the Optuna trial.

Resuming on another machine: OptunaSearch pickles its Optuna study, and with it the absolute
path of the SQLite file, into Tune's checkpoints. Here the pickled state holds Optuna trial ids
only, and `storage_factory` (the study spec's own) reopens the database wherever the study's
working copy is now. Every searcher checkpoint also writes a consistent SQLite snapshot
(`optuna-snapshot.db`) beside Tune's state, so Tune's sync carries the two to the study's
storage together and a resume finds a database that knows every trial Tune's state names.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tuner.outcomes import trial_outcome
from tuner.storage import OPTUNA_SNAPSHOT, snapshot_sqlite


class BalancedOptunaSearch(OptunaSearch):
    """OptunaSearch that round-robins the batch size and reports early stops as pruned."""

    def __init__(
        self,
        *args: Any,
        batch_sizes: list[int],
        max_epochs: int,
        storage_factory: Callable[[], optuna.storages.RDBStorage],
        **kwargs: Any,
    ):
        self._batch_sizes = list(batch_sizes)
        self._assigned = dict.fromkeys(self._batch_sizes, 0)
        self._max_epochs = max_epochs
        self._epochs: dict[str, set[int]] = {}  # epochs reported to Optuna, per trial
        self._storage_factory = storage_factory
        super().__init__(*args, storage=storage_factory(), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_storage")
        state.pop("_ot_study")
        state["_ot_trials"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage = self._storage_factory()
        try:
            self._ot_study = optuna.load_study(
                study_name=self._study_name, storage=self._storage, sampler=self._sampler
            )
        except KeyError:
            raise RuntimeError(
                f"Optuna storage {self._storage.url} has no study {self._study_name!r}"
            ) from None
        ids = state["_ot_trials"]
        self._ot_trials = {tid: optuna.Trial(self._ot_study, i) for tid, i in ids.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)
        database = Path(self._storage.url.removeprefix("sqlite:///"))
        snapshot_sqlite(database, Path(checkpoint_path).parent / OPTUNA_SNAPSHOT)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))

    def next_batch_size(self) -> int:
        """The grid entry with the fewest trials so far (smallest first on ties)."""
        return min(self._batch_sizes, key=lambda b: (self._assigned[b], self._batch_sizes.index(b)))

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials:
            batch = self.next_batch_size()
            self._ot_study.enqueue_trial({"batch_size": batch})
            self._assigned[batch] += 1
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Report against epochs, not Tune's training_iteration, which restarts on resume.
        if trial_id in self._completed_trials or self.metric not in result:
            return
        try:
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result["epoch"]))
        except UpdateFinishedTrialError:
            return  # see on_trial_complete: told before an interruption
        self._epochs.setdefault(trial_id, set()).add(int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        self._completed_trials.add(trial_id)
        outcome = trial_outcome(result, error=error, max_epochs=self._max_epochs)
        try:
            ot_trial.set_user_attr("outcome", outcome)
        except UpdateFinishedTrialError:
            # Told already, just before an interruption that came ahead of Tune's next
            # checkpoint of this searcher: Optuna's record stands.
            return
        if outcome == "completed":
            self._ot_study.tell(ot_trial, float(result[self.metric]), state=TrialState.COMPLETE)
        elif outcome in ("stopped", "diverged"):
            # When ASHA says stop, Tune hands the stopping result to on_trial_complete only, not
            # to on_trial_result: record it, so a trial stopped at its first rung has a value.
            if int(result["epoch"]) not in self._epochs.get(trial_id, set()):
                ot_trial.report(float(result[self.metric]), int(result["epoch"]))
            self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
