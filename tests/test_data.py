"""Data loaders on tiny files written in the real formats, and their one-line errors."""

import pickle
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import crop_flip
from trainables.datasets import DataUnavailable, check_data, load_dataset


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format of MNIST: magic (ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root, folder: str, n: int = 120) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, size in (("train", n), ("t10k", n // 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (size, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, size))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_load_with_heldout_split(tmp_path, name, folder):
    make_mnist(tmp_path, folder)
    splits = load_dataset(name, str(tmp_path), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (108, 12, 30)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.num_classes == 10
    again = load_dataset(name, str(tmp_path), seed=0)
    assert torch.equal(again.val.y, splits.val.y)  # the split is fixed by the seed


def test_cifar10_python_batches_load(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, 20).tolist(),
        }
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    splits = load_dataset("cifar10", str(tmp_path), seed=0)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 20
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.augment == "crop_flip"


def test_imagenet_folder_layout_loads(tmp_path):
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for cls in ("n01", "n02", "n03"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / part / cls / f"{i}.JPEG", format="JPEG")
    splits = load_dataset("imagenet", str(tmp_path), seed=0)
    x, y = splits.train[0]
    assert x.shape == (3, 224, 224) and splits.num_classes == 3
    # validation: one of each class's two training images, held out; the val folder: the test
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 3, 6)
    held = {splits.val.dataset.samples[i][0] for i in splits.val.indices}
    trained = {splits.train.dataset.samples[i][0] for i in splits.train.indices}
    assert not held & trained and all("/train/" in path for path in held)


def test_missing_imagenet_says_where_in_one_line(tmp_path):
    with pytest.raises(DataUnavailable) as error:
        check_data("imagenet", str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message and "nowhere/train" in message and "--data-dir" in message


def test_missing_cifar_without_network_fails_fast_in_one_line(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataUnavailable) as error:
        check_data("cifar10", str(tmp_path))
    assert time.monotonic() - started < 120
    message = str(error.value)
    assert "\n" not in message and "cifar-10-batches-py" in message


def test_crop_flip_keeps_shape_and_content():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    # Every output pixel is either padding (0) or a pixel of its own image.
    for i in range(2):
        assert set(out[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0}


def test_mnist1d_selects_on_a_fresh_draw_and_keeps_the_official_test_set(tmp_path):
    """Validation: 1000 examples of the generator's seed 43, in neither training nor test;
    the package's own 4000 / 1000 split is unchanged."""
    from mnist1d.data import get_dataset_args, make_dataset

    splits = load_dataset("mnist1d", str(tmp_path), seed=0)
    official = make_dataset(get_dataset_args())
    assert torch.equal(splits.train.x[:, 0], torch.tensor(official["x"], dtype=torch.float32))
    assert torch.equal(splits.test.x[:, 0], torch.tensor(official["x_test"], dtype=torch.float32))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4000, 1000, 1000)
    seen = {tuple(row.tolist()) for row in torch.cat([splits.train.x, splits.test.x])[:, 0]}
    assert not any(tuple(row.tolist()) in seen for row in splits.val.x[:, 0])
    assert sorted(set(splits.val.y.tolist())) == list(range(10))
