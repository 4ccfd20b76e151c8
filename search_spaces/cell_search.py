"""The search itself, without Ray: one Optuna study per cell, a fair share of trials for every
cell, a confirmation phase with fresh seeds, and the study's own checks of its answer.

- **Per-cell tuning.** Each cell (`search_spaces.cells`: a batch size, per optimiser) has its
  own Optuna study in the study's storage (`NAME/b512`): scrambled Sobol points over the cell's
  space, as Shallue et al. tune every batch size, so nothing at batch B comes from another batch
  size's winners. The points are scipy's Sobol sequence, drawn here and enqueued: trial k of a
  cell gets point k whatever the concurrency and whatever finished first (Optuna's QMCSampler
  samples at random until a trial has completed, so its first points depended on timing).
- **Range edges.** When a cell's best trial leaves its search open on one side (no lr tried
  beyond it, and it lies in the outer fifth of the lr range: `spaces.lr_edge`), the cell gets an
  extra search trial: that best configuration one step (x3) further out, and its range grows
  to include it for its remaining points; again while the best keeps moving, up to
  `EDGE_TRIALS`: a line search out of the range. A best still open at the end is
  under-searched, not degraded.
- **Fair shares.** Search trials go round robin over the cells, batch size first.
- **Confirmation.** When a cell's search trials have all finished, its best completed
  configuration is run again with `seeds` fresh seeds (initial weights and batch order). Their
  mean and spread are the cell's unbiased accuracy: the best search trial itself is the maximum
  of several and reads high (science.md section 8).
- **Checks** (`search_spaces.checks`). A cell confirmed short of the baseline by more than the
  tolerance runs its best configuration again, same seeds, at half and twice its lr and with
  twice the steps, while they help, up to the cap (`extend` runs). Once the baseline's search
  is done, the rule test runs its best configuration moved to every batch size by each rule
  (`rule` runs).
  Both are recorded in the study's `checks` Optuna study (they are no point of any cell's
  search).

Here: handing out search trials, range edges, the studies and the outcomes; the phases after
the search are `search_spaces.later_phases`, a resume's reconciliation
`search_spaces.reconcile`, where a search point comes from `search_spaces.search_points`
(mixins of `CellSearch`), the shared run types `search_spaces.runs`.

Outcomes reach Optuna honestly: a trial that ran its full budget is COMPLETE with its final
value; one stopped early by ASHA or diverged is PRUNED (with its intermediate values), so a
search never takes a truncated accuracy for a final one; an errored one is FAIL.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search_spaces.cells import Cell
from search_spaces.later_phases import LaterPhases
from search_spaces.reconcile import Reconciling
from search_spaces.runs import (
    BUDGET_FREE,
    CHECKS_STUDY,
    CONFIRM,
    EXTEND,
    FINAL,
    FINISHED,
    JUDGE,
    PROBES,
    RULE,
    SEARCH,
    Pending,
    Suggestion,
    run_key,
    trial_params,
)
from search_spaces.search_points import EDGE_TRIALS, EdgeFacts, SearchPoints
from search_spaces.spaces import (
    SearchSpace,
    suggest,
)

# the names the study's other modules and tests know this module by
__all__ = [
    "CHECKS_STUDY",
    "CONFIRM",
    "EDGE_TRIALS",
    "EXTEND",
    "FINISHED",
    "RULE",
    "JUDGE",
    "SEARCH",
    "BUDGET_FREE",
    "CellSearch",
    "Pending",
    "Suggestion",
    "trial_params",
]


def record_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def default_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """A cell study's sampler: never asked for a search point (every point is enqueued, see
    `SearchPoints._sobol_point`); seeded, so that nothing in a study is left to chance."""
    return optuna.samplers.RandomSampler(seed=seed)


class CellSearch(Reconciling, LaterPhases, SearchPoints):
    """Hand out trials over the cells of a study and learn from their outcomes (no Ray)."""

    def __init__(
        self,
        *,
        study_name: str,
        storage: Any,
        cells: list[Cell],
        search_trials: int,
        seeds: int,
        space: SearchSpace,
        reference_batch: int,
        seed: int,
        mode: str = "max",
        tolerance: float = 0.01,
        max_steps: int = 0,
        max_data_multiple: float = 0.0,
        rule_test: bool = True,
        checks: bool = True,
        equal_data: bool = True,
        budget_free_steps: bool = False,
        target_warmup: int = 0,
        sampler: Callable[[int], optuna.samplers.BaseSampler] = default_sampler,
    ):
        self.study_name, self.cells = study_name, list(cells)
        self.search_trials, self.seeds = search_trials, seeds
        self.space, self.ref, self.seed = space, reference_batch, seed
        self.direction = "maximize" if mode == "max" else "minimize"
        self.sign = 1 if mode == "max" else -1
        # Checks: a batch size short of the baseline by more than `tolerance` gets more steps,
        # up to `max_steps`, else `max_data_multiple` x the baseline's examples (0 for both:
        # twice the longest budget any trial of the study had, as studies made before did).
        self.tolerance, self.max_steps, self.rule_test = tolerance, max_steps, rule_test
        self.max_data_multiple = max_data_multiple
        self.run_checks = checks  # the lr and more-steps checks
        # with the checks: each batch size at the baseline's data too (`checks.equal_data_run`)
        self.equal_data = checks and equal_data
        # each batch size's best configuration run budget-free (`later_phases.FREE_LR_STEPS`)
        self.budget_free_steps, self.target_warmup = budget_free_steps, target_warmup
        self.sampler = sampler
        # Doublings of the baseline's steps started ahead of the checks that ask for them
        # (`checks.baseline_ahead`; set by the experiment from the slots it has): the levels
        # started so, and those of them no check can use any more (`unneeded`)
        self.ahead = 0
        self.ahead_levels: set[tuple[int, int]] = set()
        self.unwanted: set[tuple[int, int]] = set()
        self.assigned = {c.key: 0 for c in self.cells}  # search trials per cell
        self.trials: dict[str, tuple[str, int, str]] = {}  # key -> (cell key, number, phase)
        # key -> what it runs and whether it is an edge trial: to hand it out again where a
        # resume finds it in neither Optuna's record nor Tune's
        self.handed: dict[str, tuple[Pending, bool]] = {}
        self.finished: set[str] = set()
        self.confirmed: set[str] = set()  # cells whose confirmation runs were handed out
        self.pending: list[Pending] = []  # confirmations and checks to hand out
        # Each cell's lr range per optimiser, as range extensions have grown it.
        self.ranges = {c.key: {o: tuple(space.base_lr[o]) for o in space.optimizers} for c in cells}
        self.edge_trials = {c.key: 0 for c in self.cells}  # range extensions handed out
        # (cell, steps, lr step) checked, and with JUDGE appended: run again with fresh seeds
        self.queued_levels: set[tuple] = set()
        self.rule_queued = False
        # Bumped by whatever can make a confirmation, check or the rule test due (a trial's
        # end, a resume): `suggest` looks for new runs to queue only then. Looking on every
        # call read every trial from Optuna ten times a second while trials ran (issue 33).
        self.changes, self.looked_at = 0, -1
        self._storage = storage
        self._studies: dict[str, optuna.Study] = {}
        # Running trials' Optuna handles: opening one reads the trial back from the
        # database, which every evaluation did (1.4 of the driver's 29 CPU-s, issue 33).
        self._live: dict[str, tuple[optuna.Study, optuna.Trial]] = {}
        self._no_edge: dict[str, tuple[int, int]] = {}  # cell -> when it last had no edge point
        self._edge_facts: dict[str, EdgeFacts] = {}  # cell -> what the edge rule reads of it
        # Optuna's records of trials lost in an interruption, by the run they were
        # (`runs.run_key`): found by `reconcile`, adopted by that run's next hand-out
        self.lost: dict[tuple, list[int]] = {}

    # --- state that survives a pickle (the storage is reattached by the caller) ------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"], state["_studies"], state["_live"], state["_no_edge"] = None, {}, {}, {}
        state["_edge_facts"] = {}  # read again from Optuna's record (search_points.EdgeFacts)
        state["lost"] = {}  # found again by the next resume's reconcile
        return state

    def attach(self, storage: Any) -> None:
        """Reopen the studies in `storage` (after unpickling, on whichever machine)."""
        self._storage, self._studies, self._live, self._no_edge = storage, {}, {}, {}
        self._edge_facts = {}  # read again from the record in `storage` (EdgeFacts)
        self.lost = {}
        self.__dict__.setdefault("handed", {})  # a state saved before it kept this
        self.__dict__.setdefault("equal_data", False)  # a study started without equal-data runs
        self.__dict__.setdefault("budget_free_steps", False)  # ... or budget-free runs
        self.__dict__.setdefault("target_warmup", 0)
        self.__dict__.setdefault("ahead", 0)
        self.__dict__.setdefault("ahead_levels", set())
        self.__dict__.setdefault("unwanted", set())
        self.changes, self.looked_at = self.__dict__.get("changes", 0) + 1, -1

    @property
    def storage_url(self) -> str:
        return getattr(self._storage, "url", "")

    # --- the studies -----------------------------------------------------------------------

    def study(self, cell: Cell) -> optuna.Study:
        if cell.key not in self._studies:
            index = self.cells.index(cell)
            self._studies[cell.key] = optuna.create_study(
                study_name=f"{self.study_name}/{cell.key}",
                storage=self._storage,
                sampler=self.sampler(self.seed * 1009 + index),
                direction=self.direction,
                load_if_exists=True,
            )
        return self._studies[cell.key]

    def checks_study(self) -> optuna.Study:
        """Where the checks' runs are recorded (`NAME/checks`)."""
        if CHECKS_STUDY not in self._studies:
            self._studies[CHECKS_STUDY] = optuna.create_study(
                study_name=f"{self.study_name}/{CHECKS_STUDY}",
                storage=self._storage,
                sampler=self.sampler(self.seed),
                direction=self.direction,
                load_if_exists=True,
            )
        return self._studies[CHECKS_STUDY]

    def record_of(self, key: str) -> tuple[str, int] | None:
        """The Optuna study (its name) and trial number that record trial `key`."""
        if key not in self.trials:
            return None
        cell, number, phase = self.trials[key]
        return f"{self.study_name}/{CHECKS_STUDY if phase in PROBES else cell}", number

    def cell_of(self, key: str) -> Cell:
        return next(c for c in self.cells if c.key == self.trials[key][0])

    # --- handing out trials ----------------------------------------------------------------

    @property
    def running(self) -> int:
        """Trials handed out whose end it has not been told (reconciled with Tune on resume)."""
        return len(set(self.trials) - self.finished)

    def suggest(self, key: str) -> Suggestion | str | None:
        """The next trial for Tune trial `key`; None: nothing yet (try later); FINISHED."""
        for cell in self.cells:
            params = self._edge_point(cell)
            if params is not None:
                self.edge_trials[cell.key] += 1
                return self._ask_search(key, cell, params, edge=True)
        if sum(self.assigned.values()) < self.search_trials:
            cell = min(self.cells, key=lambda c: (self.assigned[c.key], self.cells.index(c)))
            index = self.assigned[cell.key]
            self.assigned[cell.key] += 1
            return self._ask_search(key, cell, self._sobol_point(cell, index))
        if self.looked_at != self.changes:
            self.looked_at = self.changes
            self._queue_confirmations()
            self._queue_rule_test()
            self._queue_extensions()
            self._queue_budget_free()
        if self.pending:
            run = self.pending.pop(0)
            self.handed[key] = (run, False)
            if run.phase == CONFIRM:
                fixed = self._optuna_params(run.cell, run.params)
                trial = self._adopt(run.cell, CONFIRM, run.seed, fixed)
                if trial is None:
                    self.study(run.cell).enqueue_trial(fixed)
                return self._ask(key, run.cell, CONFIRM, run.seed, trial)
            return self._ask_check(key, run)
        if len(self.confirmed) == len(self.cells) and set(self.trials) <= self.finished:
            return FINISHED  # everything ran and nothing it showed calls for another run
        return None

    def _ask_search(
        self, key: str, cell: Cell, params: dict[str, Any], edge: bool = False
    ) -> Suggestion:
        ranges = {o: list(r) for o, r in self.ranges[cell.key].items()}
        fixed = self._optuna_params(cell, params)
        trial = self._adopt(cell, SEARCH, self.seed, fixed)
        if trial is None:
            self.study(cell).enqueue_trial(fixed, user_attrs={"lr_range": ranges, "edge": edge})
        self.handed[key] = (Pending(cell, params, self.seed, SEARCH), edge)
        if edge:
            self._edge_trial_out(cell)
        return self._ask(key, cell, SEARCH, self.seed, trial)

    def _adopt(
        self, cell: Cell, phase: str, seed: int, params: dict[str, Any]
    ) -> optuna.Trial | None:
        """The Optuna record of this run lost in an interruption (`reconcile`), if any: the run
        handed out again takes its trial number, as in a study never interrupted (its partial
        training is not resumed: Tune never saved the trial, so it starts over)."""
        numbers = self.lost.get(run_key(cell.key, phase, seed, params))
        if not numbers:
            return None
        study = self.checks_study() if phase in PROBES else self.study(cell)
        trial = optuna.Trial(study, record_id(study, numbers.pop(0)))
        trial.set_user_attr("lost_tune_trial_id", trial.user_attrs.get("tune_trial_id"))
        return trial

    def _ask(
        self, key: str, cell: Cell, phase: str, seed: int, trial: optuna.Trial | None = None
    ) -> Suggestion:
        trial = trial or self.study(cell).ask()
        with warnings.catch_warnings():  # an extended range's lr is "out of range": meant
            warnings.simplefilter("ignore", UserWarning)
            params = suggest(trial, self.space, cell.batch_size, cell.rule, cell.optimizer)
        for name, value in (("tune_trial_id", key), ("phase", phase), ("seed", seed)):
            trial.set_user_attr(name, value)
        trial.set_user_attr("cell", cell.key)
        self.trials[key] = (cell.key, trial.number, phase)
        return Suggestion(cell, params, phase, seed, trial.number)

    def _ask_check(self, key: str, run: Pending) -> Suggestion:
        trial = self._adopt(run.cell, run.phase, run.seed, run.params) or self.checks_study().ask()
        attrs = {
            "tune_trial_id": key,
            "phase": run.phase,
            "seed": run.seed,
            "cell": run.cell.key,
            "run_params": run.params,
        }
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        self.trials[key] = (run.cell.key, trial.number, run.phase)
        return Suggestion(run.cell, dict(run.params), run.phase, run.seed, trial.number)

    def _params_of(self, cell: Cell, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return trial_params(self.space, cell, trial)

    def best(self, cell: Cell) -> optuna.trial.FrozenTrial | None:
        """The cell's best search trial that ran to its end (ties: the earliest)."""
        done = [
            t
            for t in self.study(cell).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("phase") == SEARCH and t.user_attrs.get("outcome") in FINAL
        ]
        if not done:
            return None
        return max(done, key=lambda t: (self.sign * t.value, -t.number))

    # --- outcomes --------------------------------------------------------------------------

    def _trial(self, key: str) -> tuple[optuna.Study, optuna.Trial]:
        if key in self._live:
            return self._live[key]
        _, number, phase = self.trials[key]
        study = self.checks_study() if phase in PROBES else self.study(self.cell_of(key))
        self._live[key] = study, optuna.Trial(study, record_id(study, number))
        return self._live[key]

    def add_downtime(self, key: str, down: float, up: float) -> None:
        """A running trial was down from `down` to `up` (an interrupted study, from its last
        save to its resume; seconds since the epoch): its record's `down` intervals and their
        total `downtime_s`, which its cost leaves out."""
        if key not in self.trials or key in self.finished:
            return  # (a trial Optuna saw end after this state was saved is finished here)
        study, trial = self._trial(key)
        self._write_down(study, trial._trial_id, down, up)

    def lost_downtime(self, down: float, up: float) -> None:
        """The records lost in the interruption (`reconcile`) were down from `down` to `up`
        too: the run that adopts one starts over after `up`, and neither its cost nor the
        study's wall time counts the interruption."""
        cells = {c.key: c for c in self.cells}
        for (cell_key, phase, _, _), numbers in self.lost.items():
            study = self.checks_study() if phase in PROBES else self.study(cells[cell_key])
            for number in numbers:
                self._write_down(study, record_id(study, number), down, up)

    @staticmethod
    def _write_down(study: optuna.Study, trial_id: int, down: float, up: float) -> None:
        earlier = study._storage.get_trial(trial_id).user_attrs.get("down", [])
        intervals = [*earlier, [down, up]]
        study._storage.set_trial_user_attr(trial_id, "down", intervals)
        study._storage.set_trial_user_attr(trial_id, "downtime_s", sum(b - a for a, b in intervals))

    def report(self, key: str, value: float, step: int) -> None:
        """An intermediate value (one evaluation) of a running trial."""
        if key in self.trials and key not in self.finished:
            with contextlib.suppress(UpdateFinishedTrialError):  # told before an interruption
                self._trial(key)[1].report(value, step)

    def complete(
        self,
        key: str,
        outcome: str,
        value: float | None,
        step: int | None,
        budget_steps: int | None = None,
    ) -> None:
        """A trial has ended: completed / target (final value), stopped / diverged (pruned,
        with its last value as an intermediate one; Optuna ignores a step reported twice),
        errored (failed). `budget_steps`: the steps its budget gave it, as it reported."""
        if key not in self.trials or key in self.finished:
            return
        self.finished.add(key)
        self.changes += 1
        study, trial = self._trial(key)
        del self._live[key]
        try:
            trial.set_user_attr("outcome", outcome)
            if step is not None:  # where it ended: a budget-free run's steps to target
                trial.set_user_attr("end_step", int(step))
            if budget_steps:
                trial.set_user_attr("budget_steps", int(budget_steps))
            if outcome in FINAL and value is not None:
                study.tell(trial, value, state=TrialState.COMPLETE)
            elif outcome in ("stopped", "diverged"):
                if value is not None and step is not None:
                    trial.report(value, step)
                study.tell(trial, None, state=TrialState.PRUNED)
            else:
                study.tell(trial, None, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            # Told already, just before an interruption that came ahead of Tune's next
            # checkpoint of the searcher: Optuna's record stands.
            told = False
        else:
            told = True
        _, number, phase = self.trials[key]
        if phase == SEARCH:  # what the edge rule reads (Optuna fails a NaN value)
            final = value if outcome in FINAL and value is not None else None
            final = None if final is not None and math.isnan(final) else final
            self._edge_trial_ended(key, self.cell_of(key), final, number, told)
