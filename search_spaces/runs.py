"""What a study hands out, without Ray: the phases of its runs, a run waiting to be handed out
(`Pending`), a handed-out trial (`Suggestion`), and an Optuna trial's parameters as a trial
config names them. Shared by the search (`search_spaces.cell_search`), its later phases
(`search_spaces.later_phases`) and its resume (`search_spaces.reconcile`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from search_spaces.cells import Cell
from search_spaces.spaces import GAP_PARAMS, GAP_PREFIX, SearchSpace, lr_param, search_rule

SEARCH, CONFIRM, EXTEND, RULE = "search", "confirm", "extend", "rule"
# The level the checks judge a batch size (or the baseline) at, run again with fresh seeds: the
# value it is judged by never comes from the runs that chose its level or lr (issue 32).
JUDGE = "judge"
# Budget-free runs of each batch size's best configuration: its steps to target
# (trainables.budget_free), which do not follow the study's budget (issue 32).
BUDGET_FREE = "budget_free"
# runs of the checks, recorded in the `checks` Optuna study
PROBES = (EXTEND, RULE, JUDGE, BUDGET_FREE)
CHECKS_STUDY = "checks"
FINISHED = "FINISHED"  # suggest() has nothing more to give, now or later
FINAL = ("completed", "target")  # outcomes with a final value (full budget, or at the target)


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


def run_key(cell_key: str, phase: str, seed: Any, params: dict[str, Any]) -> tuple:
    """What makes two hand-outs the same run: cell, phase, seed and parameters (a cell trial's
    as its Optuna study names them, a check's as it runs)."""
    return cell_key, phase, seed, json.dumps(params, sort_keys=True, default=str)


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
        **{
            name: 1 - trial.params[GAP_PREFIX + name]
            for name in GAP_PARAMS
            if GAP_PREFIX + name in trial.params
        },
    }
