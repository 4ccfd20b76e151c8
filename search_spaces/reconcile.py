"""A resumed search brought in line with Optuna's record and Tune's (`Reconciling.reconcile`),
without Ray: a mixin of `search_spaces.cell_search.CellSearch`, whose state it reads and
changes (kept apart for its size: the resume's rules are their own subject)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search_spaces.cells import Cell
from search_spaces.runs import (
    BUDGET_FREE,
    CONFIRM,
    JUDGE,
    PROBES,
    RULE,
    SEARCH,
    Pending,
    run_key,
    trial_params,
)


class Reconciling:
    """`CellSearch`'s resume: what a restored state, Optuna's record and Tune's say together."""

    def reconcile(
        self, tune: Mapping[str, Mapping[str, Any] | None] | set[str] | None = None
    ) -> int:
        """Bring this state in line with Optuna's record and Tune's (`tune`: the trials of the
        restored Tune experiment, by id, with their config where known; None when unknown);
        returns how many trials it changed.

        A resumed study restores this state from the searcher's checkpoint, the database from
        its snapshot, and Tune's trials from its own state; on an object store the three can
        come from different moments (Tune uploads them one file after another), in any order:
        - Optuna's record of a finished trial is taken in (never asked for again, counted in
          its cell's share); a running one only where Tune will resume it. One Tune never
          heard of (handed out after Tune's last save) is lost: the search hands its run out
          again (this state is from before it), and that hand-out adopts its Optuna record
          (`lost`, `CellSearch._adopt`: the same trial number, run again from its start), as
          an uninterrupted study numbers it; a lost record no hand-out adopts is closed as
          errored when the study ends (`close_lost_trials`).
        - A trial this state handed out that Tune never heard of is handed out again (and
          adopts its record).
        - A trial this state knows and the database does not (the state is the newer) is
          recorded again from Tune's config where Tune runs it, else handed out again; one this
          state saw finish and the database has open is reopened here, so that its end (from
          Tune, see `tuner.study.searcher`) is told to Optuna.
        - A trial Tune knows and neither this state nor the database does (Tune's state is the
          newest) is recorded from its config and counted.
        """
        if tune is not None and not isinstance(tune, Mapping):
            tune = dict.fromkeys(tune)
        changed = 0
        self.lost = {}
        records = [(cell, self.study(cell)) for cell in self.cells]
        by_key = {c.key: c for c in self.cells}
        recorded: set[str] = set()
        for holder, study in [*records, (None, self.checks_study())]:
            for trial in study.get_trials(deepcopy=False):
                cell = holder or by_key.get(trial.user_attrs.get("cell", ""))
                key = trial.user_attrs.get("tune_trial_id")
                if cell is None or key is None:
                    continue
                recorded.add(key)
                for optimizer, bounds in trial.user_attrs.get("lr_range", {}).items():
                    low, high = self.ranges[cell.key][optimizer]
                    self.ranges[cell.key][optimizer] = (min(low, bounds[0]), max(high, bounds[1]))
                done = trial.state.is_finished()
                tune_has = tune is None or key in tune
                if key in self.trials:
                    if not done and key in self.finished:
                        self.finished.discard(key)  # the database is older: tell its end again
                        changed += 1
                    if done and key not in self.finished:
                        self.finished.add(key)  # the database is newer: it ended (as told)
                        changed += 1
                    if not done and not tune_has:
                        self._hand_back(key)
                        self._lose(cell, trial)
                        changed += 1
                    continue
                if not done and not tune_has:
                    self._lose(cell, trial)  # lost in the interruption: Tune never heard of it
                    continue
                phase = trial.user_attrs.get("phase", SEARCH)
                self.trials[key] = (cell.key, trial.number, phase)
                params = trial_params(self.space, cell, trial)
                edge = bool(trial.user_attrs.get("edge"))
                self._count_in(key, cell, phase, params, trial.user_attrs.get("seed"), edge)
                if done:
                    self.finished.add(key)
                changed += 1
        for key in [k for k in self.trials if k not in recorded]:
            config = (tune or {}).get(key)
            if config is None:  # neither Optuna nor Tune has it: handed out again
                self._forget(key)
            else:  # Tune runs it (or ran it): recorded again as it runs
                self.finished.discard(key)
                cell, params, phase, seed = self._from_config(config)
                self._record(key, cell, params, phase, seed)
            changed += 1
        for key, config in (tune or {}).items():
            if key in self.trials or config is None or config.get("cell") not in by_key:
                continue
            cell, params, phase, seed = self._from_config(config)
            self._record(key, cell, params, phase, seed)
            self._count_in(key, cell, phase, params, seed, edge=False)
            changed += 1
        self.changes += 1
        self._edge_facts = {}  # read again from the record as it now stands
        return changed

    def search_outcomes(self) -> dict[str, tuple[str, str | None, int | None]]:
        """The search trials this state knows (after `reconcile`): Tune trial id -> (cell key,
        the outcome Optuna recorded (None while it runs), the step it ended at). What a
        resumed scheduler takes in (`tuner.study.scheduler.PerCellASHA.take_in`)."""
        found = {}
        for cell in self.cells:
            for trial in self.study(cell).get_trials(deepcopy=False):
                key = trial.user_attrs.get("tune_trial_id")
                if key not in self.trials or trial.user_attrs.get("phase", SEARCH) != SEARCH:
                    continue
                outcome = trial.user_attrs.get("outcome") if trial.state.is_finished() else None
                found[key] = (cell.key, outcome, trial.user_attrs.get("end_step"))
        return found

    def _lose(self, cell: Cell, trial: Any) -> None:
        """Keep Optuna's record of a trial lost in the interruption (running there, unknown to
        Tune) for the hand-out of the same run to adopt. A cell trial's parameters are the
        ones it was enqueued with; a check's, the ones it ran."""
        phase = trial.user_attrs.get("phase", SEARCH)
        if phase in PROBES:
            params = trial.user_attrs.get("run_params", {})
        else:
            params = trial.system_attrs.get("fixed_params", trial.params)
        key = run_key(cell.key, phase, trial.user_attrs.get("seed"), params)
        self.lost.setdefault(key, []).append(trial.number)

    def _from_config(self, config: Mapping[str, Any]) -> tuple[Cell, dict[str, Any], str, int]:
        """A Tune trial's config (what `suggest` handed out) as cell, params, phase, seed."""
        cell = next(c for c in self.cells if c.key == config["cell"])
        params = {k: v for k, v in config.items() if k not in ("cell", "phase", "seed")}
        return cell, params, config.get("phase", SEARCH), config.get("seed", self.seed)

    def _record(self, key: str, cell: Cell, params: dict[str, Any], phase: str, seed: int) -> None:
        """Record a trial handed out already (Tune runs it) in Optuna, as `suggest` would."""
        edge = self.handed.get(key, (None, False))[1]
        if phase in PROBES:
            self._ask_check(key, Pending(cell, params, seed, phase))
            return
        ranges = {o: list(r) for o, r in self.ranges[cell.key].items()}
        self.study(cell).enqueue_trial(
            self._optuna_params(cell, params), user_attrs={"lr_range": ranges, "edge": edge}
        )
        self._ask(key, cell, phase, seed)

    def _count_in(
        self, key: str, cell: Cell, phase: str, params: dict[str, Any], seed: Any, edge: bool
    ) -> None:
        """Count a trial handed out before the interruption as this state would have."""
        self.handed[key] = (Pending(cell, params, seed, phase), edge)
        if phase == SEARCH and edge:
            self.edge_trials[cell.key] += 1
        elif phase == SEARCH:
            self.assigned[cell.key] += 1
        else:  # a confirmation or check handed out already
            if phase == CONFIRM:
                self._queue_confirmations(only=cell)  # if this state had not yet
            elif phase == RULE:
                self._queue_rule_test(force=True)
            else:
                level = (cell.key, int(params["budget_steps"]), int(params.get("lr_step", 0)))
                self.queued_levels.add(level + ((phase,) if phase in (JUDGE, BUDGET_FREE) else ()))
            self.pending = [
                p for p in self.pending if not p.same_run(cell.key, seed, phase, params)
            ]

    def _forget(self, key: str) -> None:
        """Undo the handing out of a trial (`handed` says what it ran): its cell's share, or
        its confirmation or check, goes to the next trial asked for."""
        cell_key, _, phase = self.trials.pop(key)
        self.finished.discard(key)
        self._live.pop(key, None)
        self.changes += 1
        run, edge = self.handed.pop(key, (None, False))
        if phase == SEARCH:
            self.edge_trials[cell_key] -= 1 if edge else 0
            self.assigned[cell_key] -= 0 if edge else 1
        elif run is not None:
            self.pending.insert(0, run)

    def _hand_back(self, key: str) -> None:
        """Undo the handing out of a trial Tune never started, as Optuna recorded it."""
        cell_key, number, phase = self.trials[key]
        cell = next(c for c in self.cells if c.key == cell_key)
        trial = (self.checks_study() if phase in PROBES else self.study(cell)).trials[number]
        run = Pending(
            cell, trial_params(self.space, cell, trial), trial.user_attrs.get("seed"), phase
        )
        self.handed[key] = (run, bool(trial.user_attrs.get("edge")))
        self._forget(key)
