"""ASHA per cell, with rungs at fractions of the budget; only search trials are ever stopped.

One ASHA over all trials compares a batch-32768 trial with a batch-256 trial at the same epoch,
where the large batch has taken 128x fewer steps, and stops large batches for the wrong reason
(measured here: 10 of 11 batch-512 trials stopped at the first rung). Here every cell (batch
size x stratified rule x optimiser, `search_spaces.cells`) is its own ASHA population, and the
rung clock is `progress`, the fraction of the trial's own budget done: within a cell every
trial has the same budget, so a rung at 1/9 is the same number of steps and examples for all
of them, and it is a real part of the budget at every batch size (never "epoch 1", which is 2
optimizer steps at batch 512 on digits). Each group is Ray's own `AsyncHyperBandScheduler`;
this class only routes trials to their group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from search_spaces.cell_search import SEARCH
from tuner.outcomes import FULL_BUDGET

TIME_ATTR = "progress"


class PerCellASHA(FIFOScheduler):
    """Route every search trial to the ASHA instance of its `config['cell']`."""

    def __init__(self, *, metric: str, mode: str, grace: float, reduction_factor: float = 3):
        super().__init__()
        self._asha_kwargs = dict(
            time_attr=TIME_ATTR,
            metric=metric,
            mode=mode,
            max_t=1.0,
            grace_period=grace,
            reduction_factor=reduction_factor,
        )
        self._metric, self._mode = metric, mode
        self._groups: dict[Any, AsyncHyperBandScheduler] = {}
        # Trials told to stop: their cell and the evaluation they were stopped at. Ray's ASHA
        # records a trial's value at a rung and then passes it through that rung ever after;
        # a study killed between the decision and Tune saving the trial as ended resumes the
        # trial, which reports its checkpoint again: without this it would run to its end where
        # an uninterrupted study stopped it (seen once in CI for Ray Train trials, whose stop
        # takes longer to land). That checkpoint may be later than the stop (a Train trial's
        # workers train on while the stop travels): `stop_result` is the evaluation that
        # decided, which the searcher records as the trial's end.
        self._told_stop: dict[str, dict[str, Any] | None] = {}
        # Stops counted per cell by a study saved before `_told_stop` kept cells (resumed).
        self._stopped_before: dict[Any, int] = {}
        # Whether a run the study started ahead is no longer of use to any check (the
        # searcher's `unneeded`, set by it): such a run is stopped, not run to its end.
        self.unneeded: Callable[[str], bool] | None = None

    @staticmethod
    def _exempt(trial: Any) -> bool:
        """Confirmation runs and checks measure a chosen configuration: ASHA never stops them
        (a run started ahead that no check can use any more is stopped: `unneeded`)."""
        return trial.config.get("phase", SEARCH) != SEARCH

    def _group(self, trial: Any) -> AsyncHyperBandScheduler:
        key = trial.config.get("cell", trial.config.get("batch_size"))
        if key not in self._groups:
            self._groups[key] = AsyncHyperBandScheduler(**self._asha_kwargs)
        return self._groups[key]

    @property
    def stopped(self) -> dict[Any, int]:
        """Trials stopped early, per cell (every cell ASHA has seen, 0 where none)."""
        counts = {key: 0 for key in self._groups} | self._stopped_before
        for told in self._told_stop.values():
            if told is not None:
                counts[told["cell"]] = counts.get(told["cell"], 0) + 1
        return counts

    def stop_result(self, trial_id: str) -> dict[str, Any] | None:
        """The evaluation at which `trial_id` was told to stop (None: not stopped, or stopped
        in a study saved before these were kept)."""
        told = self._told_stop.get(trial_id)
        return None if told is None else told["result"]

    def state(self) -> dict[str, Any]:
        """The rungs' recorded results, for the searcher's checkpoint: Tune 2.60 saves and
        restores a searcher with its experiment state but never a scheduler, so a resumed study
        would judge its first rungs against no peers and let trials through that an
        uninterrupted study stops."""
        return {
            "groups": self._groups,
            "told_stop": self._told_stop,
            "stopped_before": self._stopped_before,
            "version": 2,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._groups = state["groups"]
        if state.get("version", 1) >= 2:
            self._told_stop = state["told_stop"]
            self._stopped_before = state.get("stopped_before", {})
        else:  # older studies: counts per cell, and (some) the stopped trials' ids alone
            self._told_stop = dict.fromkeys(state.get("told_stop", ()))
            self._stopped_before = dict(state["stopped"])

    def take_in(
        self,
        trial_id: str,
        cell: Any,
        results: Iterable[dict[str, Any]],
        stopped_at: dict[str, Any] | None = None,
    ) -> None:
        """Record a search trial's evaluations (its result rows as it reported them) at the
        rungs they reached, where this state lacks them, and its stop (`stopped_at`: the
        evaluation it was stopped at), as the live study did: on resume, for what happened
        after the searcher's state was last saved (Tune saves it at a pace,
        `tuner.study.saving`; a trial that passed a rung or ended since would otherwise be
        missing from its peers' rungs, and a stopped one resumed would run on). Idempotent:
        Ray's bracket records a trial once per rung."""
        group = self._groups.get(cell)
        if group is None:
            group = self._groups[cell] = AsyncHyperBandScheduler(**self._asha_kwargs)
        bracket, ref = group._brackets[0], SimpleNamespace(trial_id=trial_id)
        rows = [r for r in results if TIME_ATTR in r and self._metric in r]
        for row in sorted(rows, key=lambda r: r[TIME_ATTR]):
            bracket.on_result(ref, row[TIME_ATTR], group._metric_op * row[self._metric])
        if stopped_at is not None and trial_id not in self._told_stop:
            self._told_stop[trial_id] = {"cell": cell, "result": dict(stopped_at)}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return not (metric and metric != self._metric) and not (mode and mode != self._mode)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._exempt(trial):
            self._group(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._exempt(trial):
            unneeded = self.__dict__.get("unneeded")  # (a scheduler pickled before it)
            if unneeded is not None and unneeded(trial.trial_id):
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        if trial.trial_id in self._told_stop:  # resumed after its stop: the same decision
            return TrialScheduler.STOP
        group = self._group(trial)
        if trial.trial_id not in group._trial_info:  # restored trial: re-register it
            group.on_trial_add(tune_controller, trial)
        action = group.on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(TIME_ATTR, 1.0) < FULL_BUDGET:
            cell = trial.config.get("cell", trial.config.get("batch_size"))
            self._told_stop[trial.trial_id] = {"cell": cell, "result": dict(result)}
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if self._exempt(trial):
            return
        group = self._group(trial)
        if trial.trial_id in group._trial_info:
            group.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if self._exempt(trial):
            return
        group = self._group(trial)
        if trial.trial_id in group._trial_info:
            group.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        parts = [f"{cell}: {n} stopped early" for cell, n in sorted(self.stopped.items())]
        return "ASHA per cell (rungs at fractions of the budget): " + ", ".join(parts)
