"""Workload registry: model + data set + fixed training settings + search space, by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from search_spaces import SearchSpace, get_space


@dataclass(frozen=True)
class DataSettings:
    """What a workload fixes for one of its data sets."""

    epochs: int
    batch_sizes: tuple[int, ...]  # default grid
    target_accuracy: float  # default target of steps-to-target in the report
    max_device_batch: int = 1024  # largest micro-batch one device takes before accumulating


@dataclass(frozen=True)
class Workload:
    """A registered workload; the first data set is the default."""

    name: str
    model: str
    description: str
    datasets: dict[str, DataSettings]
    optimizer: str = "sgd"  # optimiser family (the search may add large-batch ones)
    reference_batch: int = 128  # batch size at which base_lr is defined
    schedule: str = "cosine"
    final_lr_factor: float = 0.0
    momentum: float = 0.9
    label_smoothing: float = 0.0
    space_name: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def default_dataset(self) -> str:
        return next(iter(self.datasets))

    @property
    def space(self) -> SearchSpace:
        return get_space(self.space_name or self.name)

    def settings(self, dataset: str) -> DataSettings:
        if dataset not in self.datasets:
            raise KeyError(
                f"workload {self.name!r} does not run on {dataset!r}; "
                f"its data sets: {', '.join(self.datasets)}"
            )
        return self.datasets[dataset]


_SYNTHETIC = DataSettings(epochs=4, batch_sizes=(16, 32, 64, 128, 256), target_accuracy=0.9)

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            name="simple_cnn",
            model="simple_cnn",
            reference_batch=32,
            description="Shallue et al.'s Simple CNN (2 conv + dense) on small grey images",
            datasets={
                "digits": DataSettings(
                    epochs=6, batch_sizes=(8, 32, 128, 512), target_accuracy=0.95
                ),
                "mnist": DataSettings(
                    epochs=10, batch_sizes=tuple(2**k for k in range(4, 14)), target_accuracy=0.99
                ),
                "fashion_mnist": DataSettings(
                    epochs=10, batch_sizes=tuple(2**k for k in range(4, 14)), target_accuracy=0.90
                ),
                "synthetic": _SYNTHETIC,
            },
        ),
        Workload(
            name="mnist1d",
            model="conv1d",
            reference_batch=32,
            description="a small 1-D CNN on MNIST-1D, generated locally by the mnist1d package",
            datasets={
                "mnist1d": DataSettings(
                    epochs=10, batch_sizes=(16, 32, 64, 128, 256, 512, 1024), target_accuracy=0.85
                ),
                "synthetic": _SYNTHETIC,
            },
        ),
        Workload(
            name="resnet8",
            model="resnet8",
            reference_batch=128,
            description="Shallue et al.'s ResNet-8 on CIFAR-10 (target error 0.30)",
            datasets={
                "cifar10": DataSettings(
                    epochs=20, batch_sizes=tuple(2**k for k in range(5, 14)), target_accuracy=0.70
                ),
                "synthetic": _SYNTHETIC,
            },
        ),
        Workload(
            name="resnet50",
            model="resnet50",
            reference_batch=256,
            label_smoothing=0.1,
            description="torchvision ResNet-50 (Goyal et al.: lr 0.1 at batch 256, 5 warmup)",
            datasets={
                "imagenet": DataSettings(
                    epochs=16,
                    batch_sizes=tuple(2**k for k in range(8, 17)),
                    target_accuracy=0.75,
                    max_device_batch=256,
                ),
                "cifar10": DataSettings(
                    epochs=30,
                    batch_sizes=tuple(2**k for k in range(7, 14)),
                    target_accuracy=0.85,
                    max_device_batch=512,
                ),
                "synthetic": _SYNTHETIC,
            },
        ),
        Workload(
            name="vgg11",
            model="vgg11",
            reference_batch=256,
            description="torchvision VGG-11 (Shallue et al.'s ImageNet target error 0.35)",
            datasets={
                "imagenet": DataSettings(
                    epochs=16,
                    batch_sizes=tuple(2**k for k in range(8, 16)),
                    target_accuracy=0.65,
                    max_device_batch=256,
                ),
                "cifar10": DataSettings(
                    epochs=30,
                    batch_sizes=tuple(2**k for k in range(7, 14)),
                    target_accuracy=0.80,
                    max_device_batch=512,
                ),
                "synthetic": _SYNTHETIC,
            },
        ),
    ]
}


def get_workload(name: str) -> Workload:
    """A registered workload; an unknown name lists the known ones."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}")
    return WORKLOADS[name]
