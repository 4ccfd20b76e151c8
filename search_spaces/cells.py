"""The cells of a study: batch size x (stratified) optimiser x (only if asked) scaling rule.

Every cell gets its share of the trials and is tuned from its own evidence (its own Optuna
study), so a batch size's lr is learned from that batch size's trials, never copied from small
batch winners; optimisers compared cell by cell rest on equal evidence. An optimiser that is not
stratified is searched inside each cell; a rule that is not places the cell's lr range
(`search_spaces.spaces.search_rule`).
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.spaces import SearchSpace

STRATA = ("rule", "optimizer")


@dataclass(frozen=True, order=True)
class Cell:
    """One cell; `rule` / `optimizer` None when that dimension is searched inside the cell."""

    batch_size: int
    rule: str | None = None
    optimizer: str | None = None

    @property
    def key(self) -> str:
        """A name for the cell's Optuna study and the trial table: `b512`, `b512-linear-sgd`."""
        return "-".join(p for p in (f"b{self.batch_size}", self.rule, self.optimizer) if p)


def default_strata(space: SearchSpace) -> tuple[str, ...]:
    """Cells per batch size and optimiser. Rules are not split into cells: at one batch size a
    rule only rescales the lr, so the tuned map needs one search per batch size, with all its
    trials; which rule keeps accuracy without retuning is the rule test's question
    (`search_spaces.checks`). `--stratify rule` still splits them."""
    return ("optimizer",) if len(space.optimizers) > 1 else ()


def study_cells(
    batch_sizes: tuple[int, ...], space: SearchSpace, strata: tuple[str, ...]
) -> list[Cell]:
    """Every cell of a study, batch size first (the order trials are handed out in)."""
    rules = space.scaling_rules if "rule" in strata else (None,)
    optimizers = space.optimizers if "optimizer" in strata else (None,)
    return [Cell(b, r, o) for b in batch_sizes for r in rules for o in optimizers]


def neighbour_below(cell: Cell, cells: list[Cell]) -> Cell | None:
    """The cell of the next smaller batch size with the same rule and optimiser."""
    smaller = [
        c
        for c in cells
        if c.batch_size < cell.batch_size and (c.rule, c.optimizer) == (cell.rule, cell.optimizer)
    ]
    return max(smaller, key=lambda c: c.batch_size, default=None)
