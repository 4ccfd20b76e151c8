"""Every registered workload: its model runs forward on its data's shape, with no NaN."""

import pytest
import torch

from search_spaces import SPACES
from trainables.budget import Budget
from trainables.data import DATASET_NAMES, NEEDS_FILES, load_dataset
from trainables.loop import synthetic_shape
from trainables.models import build_model
from trainables.workloads import WORKLOADS, get_workload

PAIRS = [(w.name, d) for w in WORKLOADS.values() for d in w.datasets]
SHAPES = {
    "digits": (1, 8, 8),
    "mnist1d": (1, 40),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "imagenet": (3, 224, 224),
}


@pytest.mark.parametrize("workload, dataset", PAIRS, ids=[f"{w}-{d}" for w, d in PAIRS])
def test_forward_pass_shapes_and_finite(workload, dataset):
    w = get_workload(workload)
    shape = synthetic_shape(w.model) if dataset == "synthetic" else SHAPES[dataset]
    if dataset == "imagenet":
        shape = (3, 64, 64)  # same network; a smaller image keeps the test fast
    torch.manual_seed(0)
    model = build_model(w.model, shape, 10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_registry_entries_are_consistent(workload):
    w = get_workload(workload)
    assert w.name in SPACES or w.space_name in SPACES
    for dataset, settings in w.datasets.items():
        assert dataset in DATASET_NAMES
        assert list(settings.batch_sizes) == sorted(set(settings.batch_sizes))
        assert 0 < settings.target_accuracy < 1
        assert Budget.parse(settings.budget, settings.min_steps).steps(1000, 8) >= 1


def test_unknown_workload_lists_known_ones():
    with pytest.raises(KeyError, match="resnet50"):
        get_workload("resnet51")


@pytest.mark.parametrize("dataset", sorted(set(DATASET_NAMES) - NEEDS_FILES))
def test_file_free_datasets_load_with_disjoint_validation(dataset, tmp_path):
    splits = load_dataset(dataset, str(tmp_path), seed=0)
    assert len(splits.train) > len(splits.val) > 0
    assert splits.train.x.shape[1:] == splits.input_shape
    assert torch.isfinite(splits.train.x).all()
    assert set(splits.val.y.tolist()) <= set(range(splits.num_classes))
