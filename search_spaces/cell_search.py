"""The search itself, without Ray: one Optuna study per cell, a fair share of trials for every
cell, transfer from the neighbouring batch size, and a confirmation phase with fresh seeds.

- **Per-cell tuning.** Each cell (`search_spaces.cells`) has its own Optuna study and sampler in
  the study's storage (`NAME/b512-linear`): quasi-random (Sobol) points over the cell's space,
  as Shallue et al. tune every batch size, so nothing at batch B comes from another batch
  size's winners. (A joint TPE pins the batch size but draws the other parameters from a
  candidate chosen on every batch size's accuracy, so large batches inherit small-batch winners;
  tests/test_cell_search.py measures the difference on a synthetic objective.)
- **Learning across batch sizes.** Once the next smaller batch size's cell has a finished best
  trial, its parameters, in batch-independent units (base lr at the reference batch, scaled by
  the cell's rule; weight decay; warmup as a fraction of the budget), are tried once in the
  larger cell: the rule's own prediction, Goyal et al.'s recipe. Everything else the cell learns
  from itself.
- **Fair shares.** Search trials go round robin over the cells, batch size first.
- **Confirmation.** When a cell's search trials have all finished, its best completed
  configuration is run again with `seeds` fresh seeds (initial weights and batch order). Their
  mean and spread are the cell's unbiased accuracy: the best search trial itself is the maximum
  of several and reads high (science.md section 8).

Outcomes reach Optuna honestly: a trial that ran its full budget is COMPLETE with its final
value; one stopped early by ASHA or diverged is PRUNED (with its intermediate values), so the
sampler never takes a truncated accuracy for a final one; an errored one is FAIL.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search_spaces.cells import Cell, neighbour_below
from search_spaces.spaces import SearchSpace, lr_param, suggest, warmup_acts
from trainables.optim import scaled_lr, scaling_factor

SEARCH, CONFIRM = "search", "confirm"
FINISHED = "FINISHED"  # suggest() has nothing more to give, now or later
FINAL = ("completed", "target")  # outcomes with a final value (full budget, or at the target)


@dataclass(frozen=True)
class Suggestion:
    """What one trial runs: its cell, its parameters, its phase and its training seed."""

    cell: Cell
    params: dict[str, Any]
    phase: str
    seed: int
    number: int  # the trial's number in its cell's Optuna study


def default_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """A cell's sampler: scrambled Sobol points, Shallue et al.'s quasi-random search.

    Measured on the synthetic objective of tests/test_cell_search.py (40 seeded searches, 8
    trials per batch size): every batch size's best lr within 2x of its optimum in 93% of
    searches, against 35% for a per-cell TPE (it needs more points than a cell has to model)
    and 82% for one joint TPE over all batch sizes.
    """
    with warnings.catch_warnings():  # experimental since Optuna 3.0, and stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(
            qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False
        )


def trial_params(space: SearchSpace, cell: Cell, trial: Any) -> dict[str, Any]:
    """An Optuna trial's parameters (its cell's names) in the trial config's names."""
    optimizer = cell.optimizer or trial.params["optimizer"]
    per_optimizer = cell.optimizer is None and len(space.optimizers) > 1
    return {
        "batch_size": cell.batch_size,
        "scaling_rule": cell.rule or trial.params["scaling_rule"],
        "optimizer": optimizer,
        "base_lr": trial.params[lr_param(optimizer, per_optimizer)],
        "weight_decay": trial.params["weight_decay"],
        "warmup_fraction": trial.params.get("warmup_fraction", 0.0),
    }


class CellSearch:
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
        sampler: Callable[[int], optuna.samplers.BaseSampler] = default_sampler,
    ):
        self.study_name, self.cells = study_name, list(cells)
        self.search_trials, self.seeds = search_trials, seeds
        self.space, self.ref, self.seed = space, reference_batch, seed
        self.direction = "maximize" if mode == "max" else "minimize"
        self.sampler = sampler
        self.assigned = {c.key: 0 for c in self.cells}  # search trials per cell
        self.trials: dict[str, tuple[str, int, str]] = {}  # key -> (cell key, number, phase)
        self.finished: set[str] = set()
        self.transferred: set[str] = set()  # cells whose neighbour's best was tried
        self.confirmed: set[str] = set()  # cells whose confirmation runs were handed out
        self.pending: list[tuple[Cell, dict[str, Any], int]] = []  # confirmations to hand out
        self._storage = storage
        self._studies: dict[str, optuna.Study] = {}

    # --- state that survives a pickle (the storage is reattached by the caller) ------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"], state["_studies"] = None, {}
        return state

    def attach(self, storage: Any) -> None:
        """Reopen the studies in `storage` (after unpickling, on whichever machine)."""
        self._storage, self._studies = storage, {}

    def reconcile(self, known_to_tune: set[str] | None = None) -> int:
        """Bring this state in line with Optuna's record and Tune's (the Tune trials of the
        restored experiment, None when unknown); returns how many trials it changed.

        A resumed study restores this state from the searcher's checkpoint, the database from
        its snapshot, and Tune's trials from its own state; on an object store the three can
        come from different moments (Tune uploads them one file after another). Optuna's record
        of a finished trial is taken in (never asked for again, counted in its cell's share); a
        running one only where Tune will resume it (else nothing would ever finish it, and its
        cell would wait for it forever: it is left to `close_lost_trials`, and its cell gets
        another). A trial this state handed out that Tune never heard of is handed out again.
        A transfer already enqueued is not enqueued again.
        """
        changed = 0
        for cell in self.cells:
            for trial in self.study(cell).get_trials(deepcopy=False):
                if trial.user_attrs.get("transferred_from"):
                    self.transferred.add(cell.key)
                key = trial.user_attrs.get("tune_trial_id")
                if key is None:
                    continue
                done = trial.state.is_finished()
                tune_has = known_to_tune is None or key in known_to_tune
                if key in self.trials:
                    if not done and not tune_has and key not in self.finished:
                        self._hand_back(key)
                        changed += 1
                    continue
                if not done and not tune_has:
                    continue  # lost in the interruption: never resumed, never finished
                phase = trial.user_attrs.get("phase", SEARCH)
                self.trials[key] = (cell.key, trial.number, phase)
                if phase == SEARCH:
                    self.assigned[cell.key] += 1
                else:  # a confirmation run handed out already
                    self._queue_confirmations(only=cell)  # if this state had not yet
                    seed = trial.user_attrs.get("seed")
                    self.pending = [
                        p for p in self.pending if not (p[0].key == cell.key and p[2] == seed)
                    ]
                if done:
                    self.finished.add(key)
                changed += 1
        return changed

    def _hand_back(self, key: str) -> None:
        """Undo the handing out of a trial Tune never started: its cell's share, or its
        confirmation seed, goes to the next trial asked for."""
        cell_key, number, phase = self.trials.pop(key)
        cell = next(c for c in self.cells if c.key == cell_key)
        if phase == SEARCH:
            self.assigned[cell_key] -= 1
            return
        trial = self.study(cell).trials[number]
        best = self.best(cell)
        if best is not None:
            seed = trial.user_attrs.get("seed")
            self.pending.insert(0, (cell, self._params_of(cell, best), seed))

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

    def cell_of(self, key: str) -> Cell:
        return next(c for c in self.cells if c.key == self.trials[key][0])

    # --- handing out trials ----------------------------------------------------------------

    def suggest(self, key: str) -> Suggestion | str | None:
        """The next trial for Tune trial `key`; None: nothing yet (try later); FINISHED."""
        if sum(self.assigned.values()) < self.search_trials:
            cell = min(self.cells, key=lambda c: (self.assigned[c.key], self.cells.index(c)))
            self.assigned[cell.key] += 1
            self._offer_transfer(cell)
            return self._ask(key, cell, SEARCH, self.seed)
        self._queue_confirmations()
        if self.pending:
            cell, params, seed = self.pending.pop(0)
            self.study(cell).enqueue_trial(self._optuna_params(cell, params))
            return self._ask(key, cell, CONFIRM, seed)
        if len(self.confirmed) == len(self.cells):
            return FINISHED
        return None

    def _ask(self, key: str, cell: Cell, phase: str, seed: int) -> Suggestion:
        trial = self.study(cell).ask()
        params = suggest(trial, self.space, cell.batch_size, self.ref, cell.rule, cell.optimizer)
        for name, value in (("tune_trial_id", key), ("phase", phase), ("seed", seed)):
            trial.set_user_attr(name, value)
        trial.set_user_attr("cell", cell.key)
        self.trials[key] = (cell.key, trial.number, phase)
        return Suggestion(cell, params, phase, seed, trial.number)

    def _optuna_params(self, cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters under the names its cell's study uses."""
        per_optimizer = cell.optimizer is None and len(self.space.optimizers) > 1
        named = {
            lr_param(params["optimizer"], per_optimizer): params["base_lr"],
            "weight_decay": params["weight_decay"],
        }
        if cell.rule is None:
            named["scaling_rule"] = params["scaling_rule"]
        if cell.optimizer is None:
            named["optimizer"] = params["optimizer"]
        rule = cell.rule or params["scaling_rule"]
        if warmup_acts(rule, cell.batch_size, self.ref) and "warmup_fraction" in params:
            named["warmup_fraction"] = params["warmup_fraction"]
        return named

    def _offer_transfer(self, cell: Cell) -> None:
        """Once the smaller neighbour has a best finished trial, try its recipe here once, at
        the lr theory puts in the middle of where the optimum can be.

        The optimal lr never falls as the batch grows and grows at most linearly with it
        (lr_opt = lr_max / (1 + B_noise / B), McCandlish et al.): from the neighbour's best
        lr at B' it lies in [lr, lr * B / B'] at B, and lr * sqrt(B / B') is within a factor
        sqrt(B / B') of anywhere in that bracket (2 for the usual 4x grid steps).
        """
        below = neighbour_below(cell, self.cells)
        if below is None or cell.key in self.transferred:
            return
        best = self.best(below)
        if best is None:
            return
        params = self._params_of(below, best)
        lr = scaled_lr(params["base_lr"], params["scaling_rule"], below.batch_size, self.ref)
        lr *= math.sqrt(cell.batch_size / below.batch_size)
        if cell.rule is not None:
            params["scaling_rule"] = cell.rule
        low, high = self.space.base_lr[params["optimizer"]]
        factor = scaling_factor(params["scaling_rule"], cell.batch_size, self.ref)
        params["base_lr"] = min(max(lr / factor, low), high)
        named = self._optuna_params(cell, params)
        self.study(cell).enqueue_trial(named, user_attrs={"transferred_from": below.key})
        self.transferred.add(cell.key)

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
        sign = 1 if self.direction == "maximize" else -1
        return max(done, key=lambda t: (sign * t.value, -t.number))

    def _queue_confirmations(self, only: Cell | None = None) -> None:
        """Queue `seeds` fresh-seed runs of each cell's best, once its search has finished
        (`only`: that cell, whose search Optuna's record says has finished)."""
        for cell in [only] if only else self.cells:
            if cell.key in self.confirmed:
                continue
            keys = [k for k, (c, _, p) in self.trials.items() if c == cell.key and p == SEARCH]
            if not only and (len(keys) < self.assigned[cell.key] or not set(keys) <= self.finished):
                continue
            self.confirmed.add(cell.key)
            best = self.best(cell)
            if best is None or self.seeds < 1:
                continue  # nothing finished its budget in this cell: nothing to confirm
            params = self._params_of(cell, best)
            self.pending += [(cell, params, self.seed + s) for s in range(1, self.seeds + 1)]

    # --- outcomes --------------------------------------------------------------------------

    def _trial(self, key: str) -> optuna.Trial:
        cell_key, number, _ = self.trials[key]
        study = self.study(self.cell_of(key))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        return optuna.Trial(study, trial_id)

    def report(self, key: str, value: float, step: int) -> None:
        """An intermediate value (one evaluation) of a running trial."""
        if key in self.trials and key not in self.finished:
            with contextlib.suppress(UpdateFinishedTrialError):  # told before an interruption
                self._trial(key).report(value, step)

    def complete(self, key: str, outcome: str, value: float | None, step: int | None) -> None:
        """A trial has ended: completed / target (final value), stopped / diverged (pruned,
        with its last value as an intermediate one; Optuna ignores a step reported twice),
        errored (failed)."""
        if key not in self.trials or key in self.finished:
            return
        self.finished.add(key)
        trial = self._trial(key)
        study = self.study(self.cell_of(key))
        try:
            trial.set_user_attr("outcome", outcome)
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
            return
