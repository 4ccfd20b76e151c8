"""The cells of a study: batch size x (stratified) scaling rule x (stratified) optimiser.

Every cell gets its share of the trials and is tuned from its own evidence (its own Optuna
study), so a batch size's lr is learned from that batch size's trials, never copied from small
batch winners; rules and optimisers compared cell by cell rest on equal evidence. A dimension
that is not stratified is searched inside each cell.
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
    """Stratify every dimension that has more than one choice."""
    chosen = []
    if len(space.scaling_rules) > 1:
        chosen.append("rule")
    if len(space.optimizers) > 1:
        chosen.append("optimizer")
    return tuple(chosen)


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
