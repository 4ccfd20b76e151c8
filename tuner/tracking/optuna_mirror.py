"""The study's per-cell Optuna studies, mirrored live into a database the team runs
(`--optuna-storage`: PostgreSQL, MySQL, anything SQLAlchemy reaches), so that optuna-dashboard
pointed at it shows every study as it runs.

The study directory's own SQLite file stays the record the study resumes from (its snapshots
travel with Tune's state); the mirror copies each trial there when it is handed out, reported
and ended, in trial-number order, so that a trial's number is the same in both. Built on
Optuna's storage API (`create_new_trial` from a template, then the setters): `optuna.copy_study`
copies a whole study at once, not a trial as it changes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import optuna
from optuna.storages import BaseStorage

from tuner.tracking.checks import shown


class OptunaMirror:
    """Copies trials of the local storage to the one at `url`, as they change."""

    def __init__(self, url: str, local: Callable[[], BaseStorage]):
        self.url, self._open_local = url, local
        self._local_storage: BaseStorage | None = None
        self._remote: BaseStorage | None = None
        self._ids: dict[str, int] = {}  # study name -> its id in the mirror
        self._counts: dict[str, int] = {}  # study name -> trials it has in the mirror
        self.broken = False

    def __getstate__(self) -> dict:
        raise TypeError("an OptunaMirror is not saved with the study (its URL holds a login)")

    def _local(self) -> BaseStorage:
        """The study's own storage, opened once (every trial event syncs: opening an
        RDBStorage each time would rerun its schema check on Tune's loop)."""
        if self._local_storage is None:
            self._local_storage = self._open_local()
        return self._local_storage

    @property
    def remote(self) -> BaseStorage:
        if self._remote is None:
            self._remote = optuna.storages.RDBStorage(self.url)
        return self._remote

    def sync(self, study_name: str, number: int) -> None:
        """Trial `number` of `study_name` (and any earlier one the mirror lacks) as the local
        storage has it now."""
        if self.broken:
            return
        try:
            self._sync(study_name, number)
        except Exception as error:  # the database went away: said once, the study goes on
            self.broken = True
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            print(
                f"warning: the Optuna database {shown(self.url)} failed ({first}); the study "
                f"goes on with its own optuna.db, nothing more is mirrored",
                file=sys.stderr,
                flush=True,
            )

    def sync_all(self) -> None:
        """Every trial of every study in the local storage (at a start and at the end)."""
        local = self._local()
        for summary in local.get_all_studies():
            trials = local.get_all_trials(summary._study_id, deepcopy=False)
            for trial in trials:
                self.sync(summary.study_name, trial.number)

    def _study_id(self, local: BaseStorage, name: str) -> int:
        if name not in self._ids:
            remote = self.remote
            try:
                found = remote.get_study_id_from_name(name)
            except KeyError:
                directions = local.get_study_directions(local.get_study_id_from_name(name))
                found = remote.create_new_study(directions, name)
                for key, value in local.get_study_user_attrs(
                    local.get_study_id_from_name(name)
                ).items():
                    remote.set_study_user_attr(found, key, value)
            self._ids[name] = found
            self._counts[name] = len(remote.get_all_trials(found, deepcopy=False))
        return self._ids[name]

    def _sync(self, name: str, number: int) -> None:
        local, remote = self._local(), self.remote
        study = self._study_id(local, name)
        local_study = local.get_study_id_from_name(name)
        while self._counts[name] <= number:  # the trials the mirror lacks, in order
            template = local.get_trial(
                local.get_trial_id_from_study_id_trial_number(local_study, self._counts[name])
            )
            remote.create_new_trial(study, template_trial=template)
            self._counts[name] += 1
        mine = local.get_trial(local.get_trial_id_from_study_id_trial_number(local_study, number))
        theirs_id = remote.get_trial_id_from_study_id_trial_number(study, number)
        theirs = remote.get_trial(theirs_id)
        if theirs.state.is_finished():
            return
        for key, distribution in mine.distributions.items():
            if key not in theirs.params:
                internal = distribution.to_internal_repr(mine.params[key])
                remote.set_trial_param(theirs_id, key, internal, distribution)
        for step, value in mine.intermediate_values.items():
            if theirs.intermediate_values.get(step) != value:
                remote.set_trial_intermediate_value(theirs_id, step, value)
        for key, value in mine.user_attrs.items():
            if theirs.user_attrs.get(key) != value:
                remote.set_trial_user_attr(theirs_id, key, value)
        if mine.state.is_finished():
            remote.set_trial_state_values(theirs_id, mine.state, mine.values)
