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

Outcomes reach Optuna honestly: a trial that ran its full budget is COMPLETE with its final
value; one stopped early by ASHA or diverged is PRUNED (with its intermediate values), so a
search never takes a truncated accuracy for a final one; an errored one is FAIL.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from scipy.stats import qmc

from search_spaces import checks
from search_spaces.cells import Cell
from search_spaces.spaces import SearchSpace, lr_edge, lr_param, search_rule, suggest

SEARCH, CONFIRM, EXTEND, RULE = "search", "confirm", "extend", "rule"
PROBES = (EXTEND, RULE)  # runs of the checks, recorded in the `checks` Optuna study
CHECKS_STUDY = "checks"
FINISHED = "FINISHED"  # suggest() has nothing more to give, now or later
FINAL = ("completed", "target")  # outcomes with a final value (full budget, or at the target)
EDGE_STEP = 3.0  # a range extension tries the best lr this factor beyond the edge
# Range extensions come on top of a cell's share, at most this many per cell, and only once it
# has this many finished search trials: taken from its share instead, they cut the synthetic
# searches of tests/test_cell_search.py landing within 2x of every optimum from 90% to 70-85%
# (an optimum inside the outer fifth of the range cost a Sobol point for nothing).
EDGE_TRIALS = 3
EDGE_EVIDENCE = 4


@dataclass(frozen=True)
class Suggestion:
    """What one trial runs: its cell, its parameters, its phase and its training seed."""

    cell: Cell
    params: dict[str, Any]  # with `budget_steps` for a run of another budget than the study's
    phase: str
    seed: int
    number: int  # the trial's number in its Optuna study (the cell's, or `checks`)


@dataclass(frozen=True)
class Pending:
    """A run waiting to be handed out: a confirmation or a check."""

    cell: Cell
    params: dict[str, Any]
    seed: int
    phase: str

    def same_run(self, cell_key: str, seed: int, phase: str, params: dict[str, Any]) -> bool:
        return (self.cell.key, self.seed, self.phase) == (cell_key, seed, phase) and all(
            self.params.get(k) == params.get(k) for k in ("scaling_rule", "budget_steps", "lr_step")
        )


def default_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """A cell study's sampler: never asked for a search point (every point is enqueued, see
    `CellSearch._sobol_point`); seeded, so that nothing in a study is left to chance."""
    return optuna.samplers.RandomSampler(seed=seed)


def sobol_unit(seed: int, index: int, dims: int) -> list[float]:
    """Point `index` of a scrambled Sobol sequence in [0, 1)^dims (scipy; the first 2^m points
    are drawn, so the sequence keeps its balance properties)."""
    m = max(0, math.ceil(math.log2(index + 1)))
    return qmc.Sobol(dims, scramble=True, seed=seed).random_base2(m)[index].tolist()


def trial_params(space: SearchSpace, cell: Cell, trial: Any) -> dict[str, Any]:
    """An Optuna trial's parameters in the trial config's names (a check's: as it ran)."""
    if "run_params" in trial.user_attrs:
        return dict(trial.user_attrs["run_params"])
    optimizer = cell.optimizer or trial.params["optimizer"]
    per_optimizer = cell.optimizer is None and len(space.optimizers) > 1
    return {
        "batch_size": cell.batch_size,
        "scaling_rule": cell.rule or trial.params.get("scaling_rule") or search_rule(space),
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
        tolerance: float = 0.01,
        max_steps: int = 0,
        rule_test: bool = True,
        checks: bool = True,
        equal_data: bool = True,
        sampler: Callable[[int], optuna.samplers.BaseSampler] = default_sampler,
    ):
        self.study_name, self.cells = study_name, list(cells)
        self.search_trials, self.seeds = search_trials, seeds
        self.space, self.ref, self.seed = space, reference_batch, seed
        self.direction = "maximize" if mode == "max" else "minimize"
        self.sign = 1 if mode == "max" else -1
        # Checks: a batch size short of the baseline by more than `tolerance` gets more steps,
        # up to `max_steps` (0: twice the longest budget any trial of the study had).
        self.tolerance, self.max_steps, self.rule_test = tolerance, max_steps, rule_test
        self.run_checks = checks  # the lr and more-steps checks
        # with the checks: each batch size at the baseline's data too (`checks.equal_data_run`)
        self.equal_data = checks and equal_data
        self.sampler = sampler
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
        self.queued_levels: set[tuple[str, int, int]] = set()  # (cell, steps, lr step) checked
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

    # --- state that survives a pickle (the storage is reattached by the caller) ------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"], state["_studies"], state["_live"], state["_no_edge"] = None, {}, {}, {}
        return state

    def attach(self, storage: Any) -> None:
        """Reopen the studies in `storage` (after unpickling, on whichever machine)."""
        self._storage, self._studies, self._live, self._no_edge = storage, {}, {}, {}
        self.__dict__.setdefault("handed", {})  # a state saved before it kept this
        self.__dict__.setdefault("equal_data", False)  # a study started without equal-data runs
        self.changes, self.looked_at = self.__dict__.get("changes", 0) + 1, -1

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
          its cell's share); a running one only where Tune will resume it (else nothing would
          ever finish it, and its cell would wait for it forever: it is left to
          `close_lost_trials`, and its cell gets another).
        - A trial this state handed out that Tune never heard of is handed out again.
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
                        changed += 1
                    continue
                if not done and not tune_has:
                    continue  # lost in the interruption: never resumed, never finished
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
        return changed

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
                self.queued_levels.add(
                    (cell.key, int(params["budget_steps"]), int(params.get("lr_step", 0)))
                )
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
        if self.pending:
            run = self.pending.pop(0)
            self.handed[key] = (run, False)
            if run.phase == CONFIRM:
                self.study(run.cell).enqueue_trial(self._optuna_params(run.cell, run.params))
                return self._ask(key, run.cell, CONFIRM, run.seed)
            return self._ask_check(key, run)
        if len(self.confirmed) == len(self.cells) and set(self.trials) <= self.finished:
            return FINISHED  # everything ran and nothing it showed calls for another run
        return None

    def _ask_search(
        self, key: str, cell: Cell, params: dict[str, Any], edge: bool = False
    ) -> Suggestion:
        ranges = {o: list(r) for o, r in self.ranges[cell.key].items()}
        self.study(cell).enqueue_trial(
            self._optuna_params(cell, params), user_attrs={"lr_range": ranges, "edge": edge}
        )
        self.handed[key] = (Pending(cell, params, self.seed, SEARCH), edge)
        return self._ask(key, cell, SEARCH, self.seed)

    def _ask(self, key: str, cell: Cell, phase: str, seed: int) -> Suggestion:
        trial = self.study(cell).ask()
        with warnings.catch_warnings():  # an extended range's lr is "out of range": meant
            warnings.simplefilter("ignore", UserWarning)
            params = suggest(trial, self.space, cell.batch_size, cell.rule, cell.optimizer)
        for name, value in (("tune_trial_id", key), ("phase", phase), ("seed", seed)):
            trial.set_user_attr(name, value)
        trial.set_user_attr("cell", cell.key)
        self.trials[key] = (cell.key, trial.number, phase)
        return Suggestion(cell, params, phase, seed, trial.number)

    def _ask_check(self, key: str, run: Pending) -> Suggestion:
        trial = self.checks_study().ask()
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

    def _optuna_params(self, cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters under the names its cell's study uses."""
        per_optimizer = cell.optimizer is None and len(self.space.optimizers) > 1
        named = {
            lr_param(params["optimizer"], per_optimizer): params["base_lr"],
            "weight_decay": params["weight_decay"],
        }
        if cell.optimizer is None:
            named["optimizer"] = params["optimizer"]
        if self.space.warmup_fraction[1] > 0:
            named["warmup_fraction"] = params["warmup_fraction"]
        return named

    def _sobol_point(self, cell: Cell, index: int) -> dict[str, Any]:
        """The cell's `index`-th Sobol point over its space (its lr range as extended)."""
        optimizers = [cell.optimizer] if cell.optimizer else list(self.space.optimizers)
        u = sobol_unit(self.seed * 1009 + self.cells.index(cell), index, 4)
        optimizer = optimizers[min(int(u[3] * len(optimizers)), len(optimizers) - 1)]
        rule = cell.rule or search_rule(self.space)

        def log_uniform(unit: float, bounds: tuple[float, float]) -> float:
            low, high = math.log(bounds[0]), math.log(bounds[1])
            return math.exp(low + unit * (high - low))

        low, high = self.space.warmup_fraction
        return {
            "batch_size": cell.batch_size,
            "scaling_rule": rule,
            "optimizer": optimizer,
            "base_lr": log_uniform(u[0], self.ranges[cell.key][optimizer]),
            "weight_decay": log_uniform(u[1], self.space.weight_decay),
            "warmup_fraction": low + u[2] * (high - low),
        }

    def _edge_point(self, cell: Cell, peek: bool = False) -> dict[str, Any] | None:
        """The cell's best configuration one step (x3) further out, when the best leaves the
        search open on that side (`spaces.lr_edge`); the range grows to include it. None
        otherwise."""
        if self.edge_trials[cell.key] >= EDGE_TRIALS or cell.key in self.confirmed:
            return None
        # None stays None until a trial ends or an edge trial is handed out: every `suggest`
        # asked, and read all the cell's trials each time (O(trials^2) over a study, issue 33)
        memo = (self.changes, self.edge_trials[cell.key])
        if self._no_edge.get(cell.key) == memo:
            return None
        found = self._find_edge_point(cell, peek)
        if found is None:
            self._no_edge[cell.key] = memo
        return found

    def _find_edge_point(self, cell: Cell, peek: bool) -> dict[str, Any] | None:
        mine = [t for t in self.study(cell).get_trials(deepcopy=False) if t.params]
        searched = [t for t in mine if t.user_attrs.get("phase") == SEARCH]
        if any(t.user_attrs.get("edge") and not t.state.is_finished() for t in searched):
            return None  # the last step out is still running
        searched = [t for t in searched if t.state.is_finished()]
        if len(searched) < EDGE_EVIDENCE:
            return None  # a best among few points is on an edge by chance as often as not
        best = self.best(cell)
        if best is None:
            return None
        params = self._params_of(cell, best)
        optimizer, lr = params["optimizer"], params["base_lr"]
        tried = [self._params_of(cell, t)["base_lr"] for t in searched]
        low, high = self.ranges[cell.key][optimizer]
        side = lr_edge(lr, tried, low, high)
        if side is None:
            return None
        lr = lr / EDGE_STEP if side == "lower" else lr * EDGE_STEP
        if not peek:
            self.ranges[cell.key][optimizer] = (min(low, lr), max(high, lr))
        return {**params, "base_lr": lr}

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

    def _search_done(self, cell: Cell) -> bool:
        keys = [k for k, (c, _, p) in self.trials.items() if c == cell.key and p == SEARCH]
        return (
            len(keys) >= self.assigned[cell.key] + self.edge_trials[cell.key]
            and set(keys) <= self.finished
            and self._edge_point(cell, peek=True) is None
        )

    def _queue_confirmations(self, only: Cell | None = None) -> None:
        """Queue `seeds` fresh-seed runs of each cell's best, once its search has finished
        (`only`: that cell, whose search Optuna's record says has finished)."""
        for cell in [only] if only else self.cells:
            if cell.key in self.confirmed or (not only and not self._search_done(cell)):
                continue
            self.confirmed.add(cell.key)
            best = self.best(cell)
            if best is None or self.seeds < 1:
                continue  # nothing finished its budget in this cell: nothing to confirm
            params = self._params_of(cell, best)
            self.pending += [
                Pending(cell, params, self.seed + s, CONFIRM) for s in range(1, self.seeds + 1)
            ]

    # --- the checks --------------------------------------------------------------------------

    def baseline_cell(self) -> Cell | None:
        """The best searched cell of the smallest batch size, once all its cells are searched."""
        smallest = min(c.batch_size for c in self.cells)
        first = [c for c in self.cells if c.batch_size == smallest]
        if not all(c.key in self.confirmed for c in first):
            return None
        scored = [(c, self.best(c)) for c in first]
        scored = [(c, b) for c, b in scored if b is not None]
        if not scored:
            return None
        return max(scored, key=lambda cb: self.sign * cb[1].value)[0]

    def _queue_rule_test(self, force: bool = False) -> None:
        """Once the baseline's search is done: its best configuration moved to every other
        batch size by each rule, with the confirmation seeds (`search_spaces.checks`)."""
        if self.rule_queued or not self.rule_test or self.seeds < 1:
            return
        smallest = min(c.batch_size for c in self.cells)
        base = self.baseline_cell()
        if base is None:
            if force:  # a resumed state whose database has rule runs: the baseline is known
                for c in self.cells:
                    if c.batch_size == smallest:
                        self._queue_confirmations(only=c)
                base = self.baseline_cell()
            if base is None:
                return
        self.rule_queued = True
        best = self._params_of(base, self.best(base))
        for rule in self.space.scaling_rules:
            for cell in self.cells:
                if cell.batch_size == smallest or cell.optimizer not in (None, best["optimizer"]):
                    continue
                if cell.rule not in (None, rule):
                    continue
                params = checks.rule_test_params(best, smallest, cell.batch_size, rule, self.ref)
                self.pending += [
                    Pending(cell, params, self.seed + s, RULE) for s in range(1, self.seeds + 1)
                ]

    def _runs(self, cell: Cell, phase: str) -> list[optuna.trial.FrozenTrial]:
        """The cell's handed-out runs of a phase (confirm: its study; checks: `checks`)."""
        study = self.checks_study() if phase in PROBES else self.study(cell)
        return [
            t
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("phase") == phase
            and t.user_attrs.get("cell", cell.key) == cell.key
            and t.user_attrs.get("tune_trial_id") in self.trials
        ]

    def _mean(self, runs: list[optuna.trial.FrozenTrial]) -> float:
        values = [t.value for t in runs if t.state == TrialState.COMPLETE]
        return sum(values) / len(values) if values else math.nan

    def levels(
        self, cell: Cell, ended_only: bool = False
    ) -> tuple[int, dict[tuple[int, int], float]] | None:
        """The cell's own budget and the mean value of each level run so far: (steps, k) ->
        mean, its confirmation runs at (own budget, 0), the checks' runs at their budget and
        lr x 2^k; None while a level still has a run going (`ended_only`: that level left out,
        as if not run: the baseline's longer runs hold up no other batch size's check)."""
        confirm = self._runs(cell, CONFIRM)
        if len(confirm) < self.seeds or not all(t.state.is_finished() for t in confirm):
            return None
        steps = [t.user_attrs.get("budget_steps") for t in confirm]
        steps = [int(s) for s in steps if s]
        if not steps:
            return None  # every run errored before its first report
        own = max(steps)
        results = {(own, 0): self._mean(confirm)}
        checked: dict[tuple[int, int], list[optuna.trial.FrozenTrial]] = {}
        for t in self._runs(cell, EXTEND):
            run = t.user_attrs["run_params"]
            level = (int(run["budget_steps"]), int(run.get("lr_step", 0)))
            checked.setdefault(level, []).append(t)
        for level, runs in checked.items():
            if len(runs) < self.seeds or not all(t.state.is_finished() for t in runs):
                if level[0] < own or ended_only:  # an equal-data run: no decision waits for it
                    continue
                return None
            results[level] = self._mean(runs)
        return own, results

    def step_cap(self) -> int:
        """The most steps a check may give a run: `max_steps`, else twice the longest budget
        any trial of the study has had."""
        if self.max_steps:
            return self.max_steps
        longest = [
            int(t.user_attrs["budget_steps"])
            for c in self.cells
            for t in self.study(c).get_trials(deepcopy=False)
            if t.user_attrs.get("budget_steps")
        ]
        return 2 * max(longest, default=0)

    def _queue_extensions(self) -> None:
        """Check every confirmed cell short of the baseline: half and twice its lr, then twice
        its steps, while they help (`checks.budget_check`); and run each one whose budget gave
        it other data than the baseline's for the baseline's examples (`checks.equal_data_run`),
        once the baseline's lr is settled."""
        if not self.run_checks:
            return
        base = self.baseline_cell()
        base_levels = self.levels(base, ended_only=True) if base is not None else None
        if not base_levels:
            return
        own, results = base_levels
        if not math.isfinite(results[(own, 0)]):
            return
        center, runs = checks.baseline_check(results, own, self.tolerance, self.sign)
        if runs:  # the baseline's own lr first: every other batch size is judged against it
            self._queue_levels(base, runs)
            return
        # the baseline at each multiple of its budget run so far, at its checked lr
        baseline = {
            steps // own: value
            for (steps, k), value in results.items()
            if k == center[1] and steps >= own and steps % own == 0
        }
        for cell in self.cells:
            if cell.batch_size == base.batch_size or cell.key not in self.confirmed:
                continue
            levels = self.levels(cell)
            if levels is None:
                continue
            check = checks.budget_check(
                baseline, levels[1], levels[0], self.tolerance, self.step_cap(), self.sign
            )
            self._queue_levels(cell, check.runs)
            self._queue_levels(base, tuple((m * own, center[1]) for m in check.baseline_runs))
            # and at the baseline's data, where its budget gave it other data: its confirmed
            # configuration, then the lr line search the baseline had (half and twice the lr)
            equal = checks.equal_data_run(levels[0], cell.batch_size, own, base.batch_size)
            if equal is not None and self.equal_data and self.best(cell) is not None:
                runs: tuple[tuple[int, int], ...] = ((equal, 0),)
                if (equal, 0) in levels[1]:
                    _, runs = checks.baseline_check(levels[1], equal, self.tolerance, self.sign)
                self._queue_levels(cell, runs)

    def _queue_levels(self, cell: Cell, levels: tuple[tuple[int, int], ...]) -> None:
        """Queue the cell's best configuration at each (steps, k) level not queued yet: its
        budget `steps`, its lr x 2^k, the confirmation seeds."""
        best = self._params_of(cell, self.best(cell))
        for steps, k in levels:
            if (cell.key, steps, k) in self.queued_levels:
                continue
            self.queued_levels.add((cell.key, steps, k))
            params = {
                **best,
                "base_lr": best["base_lr"] * 2.0**k,
                "budget_steps": steps,
                "lr_step": k,
            }
            self.pending += [
                Pending(cell, params, self.seed + s, EXTEND) for s in range(1, self.seeds + 1)
            ]

    # --- outcomes --------------------------------------------------------------------------

    def _trial(self, key: str) -> tuple[optuna.Study, optuna.Trial]:
        if key in self._live:
            return self._live[key]
        _, number, phase = self.trials[key]
        study = self.checks_study() if phase in PROBES else self.study(self.cell_of(key))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self._live[key] = study, optuna.Trial(study, trial_id)
        return self._live[key]

    def add_downtime(self, key: str, down: float, up: float) -> None:
        """A running trial was down from `down` to `up` (an interrupted study, from its last
        save to its resume; seconds since the epoch): its record's `down` intervals and their
        total `downtime_s`, which its cost leaves out."""
        if key not in self.trials or key in self.finished:
            return  # (a trial Optuna saw end after this state was saved is finished here)
        study, trial = self._trial(key)
        earlier = study._storage.get_trial(trial._trial_id).user_attrs.get("down", [])
        intervals = [*earlier, [down, up]]
        trial.set_user_attr("down", intervals)
        trial.set_user_attr("downtime_s", sum(b - a for a, b in intervals))

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
            return
