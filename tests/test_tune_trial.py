"""A reused trial actor's data cache: the same data set for the same request, a fresh one for
any other (another seed, data set or size), and never more than one held at a time."""

import torch

from tests.test_config import base_config
from trainables import tune_trial
from trainables.config import TrialConfig


def config(**overrides) -> TrialConfig:
    return TrialConfig.from_dict(base_config(**overrides))


def test_the_same_request_gets_the_cached_data_set():
    first = tune_trial.cached_splits(config())
    assert tune_trial.cached_splits(config(batch_size=128, seed=5)) is first  # same data


def test_another_request_gets_its_own_data_and_only_one_is_held():
    digits = tune_trial.cached_splits(config())
    other_split = tune_trial.cached_splits(config(split_seed=1))
    assert other_split is not digits
    assert not torch.equal(other_split.val.y, digits.val.y)  # another held-out split
    smaller = tune_trial.cached_splits(config(split_seed=1, max_train_examples=256))
    assert len(smaller.train) == 256
    assert len(tune_trial._DATA) == 1
