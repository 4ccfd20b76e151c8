"""Trial config validation and the batch layout."""

import pytest

from trainables.config import ConfigError, TrialConfig, batch_layout
from trainables.datasets import DATASETS
from trainables.models import MODELS
from trainables.workload import Data, Workload
from trainables.workloads import by_value


def model_on(model: str, dataset: str, **data) -> str:
    """A reference to a workload of one built-in model on one built-in data set (a pairing no
    built-in workload has), for tests of the loop."""
    load = data.pop("load", None) or DATASETS[dataset]
    workload = Workload(
        name=f"{model}-on-{dataset}",
        model=MODELS[model],
        datasets={dataset: Data(load=load, **data)},
    )
    return by_value(workload)


def base_config(**overrides):
    values = dict(
        workload="simple_cnn",
        dataset="digits",
        data_dir=None,
        batch_size=64,
        scaling_rule="linear",
        optimizer="sgd",
        base_lr=0.1,
        reference_batch=32,
        momentum=0.9,
        warmup_fraction=0.1,
        weight_decay=1e-4,
        budget_unit="epochs",
        budget_amount=2,
        min_steps=0,
        eval_every=0,
        schedule="cosine",
        final_lr_factor=0.0,
        label_smoothing=0.0,
        num_workers=1,
        max_device_batch=512,
        bn_mode="per_worker",
        ghost_batch=128,
        divergence_factor=5.0,
        max_train_examples=0,
        split_seed=0,
        seed=0,
        metric="accuracy",
        metric_mode="",
        stop_at_target=0.0,
        use_gpu=False,
        compile=False,
        loader_workers=1,
        decode="cpu",
    )
    values.update(overrides)
    return values


def test_valid_config_and_peak_lr():
    config = TrialConfig.from_dict(base_config())
    assert config.peak_lr == pytest.approx(0.2)
    assert TrialConfig.from_dict(config.to_dict()) == config


def test_unknown_key_fails_loudly():
    with pytest.raises(ConfigError, match="unknown trial config keys: learning_rate"):
        TrialConfig.from_dict(base_config(learning_rate=0.1))


def test_missing_key_fails_loudly():
    values = base_config()
    del values["weight_decay"]
    with pytest.raises(ConfigError, match="missing trial config keys: weight_decay"):
        TrialConfig.from_dict(values)


@pytest.mark.parametrize(
    "key, value",
    [
        ("scaling_rule", "cubic"),
        ("optimizer", "rmsprop"),
        ("base_lr", -1.0),
        ("bn_mode", "none"),
        ("budget_unit", "weeks"),
        ("budget_amount", 0),
        ("warmup_fraction", 0.3),  # more than a quarter of the budget
        ("eval_every", -1),
        ("stop_at_target", 95.0),
        ("metric", "perplexity"),
    ],
)
def test_bad_values_rejected(key, value):
    with pytest.raises(ConfigError):
        TrialConfig.from_dict(base_config(**{key: value}))


def test_layout_splits_across_workers_and_accumulates():
    layout = batch_layout(1024, 4, 128)
    assert (layout.per_worker, layout.accumulation_steps, layout.micro_batch) == (256, 2, 128)
    assert batch_layout(96, 1, 40).micro_batch == 32  # smallest even split under the cap
    assert batch_layout(8, 2, 512).accumulation_steps == 1


def test_impossible_split_is_one_clear_line():
    with pytest.raises(ConfigError, match="cannot be split evenly across 3 workers") as error:
        TrialConfig.from_dict(base_config(batch_size=64, num_workers=3))
    assert "\n" not in str(error.value)
