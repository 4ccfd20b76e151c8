"""Where a cell's search points come from (a mixin of `search_spaces.cell_search.CellSearch`):
scrambled Sobol points over its space, and range extensions where its best lr leaves the search
open at an edge (`spaces.lr_edge`). No Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState
from scipy.stats import qmc

from search_spaces.cells import Cell
from search_spaces.runs import FINAL, SEARCH
from search_spaces.spaces import GAP_PREFIX, lr_edge, lr_param, search_rule

EDGE_STEP = 3.0  # a range extension tries the best lr this factor beyond the edge
# Range extensions come on top of a cell's share, at most this many per cell, and only once it
# has this many finished search trials: taken from its share instead, they cut the synthetic
# searches of tests/test_cell_search.py landing within 2x of every optimum from 90% to 70-85%
# (an optimum inside the outer fifth of the range cost a Sobol point for nothing).
EDGE_TRIALS = 3
EDGE_EVIDENCE = 4


def sobol_unit(seed: int, index: int, dims: int) -> list[float]:
    """Point `index` of a scrambled Sobol sequence in [0, 1)^dims (scipy; the first 2^m points
    are drawn, so the sequence keeps its balance properties)."""
    m = max(0, math.ceil(math.log2(index + 1)))
    return qmc.Sobol(dims, scramble=True, seed=seed).random_base2(m)[index].tolist()


class SearchPoints:
    """The search points of `CellSearch` (its `space`, `ranges`, `cells`, `seed`,
    `edge_trials`, `confirmed`, `changes`, `_no_edge`, `_edge_facts`, `handed`, `trials`,
    `study`, `best`, `_params_of`)."""

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
        for name in self.space.gap_params(params["optimizer"]):
            named[GAP_PREFIX + name] = 1 - params[name]
        return named

    def _sobol_point(self, cell: Cell, index: int) -> dict[str, Any]:
        """The cell's `index`-th Sobol point over its space (its lr range as extended)."""
        optimizers = [cell.optimizer] if cell.optimizer else list(self.space.optimizers)
        gaps = self.space.gap_params()  # a dimension each (none: the 4 of studies before them)
        u = sobol_unit(self.seed * 1009 + self.cells.index(cell), index, 4 + len(gaps))
        optimizer = optimizers[min(int(u[3] * len(optimizers)), len(optimizers) - 1)]
        rule = cell.rule or search_rule(self.space)

        def log_uniform(unit: float, bounds: tuple[float, float]) -> float:
            low, high = math.log(bounds[0]), math.log(bounds[1])
            return math.exp(low + unit * (high - low))

        low, high = self.space.warmup_fraction
        own = self.space.gap_params(optimizer)
        return {
            "batch_size": cell.batch_size,
            "scaling_rule": rule,
            "optimizer": optimizer,
            "base_lr": log_uniform(u[0], self.ranges[cell.key][optimizer]),
            "weight_decay": log_uniform(u[1], self.space.weight_decay),
            "warmup_fraction": low + u[2] * (high - low),
            **{  # 1 - value, log-uniform (spaces.suggest)
                name: 1 - log_uniform(u[4 + i], (1 - bounds[1], 1 - bounds[0]))
                for i, name in enumerate(gaps)
                if name in own and (bounds := getattr(self.space, name))
            },
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
        facts = self._edge_facts_of(cell)
        if facts.edges_running:
            return None  # the last step out is still running
        if facts.finished < EDGE_EVIDENCE:
            return None  # a best among few points is on an edge by chance as often as not
        if facts.best is None:
            return None
        low, high = self.ranges[cell.key][facts.best_optimizer]
        side = lr_edge(facts.best_lr, [facts.low, facts.high], low, high)
        if side is None:
            return None
        params = self._params_of(cell, self.best(cell))  # read whole only where it moves
        optimizer, lr = params["optimizer"], params["base_lr"]
        lr = lr / EDGE_STEP if side == "lower" else lr * EDGE_STEP
        if not peek:
            self.ranges[cell.key][optimizer] = (min(low, lr), max(high, lr))
        return {**params, "base_lr": lr}

    # --- what the edge rule reads, kept as trials end ---------------------------------------

    def _edge_facts_of(self, cell: Cell) -> EdgeFacts:
        """The cell's `EdgeFacts`: read from Optuna's record once (a new process, a resume),
        then kept by `_edge_trial_out` and `_edge_trial_ended`."""
        if cell.key not in self._edge_facts:
            self._edge_facts[cell.key] = self._edge_facts_from_record(cell)
        return self._edge_facts[cell.key]

    def _edge_facts_from_record(self, cell: Cell) -> EdgeFacts:
        facts = EdgeFacts()
        for t in self.study(cell).get_trials(deepcopy=False):
            if not t.params or t.user_attrs.get("phase") != SEARCH:
                continue
            if not t.state.is_finished():
                # (a record lost in an interruption runs nowhere: its run, handed out again,
                # adopts it and counts then)
                known = t.user_attrs.get("tune_trial_id") in self.trials
                facts.edges_running += bool(t.user_attrs.get("edge")) and known
                continue
            params = self._params_of(cell, t)
            final = t.state == TrialState.COMPLETE and t.user_attrs.get("outcome") in FINAL
            facts.ended(params["base_lr"], params["optimizer"], t.value if final else None,
                        t.number, self.sign)  # fmt: skip
        return facts

    def _edge_trial_out(self, cell: Cell) -> None:
        """An edge trial of the cell was handed out."""
        facts = self._edge_facts.get(cell.key)
        if facts is not None:
            facts.edges_running += 1

    def _edge_trial_ended(
        self, key: str, cell: Cell, final: float | None, number: int, consistent: bool
    ) -> None:
        """Search trial `key` of the cell ended (`final`: its value, where it ran to its end);
        `consistent`: Optuna's record says what this process told it (else read it again)."""
        facts, handed = self._edge_facts.get(cell.key), self.handed.get(key)
        if facts is None:
            return
        if not consistent or handed is None:
            del self._edge_facts[cell.key]
            return
        run, edge = handed
        facts.edges_running -= edge
        facts.ended(run.params["base_lr"], run.params["optimizer"], final, number, self.sign)


@dataclass
class EdgeFacts:
    """What the edge rule reads of a cell's search trials: how many ended, the lowest and
    highest lr they tried, the best that ran to its end (`CellSearch.best`'s rule: the highest
    signed value, ties the earliest), how many edge trials run. Kept as trials end, so that
    asking for an edge point costs nothing per trial: reading every trial of the cell on each
    trial's end took 10% of the driver's main thread at 1,000 trials (issue 33)."""

    finished: int = 0
    low: float = math.inf
    high: float = -math.inf
    best: tuple[float, int] | None = None  # (signed value, -number)
    best_lr: float = math.nan
    best_optimizer: str = ""
    edges_running: int = 0

    def ended(self, lr: float, optimizer: str, final: float | None, number: int, sign: int) -> None:
        self.finished += 1
        self.low, self.high = min(self.low, lr), max(self.high, lr)
        if final is None:
            return
        score = (sign * final, -number)
        if self.best is None or score > self.best:
            self.best, self.best_lr, self.best_optimizer = score, lr, optimizer
