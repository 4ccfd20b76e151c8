"""Every registered workload: its model runs forward on its data's shape, with no NaN."""

import pytest
import torch

from search_spaces import SearchSpace
from trainables.budget import Budget
from trainables.datasets import DATASET_NAMES, DEFAULT_DATA_DIR
from trainables.models import MODELS, TOKEN_MODELS, build_model
from trainables.text import SEQ_LEN, VOCAB
from trainables.workloads import BUILTIN, WorkloadNotFound, find_workload

PAIRS = [(w.name, d) for w in BUILTIN for d in w.data_sets()]
FILE_FREE = sorted(
    {(d, w.name) for w in BUILTIN for d, s in w.data_sets().items() if not s.needs_files}
)
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


def forward_check(model, shape: tuple[int, ...], num_classes: int, tokens: bool) -> None:
    """Two examples through a fresh model: logits of the expected shape, all finite."""
    torch.manual_seed(0)
    model = model.eval()
    if tokens:
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
def test_forward_pass_shapes_and_finite(workload, dataset, tmp_path):
    """Each workload's own model factory on each of its data sets' shapes (file-free sets are
    opened through the workload itself)."""
    w = find_workload(workload)
    tokens = dataset in ("stdlib", "text")
    if dataset in ("synthetic", "digits", "mnist1d", "mnist5k", "stdlib"):
        splits = w.open(dataset, DEFAULT_DATA_DIR, 0, max_train_examples=64)
        shape, classes = splits.input_shape, splits.num_classes
    else:
        shape, classes = SHAPES[dataset], VOCAB if tokens else 10
    if dataset == "imagenet":
        shape = (3, 64, 64)  # same network; a smaller image keeps the test fast
    forward_check(w.build_model(shape, classes), shape, classes, tokens)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_runs_forward(model):
    if model in TOKEN_MODELS:
        forward_check(build_model(model, (SEQ_LEN,), VOCAB), (SEQ_LEN,), VOCAB, True)
    else:
        shape = MODEL_SHAPES.get(model, (3, 64, 64))
        forward_check(build_model(model, shape, 10), shape, 10, False)


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


@pytest.mark.parametrize("workload", [w.name for w in BUILTIN])
def test_registry_entries_are_consistent(workload):
    w = find_workload(workload)
    assert w.problems() == []
    assert isinstance(w.search_space, SearchSpace)
    for dataset, settings in w.data_sets().items():
        assert dataset in DATASET_NAMES
        assert list(settings.batch_sizes) == sorted(set(settings.batch_sizes))
        if w.metric == "accuracy":
            assert 0 < settings.target < 1
        else:
            assert settings.target > 0 and w.metric == "loss"
        assert Budget.parse(settings.budget, settings.min_steps).steps(1000, 8) >= 1


def test_unknown_workload_lists_known_ones():
    with pytest.raises(WorkloadNotFound, match="resnet50"):
        find_workload("resnet51")


@pytest.mark.parametrize("dataset, workload", FILE_FREE)
def test_file_free_datasets_load_with_disjoint_validation(dataset, workload, tmp_path):
    splits = find_workload(workload).open(dataset, str(tmp_path), seed=0)
    assert len(splits.train) > len(splits.val) > 0
    assert splits.train.x.shape[1:] == splits.input_shape
    if splits.tokens_per_example:  # token ids: integers below the vocabulary
        assert not splits.train.x.is_floating_point()
        assert int(splits.train.x.max()) < splits.num_classes
    else:
        assert torch.isfinite(splits.train.x).all()
    assert set(splits.val.y.unique().tolist()) <= set(range(splits.num_classes))
