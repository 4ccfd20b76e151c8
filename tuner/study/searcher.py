"""Ray Tune's side of the search: a `Searcher` that hands out the trials of
`search_spaces.cell_search.CellSearch` (per-cell Optuna studies, fair shares, confirmation runs)
and tells it how each trial ended.

Resuming on another machine: Tune pickles the searcher into its experiment state. The pickle
holds no storage and no path: `storage_factory` (the study spec's own) reopens the Optuna
database wherever the study's working copy is now. Every searcher checkpoint also writes a
consistent SQLite snapshot (`optuna-snapshot.db`) beside Tune's state, so Tune's sync carries
the two to the study's storage together and a resume finds a database that knows every trial
Tune's state names. The checkpoint also holds the scheduler's rungs, which Tune itself never
saves.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from search_spaces.cell_search import FINISHED, CellSearch
from tuner.outcomes import trial_outcome
from tuner.store.names import OPTUNA_SNAPSHOT
from tuner.store.optuna_db import snapshot_sqlite
from tuner.store.table import read_results
from tuner.store.tune_state import keep_backup, newest_state

STEP = "optimizer_steps"  # the x of Optuna's intermediate values


@dataclass(frozen=True)
class TuneTrial:
    """A trial as the newest Tune experiment state holds it."""

    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    config: dict[str, Any]  # what the searcher handed out (cell, phase, seed and parameters)
    last_result: dict[str, Any] | None

    @property
    def ended(self) -> bool:
        """Tune will not run it again on resume (errored trials are not resumed)."""
        return self.status in ("TERMINATED", "ERROR")


def tune_trials(experiment_dir: Path) -> dict[str, TuneTrial] | None:
    """The trials in the newest Tune experiment state of `experiment_dir` (the one Tune
    restores from), by id; None where it cannot be read (its format is Tune's own)."""
    state = newest_state(experiment_dir)
    if state is None:
        return None
    try:
        data = json.loads(state.read_text())
        trials = {}
        for entry in data["trial_data"]:
            state = json.loads(entry[0])
            runtime = json.loads(entry[1]) if len(entry) > 1 else {}
            config = state.get("config")
            trials[state["trial_id"]] = TuneTrial(
                status=str(state.get("status", "")),
                config=config if isinstance(config, dict) else {},
                last_result=runtime.get("last_result") or None,
            )
        return trials
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


class CellSearcher(Searcher):
    """Tune's view of a `CellSearch`: suggestions become trial configs, results its evidence."""

    def __init__(
        self,
        search: CellSearch,
        storage_factory: Callable[[], optuna.storages.RDBStorage],
        metric: str,
        mode: str,
        scheduler: Any = None,
        max_concurrent: int = 0,
    ):
        super().__init__(metric=metric, mode=mode)
        # Trials at once (0: no limit). Kept here, not in Tune's ConcurrencyLimiter: that
        # wrapper keeps its own set of live trials, saved in another file than this state, and
        # drops the end of any trial not in it; a study resumed from an object store, where
        # the files come from different moments, lost a confirmation's end that way and then
        # waited for it forever (seen in tests/test_object_store.py). This state's record of
        # running trials is the one reconciled with Tune's and Optuna's on resume.
        self.max_concurrent = max_concurrent
        self.done = False  # the search said it is finished (a study Tune ran to its end)
        self._storage_factory = storage_factory
        # The study's scheduler (PerCellASHA), saved and restored with this searcher: Tune
        # pickles both in one Tuner, so this is the very object Tune schedules with.
        self._scheduler = scheduler
        self._search = search
        self._search.attach(storage_factory())
        self._hook_scheduler()

    def _hook_scheduler(self) -> None:
        """The scheduler stops a run started ahead once no check can use it (`unneeded`)."""
        if self._scheduler is not None:
            self._scheduler.unneeded = self.unneeded

    def unneeded(self, trial_id: str) -> bool:
        return self._search.unneeded(trial_id)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # CellSearch drops its live storage when pickled
        state.pop("_mirror", None)  # a database login is never saved in Tune's state
        return state

    def mirror_to(self, mirror: Any) -> None:
        """Copy every trial to `mirror` (tuner.tracking.optuna_mirror) as it changes."""
        self._mirror = mirror

    def _mirrored(self, trial_id: str) -> None:
        mirror = self.__dict__.get("_mirror")
        record = self._search.record_of(trial_id) if mirror is not None else None
        if record is not None:
            mirror.sync(*record)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._search.attach(self._storage_factory())
        self._hook_scheduler()

    def speculate(self, ahead: int) -> None:
        """Start the baseline's more-steps runs `ahead` doublings early (checks.baseline_ahead)."""
        self._search.ahead = ahead

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec):
        return not (metric and metric != self._metric) and not (mode and mode != self._mode)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_concurrent and self._search.running >= self.max_concurrent:
            return None
        suggestion = self._search.suggest(trial_id)
        if suggestion == FINISHED:
            self.done = True
            return Searcher.FINISHED
        if suggestion is None:
            return None  # confirmation runs wait for their cell's search to finish
        self._mirrored(trial_id)
        return {
            **suggestion.params,
            "cell": suggestion.cell.key,
            "phase": suggestion.phase,
            "seed": suggestion.seed,
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._metric in result and STEP in result:
            self._search.report(trial_id, float(result[self._metric]), int(result[STEP]))
            self._mirrored(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        told = self._scheduler.stop_result(trial_id) if self._scheduler is not None else None
        if told is not None and not error:
            # Stopped at `told`; a resumed trial may have re-reported a later checkpoint (its
            # workers ran on while the stop travelled) before being stopped again: its end is
            # the evaluation that decided, as in an uninterrupted study.
            result = {**(result or {}), **told}
        outcome = trial_outcome(result, error=error)
        value = float(result[self._metric]) if result and self._metric in result else None
        step = int(result[STEP]) if result and STEP in result else None
        budget = int(result["budget_steps"]) if result and result.get("budget_steps") else None
        self._search.complete(trial_id, outcome, value, step, budget)
        self._mirrored(trial_id)

    def _take_in_results(self, experiment_dir: Path) -> None:
        """What the scheduler's saved state lacks (trials that passed a rung, ended or were
        stopped after the last save), from the trials' own result files: its rungs then hold
        what an uninterrupted study's hold. Where the files are elsewhere (an object store),
        the saved state stands alone."""
        results = read_results(experiment_dir)
        for key, (cell, outcome, end_step) in self._search.search_outcomes().items():
            rows = results.get(key, [])
            stopped_at = None
            if outcome == "stopped" and rows:
                at_end = [r for r in rows if r.get(STEP) == end_step]
                stopped_at = (at_end or rows)[-1]
                # a Train trial's workers may have reported past the stop while it travelled
                rows = [r for r in rows if end_step is None or r.get(STEP, 0) <= end_step]
            self._scheduler.take_in(key, cell, rows, stopped_at)

    @property
    def search(self) -> CellSearch:
        return self._search

    def save(self, checkpoint_path: str) -> None:
        scheduler = self._scheduler.state() if self._scheduler is not None else None
        with open(checkpoint_path, "wb") as file:
            state = {"search": self._search, "scheduler": scheduler, "saved_at": time.time()}
            state["done"] = self.done  # a finished study resumed again asks for nothing more
            pickle.dump(state, file)
        database = Path(self._search.storage_url.removeprefix("sqlite:///"))
        snapshot_sqlite(database, Path(checkpoint_path).parent / OPTUNA_SNAPSHOT)
        keep_backup(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            saved = pickle.load(file)
        if not isinstance(saved, dict):  # a checkpoint written before the scheduler's state
            saved = {"search": saved, "scheduler": None}
        self._search = saved["search"]
        self.done = saved.get("done", True)  # unknown (saved before it was kept): not claimed
        self._search.attach(self._storage_factory())
        # The database and Tune's own state may be from other moments than this state.
        tune = tune_trials(Path(checkpoint_path).parent)
        configs = {k: t.config or None for k, t in tune.items()} if tune is not None else None
        self._search.reconcile(configs)
        # The scheduler first: it knows where the trials it stopped were stopped.
        if self._scheduler is not None and saved["scheduler"] is not None:
            self._scheduler.load_state(saved["scheduler"])
        if self._scheduler is not None:
            self._take_in_results(Path(checkpoint_path).parent)
        # A trial Tune resumes was down from the last save to now: its time is no cost.
        saved_at, now = saved.get("saved_at"), time.time()
        if saved_at is not None and now > saved_at:
            for key, trial in (tune or {}).items():
                if not trial.ended:
                    self._search.add_downtime(key, saved_at, now)
            self._search.lost_downtime(saved_at, now)  # (records its runs will adopt)
        # A trial Tune's state has ended is never run again, so its end is told here (a
        # no-op where the searcher's state and Optuna already had it).
        for key, trial in (tune or {}).items():
            if trial.ended:
                self.on_trial_complete(key, trial.last_result, error=trial.status == "ERROR")
