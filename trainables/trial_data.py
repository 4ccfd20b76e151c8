"""A trial's workload and data set, from its configuration (imported on the worker that runs it)."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.data import Splits
from trainables.datasets import DEFAULT_DATA_DIR
from trainables.workload import Workload


def trial_workload(config: TrialConfig) -> Workload:
    """The trial's workload, imported on this worker by its reference."""
    from trainables.workloads import find_workload

    return find_workload(config.workload)


def dataset_args(config: TrialConfig) -> tuple:
    """Everything that decides a trial's data set (a key to cache it by)."""
    return (
        config.workload,
        config.dataset,
        config.data_dir,
        config.split_seed,
        config.max_train_examples,
        config.decode,
    )


def open_splits(config: TrialConfig) -> Splits:
    """Load the trial's data set through its workload."""
    return trial_workload(config).open(
        config.dataset,
        config.data_dir or DEFAULT_DATA_DIR,
        config.split_seed,
        config.max_train_examples,
        config.decode,
    )
