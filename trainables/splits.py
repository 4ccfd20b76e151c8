"""The types every data set is made of: in-memory splits, a train/validation pair, and the
one-line error of a data set that cannot be loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


class DataUnavailable(RuntimeError):
    """A data set's files are missing and could not be fetched; the message is one line."""


@dataclass
class TensorSplit:
    """Inputs and labels held in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    """A data set ready to train on: train and held-out validation split, and the data set's
    official test set where it has one (`test`: the search selects on `val`, held out from the
    training data; the confirmed runs are also scored on `test`, which nothing selected on)."""

    name: str
    train: TensorSplit | Dataset
    val: TensorSplit | Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    augment: str | None = None  # "crop_flip" for small natural images
    tokens_per_example: int = 0  # predicted tokens per example; 0: not token sequences
    test: TensorSplit | Dataset | None = None


def split_holdout(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int):
    """Hold out `val_size` examples, chosen by the seed, from the training files."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return TensorSplit(x[train], y[train]), TensorSplit(x[val], y[val])
