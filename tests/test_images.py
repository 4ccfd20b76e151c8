"""ImageFolder JPEGs, decoded and augmented on the training device (here the CPU), and the
streamed batch source: micro-batches, persistent loaders, exact order and exact resume."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F

from tests.test_config import base_config, model_on
from trainables import images
from trainables.config import TrialConfig
from trainables.data import BatchSource, worker_batches
from trainables.datasets import load_imagenet
from trainables.loop import train
from trainables.workloads import _imagenet

CPU = torch.device("cpu")


def write_folder(root: Path, per_class: int = 13, classes: int = 3, seed: int = 0) -> Path:
    """An ImageFolder of smooth random JPEGs of varied sizes: train/ (13 per class: 12 to
    train on, 1 held out for validation) and val/ (4 per class: the test set)."""
    rng = np.random.default_rng(seed)
    for part, count in (("train", per_class), ("val", per_class // 3)):
        for c in range(classes):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(40, 96, size=2)
                coarse = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((int(w), int(h)), Image.BILINEAR)
                image.save(folder / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("jpegs"))


def test_boxes_follow_random_resized_crop(folder):
    sizes = [(60, 80), (95, 41), (40, 40), (90, 90)] * 50
    boxes = images.random_resized_boxes(sizes, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    heights = torch.tensor([s[0] for s in sizes], dtype=torch.float32)
    widths = torch.tensor([s[1] for s in sizes], dtype=torch.float32)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= widths).all()
    assert (boxes[:, 3] <= heights).all()
    area = w * h / (heights * widths)
    assert area.min() >= 0.06 and area.max() <= 1.0  # scale 0.08-1, up to rounding
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4  # ratio 3/4-4/3, up to rounding
    again = images.random_resized_boxes(sizes, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)  # the generator alone decides the crops


def test_crop_resize_matches_torchvision_resized_crop(folder):
    files = sorted((folder / "train").rglob("*.JPEG"))[:6]
    decoded = [decode_jpeg(read_file(str(f))) for f in files]
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in decoded]
    boxes = images.random_resized_boxes(sizes, torch.Generator().manual_seed(3))
    ours = images.crop_resize(decoded, boxes, 32)
    assert ours.shape == (6, 3, 32, 32)
    for image, box, out in zip(decoded, boxes.tolist(), ours, strict=True):
        left, top, right, bottom = box
        expected = F.resized_crop(
            image.float(), int(top), int(left), int(bottom - top), int(right - left), [32, 32]
        )
        # bilinear sampling of the same box: equal up to interpolation (uint8 levels)
        assert (out - expected).abs().mean() < 6.0


def test_val_boxes_are_resize_then_centre_crop(folder):
    files = sorted((folder / "val").rglob("*.JPEG"))[:4]
    decoded = [decode_jpeg(read_file(str(f))) for f in files]
    ours = images.crop_resize(
        decoded, images.centre_boxes([tuple(i.shape[1:]) for i in decoded], 36, 32), 32
    )
    for image, out in zip(decoded, ours, strict=True):
        expected = F.center_crop(F.resize(image.float(), 36), [32, 32])
        assert (out - expected).abs().mean() < 6.0


def test_train_batch_is_standardised_flipped_and_seeded(folder):
    splits = load_imagenet(str(folder), 0, image_size=32, encoded=True)
    files = [splits.train[i][0] for i in range(8)]
    a = images.train_batch(files, 32, torch.Generator().manual_seed(1), CPU)
    b = images.train_batch(files, 32, torch.Generator().manual_seed(1), CPU)
    c = images.train_batch(files, 32, torch.Generator().manual_seed(2), CPU)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # standardised with ImageNet's mean and std: [0, 1] pixels map into [-2.2, 2.7], and the
    # darker ones below 0 (unstandardised pixels would all be >= 0)
    assert a.min() < 0 and a.min() > -2.2 and a.max() < 2.7


def test_streamed_source_gives_micro_batches_in_the_global_order(folder):
    splits = load_imagenet(str(folder), 0, image_size=32, encoded=False)
    source = BatchSource(
        splits, 12, rank=1, world=2, seed=5, device=CPU, loader_workers=2, micro_batch=4
    )
    assert source.steps_per_epoch == 3 and source.per_step == 2
    labels = []
    for epoch in range(2):
        for micro in source.train_batches(epoch):
            sizes = [len(y) for x, y in micro]
            assert sizes == [4, 2]  # never a worker's whole share at once
            labels.append(sizes)
    loader = source._loaders["train"][0]
    assert loader.persistent_workers and loader._iterator is not None  # one pool for all epochs
    targets = torch.tensor([splits.train.dataset.targets[i] for i in splits.train.indices])
    for epoch in range(2):
        expected = [targets[i] for i in worker_batches(36, 12, 5, epoch, 1, 2)]
        got = [torch.cat([y for _, y in m]) for m in source.train_batches(epoch)]
        assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    val = list(source.val_batches(5))
    assert sum(len(y) for _, y in val) == 1  # rank 1's share of the 3 held-out images
    test = list(source.val_batches(5, "test"))
    assert sum(len(y) for _, y in test) == 6  # rank 1's half of the 12 test images


def test_encoded_source_resumes_mid_epoch_exactly(folder):
    splits = load_imagenet(str(folder), 0, image_size=32, encoded=True)
    source = BatchSource(splits, 12, 0, 1, seed=2, device=CPU, loader_workers=1, micro_batch=6)
    whole = [[x.clone() for x, _ in micro] for micro in source.train_batches(1)]
    rest = [[x.clone() for x, _ in micro] for micro in source.train_batches(1, start=1)]
    assert len(whole) == 3 and len(rest) == 2
    assert all(
        torch.equal(a, b)
        for w, r in zip(whole[1:], rest, strict=True)
        for a, b in zip(w, r, strict=True)
    )


@pytest.mark.parametrize("decode", ["gpu", "cpu"])
def test_loop_trains_on_an_image_folder(folder, decode):
    """The real loop on JPEG files, both decoders (the `gpu` one decoding on the worker's device,
    here the CPU), gradient accumulation over micro-batches, mid-run resume."""
    config = TrialConfig.from_dict(
        base_config(
            workload=model_on("resnet8", "imagenet", load=_imagenet, streamed=True),
            dataset="imagenet",
            data_dir=None,
            batch_size=12,
            max_device_batch=4,
            budget_unit="steps",
            budget_amount=4,
            eval_every=2,
            bn_mode="ghost",
            ghost_batch=4,
            loader_workers=1,
            decode=decode,
            use_gpu=decode == "gpu",
        )
    )
    splits = load_imagenet(str(folder), 0, image_size=32, encoded=decode == "gpu")
    reports, states = [], []

    def report(metrics, state):
        reports.append(metrics)
        states.append(copy.deepcopy(state))

    train(config, report=report, splits=splits)
    assert [r["optimizer_steps"] for r in reports] == [2, 4]
    assert reports[0]["accumulation_steps"] == 3 and reports[0]["val_examples"] == 3
    # the official val folder is the test set, scored at the run's end only
    assert "test_acc" not in reports[0] and reports[-1]["test_examples"] == 12
    if decode == "cpu":
        return  # PIL augmentation draws from the loader processes' own RNG: not replayable
    resumed = []
    again = load_imagenet(str(folder), 0, image_size=32, encoded=decode == "gpu")
    train(config, report=lambda m, s: resumed.append(m), splits=again, resume_state=states[0])
    assert resumed[-1]["train_loss"] == pytest.approx(reports[-1]["train_loss"], rel=1e-5)
    assert resumed[-1]["val_loss"] == pytest.approx(reports[-1]["val_loss"], rel=1e-5)
