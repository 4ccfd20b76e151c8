"""Model registry: the small models of Shallue et al. and torchvision's ImageNet models.

`build_model(name, input_shape, num_classes)` is the only entry point; every model takes
(C, H, W) images, or (C, L) signals for the 1-D model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Shape = tuple[int, ...]


class SimpleCNN(nn.Module):
    """Shallue et al.'s Simple CNN: two 5x5 conv + max-pool layers, a 1024-unit dense layer."""

    def __init__(self, input_shape: Shape, num_classes: int, width: int = 32, dense: int = 1024):
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        flat = 2 * width * (-(-height // 4)) * (-(-width_px // 4))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, dense),
            nn.ReLU(inplace=True),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Conv1DNet(nn.Module):
    """A small 1-D CNN for MNIST-1D (three conv layers, global pooling, linear head)."""

    def __init__(self, input_shape: Shape, num_classes: int, width: int = 32):
        super().__init__()
        channels = input_shape[0]
        self.net = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.LazyLinear(num_classes),
        )
        self.net(torch.zeros(1, *input_shape))  # materialise the lazy layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """Shallue et al.'s ResNet-8 for CIFAR-10: three stages of one basic block (16/32/64)."""

    def __init__(self, input_shape: Shape, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _BasicBlock(16, 16, 1), _BasicBlock(16, 32, 2), _BasicBlock(32, 64, 2)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _torchvision(name: str) -> Callable[[Shape, int], nn.Module]:
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        import torchvision

        if input_shape[0] != 3:
            raise ValueError(f"{name} takes 3-channel images, got input shape {input_shape}")
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return build


MODELS: dict[str, Callable[[Shape, int], nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "conv1d": Conv1DNet,
    "resnet8": ResNet8,
    "resnet50": _torchvision("resnet50"),
    "vgg11": _torchvision("vgg11"),
}


def build_model(name: str, input_shape: Shape, num_classes: int) -> nn.Module:
    """Build a registered model; an unknown name lists the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), num_classes)
