"""Batch order shared by all workers, augmentation, and the batch source a training loop draws
from (the data sets themselves are loaded by `trainables.datasets`).

Batch order is one seeded permutation per epoch, cut into global batches; each worker takes its
slice of every global batch. So the global batch is the same whatever the number of workers (a
W-worker step equals a 1-worker step), and resuming at epoch e replays exactly epoch e's order.

Small data sets are held as tensors in memory: on a GPU they move to the device once, and no
DataLoader workers are involved. Streamed ones (ImageNet's ImageFolder) go through persistent
DataLoaders.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainables.splits import Splits, TensorSplit

__all__ = ["Splits", "TensorSplit"]

# ---------------------------------------------------------------- batch order


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the `n` training examples in `epoch`; the same on every worker."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped)."""
    return n // global_batch


def worker_batches(
    n: int, global_batch: int, seed: int, epoch: int, rank: int, world: int, start: int = 0
) -> Iterator[torch.Tensor]:
    """Yield this worker's example indices for every global batch of `epoch`, from the
    `start`-th one on (a run resumed in the middle of an epoch replays exactly the rest)."""
    order = epoch_permutation(n, seed, epoch)
    share = global_batch // world
    for step in range(start, steps_per_epoch(n, global_batch)):
        start = step * global_batch + rank * share
        yield order[start : start + share]


def shard(n: int, rank: int, world: int) -> range:
    """Contiguous, near-equal shard of `n` evaluation examples for one worker."""
    per = -(-n // world)
    return range(rank * per, min(n, (rank + 1) * per))


# ---------------------------------------------------------------- augmentation


def augment_generator(seed: int, epoch: int, position: int, rank: int) -> torch.Generator:
    """The random draws of one batch's augmentation: fixed by its place in the run, so a run
    resumed in the middle of an epoch augments the rest exactly as the uninterrupted run."""
    key = ((seed * 1_000_003 + epoch) * 1_000_003 + position) * 1_009 + rank
    return torch.Generator().manual_seed(key % 2**62)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, per example, on x's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[
        torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]
    ]
    return out.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- batch sources


class _Plan(Sampler):
    """A batch sampler whose batches are set before each pass, so that one persistent
    DataLoader (its processes started once per trial) serves every epoch and evaluation."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


MicroBatches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class BatchSource:
    """Yields one worker's micro-batches for every step of an epoch, and its validation shard,
    on `device`.

    In-memory data sets are indexed on the device. Streamed ones (ImageFolder) go through two
    persistent DataLoaders (training, validation), each of `loader_workers` processes, whose
    batches are micro-batches: a worker's share of a global batch is never held whole. With
    encoded splits (`Splits.augment == "jpeg"`) the loader processes read file bytes and the
    JPEGs are decoded and augmented here on `device` (`trainables.images`).
    """

    def __init__(
        self,
        splits: Splits,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        device: torch.device,
        loader_workers: int = 4,
        micro_batch: int | None = None,
    ):
        self.splits, self.global_batch, self.rank, self.world = splits, global_batch, rank, world
        self.seed, self.device, self.loader_workers = seed, device, loader_workers
        self.micro_batch = micro_batch or global_batch // world
        self.in_memory = isinstance(splits.train, TensorSplit)
        self._loaders: dict[str, tuple[DataLoader, _Plan]] = {}
        if self.in_memory:  # move once: no per-step host-to-device copies for small data sets
            splits.train = TensorSplit(splits.train.x.to(device), splits.train.y.to(device))
            splits.val = TensorSplit(splits.val.x.to(device), splits.val.y.to(device))
            if splits.test is not None:
                splits.test = TensorSplit(splits.test.x.to(device), splits.test.y.to(device))

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.splits.train), self.global_batch)

    @property
    def per_step(self) -> int:
        """Micro-batches in one worker's share of a global batch."""
        return -(-(self.global_batch // self.world) // self.micro_batch)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[MicroBatches]:
        """For every global batch of `epoch` from the `start`-th on, an iterator over this
        worker's micro-batches of it (consume each before asking for the next)."""
        n = len(self.splits.train)
        indices = worker_batches(
            n, self.global_batch, self.seed, epoch, self.rank, self.world, start
        )
        if self.in_memory:
            data = self.splits.train
            for position, idx in enumerate(indices, start):
                idx = idx.to(self.device)
                x = data.x[idx]
                if self.splits.augment == "crop_flip":
                    x = crop_flip(x, augment_generator(self.seed, epoch, position, self.rank))
                yield zip(
                    x.split(self.micro_batch), data.y[idx].split(self.micro_batch), strict=True
                )
            return
        steps = list(indices)
        batches = [
            idx[i : i + self.micro_batch].tolist()
            for idx in steps
            for i in range(0, len(idx), self.micro_batch)
        ]
        stream = iter(self._loader("train", self.splits.train, batches))
        for position in range(start, start + len(steps)):
            yield self._train_micro(stream, epoch, position)

    def _train_micro(self, stream: Iterator, epoch: int, position: int) -> MicroBatches:
        for i in range(self.per_step):
            x, y = next(stream)
            if self.splits.augment == "jpeg":
                from trainables.images import train_batch

                key = augment_generator(self.seed, epoch, position * self.per_step + i, self.rank)
                x = train_batch(x, self.splits.input_shape[-1], key, self.device)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def val_batches(
        self, batch: int, split: str = "val"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This worker's shard of the validation split (or, `split="test"`, of the test set),
        in batches of at most `batch`."""
        data = self.splits.test if split == "test" else self.splits.val
        part = shard(len(data), self.rank, self.world)
        if self.in_memory:
            for start in range(part.start, part.stop, batch):
                stop = min(start + batch, part.stop)
                yield data.x[start:stop], data.y[start:stop]
            return
        batches = [
            list(range(s, min(s + batch, part.stop))) for s in range(part.start, part.stop, batch)
        ]
        for x, y in self._loader(split, data, batches):
            if self.splits.augment == "jpeg":
                from trainables.images import val_batch

                x = val_batch(x, self.splits.input_shape[-1], self.device)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _loader(self, part: str, dataset: Dataset, batches: list[list[int]]) -> DataLoader:
        """The persistent loader of `part`, set to load `batches` on its next pass."""
        if part not in self._loaders:
            workers = self.loader_workers
            collate = None
            if self.splits.augment == "jpeg":
                from trainables.images import collate_encoded

                collate = collate_encoded
            plan = _Plan()
            loader = DataLoader(
                dataset,
                batch_sampler=plan,
                num_workers=workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
            self._loaders[part] = (loader, plan)
        loader, plan = self._loaders[part]
        plan.batches = batches
        return loader
