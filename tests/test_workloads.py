"""Every registered workload: its model runs forward on its data's shape, with no NaN."""

import pytest
import torch

from search_spaces import SPACES
from trainables.budget import Budget
from trainables.datasets import DATASET_NAMES, NEEDS_FILES, load_dataset
from trainables.loop import synthetic_shape
from trainables.models import MODELS, TOKEN_MODELS, build_model
from trainables.text import SEQ_LEN, VOCAB
from trainables.workloads import WORKLOADS, get_workload

PAIRS = [(w.name, d) for w in WORKLOADS.values() for d in w.datasets]
SHAPES = {
    "digits": (1, 8, 8),
    "mnist1d": (1, 40),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "imagenet": (3, 224, 224),
    "mnist5k": (1, 28, 28),
    "stdlib": (SEQ_LEN,),
    "text": (SEQ_LEN,),
}
# Each image model's input; any other (torchvision's ImageNet models) runs at 64x64: the same
# network, and fast.
MODEL_SHAPES = {"simple_cnn": (1, 28, 28), "conv1d": (1, 40), "resnet8": (3, 32, 32)}


def forward_check(model_name: str, shape: tuple[int, ...], num_classes: int) -> None:
    """Two examples through a fresh model: logits of the expected shape, all finite."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, num_classes).eval()
    if model_name in TOKEN_MODELS:
        x = torch.randint(0, num_classes, (2, *shape))  # int64 tokens
        expected = (2, num_classes, *shape)  # (N, V, L): the class dimension second
    else:
        x = torch.randn(2, *shape)
        expected = (2, num_classes)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("workload, dataset", PAIRS, ids=[f"{w}-{d}" for w, d in PAIRS])
def test_forward_pass_shapes_and_finite(workload, dataset):
    w = get_workload(workload)
    shape = synthetic_shape(w.model) if dataset == "synthetic" else SHAPES[dataset]
    if dataset == "imagenet":
        shape = (3, 64, 64)  # same network; a smaller image keeps the test fast
    forward_check(w.model, shape, VOCAB if w.model in TOKEN_MODELS else 10)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_runs_forward(model):
    if model in TOKEN_MODELS:
        forward_check(model, (SEQ_LEN,), VOCAB)
    else:
        forward_check(model, MODEL_SHAPES.get(model, (3, 64, 64)), 10)


def test_token_models_accept_uint8_and_are_causal():
    x = torch.randint(0, VOCAB, (2, SEQ_LEN // 4), dtype=torch.uint8)  # shorter sequences work
    changed = x.clone()
    changed[:, -1] += 1  # only the last position differs
    for name in sorted(TOKEN_MODELS - {"transformer_lm_base"}):
        torch.manual_seed(0)
        model = build_model(name, (SEQ_LEN,), VOCAB).eval()
        with torch.no_grad():
            out, out_changed = model(x), model(changed)
        assert torch.equal(out[..., :-1], out_changed[..., :-1]), name  # no peeking ahead
        assert not torch.equal(out[..., -1], out_changed[..., -1]), name


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_registry_entries_are_consistent(workload):
    w = get_workload(workload)
    assert w.name in SPACES or w.space_name in SPACES
    for dataset, settings in w.datasets.items():
        assert dataset in DATASET_NAMES
        assert list(settings.batch_sizes) == sorted(set(settings.batch_sizes))
        if w.metric == "accuracy":
            assert 0 < settings.target < 1
        else:
            assert settings.target > 0 and w.metric == "loss"
        assert Budget.parse(settings.budget, settings.min_steps).steps(1000, 8) >= 1


def test_unknown_workload_lists_known_ones():
    with pytest.raises(KeyError, match="resnet50"):
        get_workload("resnet51")


@pytest.mark.parametrize("dataset", sorted(set(DATASET_NAMES) - NEEDS_FILES))
def test_file_free_datasets_load_with_disjoint_validation(dataset, tmp_path):
    splits = load_dataset(dataset, str(tmp_path), seed=0)
    assert len(splits.train) > len(splits.val) > 0
    assert splits.train.x.shape[1:] == splits.input_shape
    if splits.tokens_per_example:  # token ids: integers below the vocabulary
        assert not splits.train.x.is_floating_point()
        assert int(splits.train.x.max()) < splits.num_classes
    else:
        assert torch.isfinite(splits.train.x).all()
    assert set(splits.val.y.unique().tolist()) <= set(range(splits.num_classes))
