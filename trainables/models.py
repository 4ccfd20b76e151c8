"""Model registry: the small models of Shallue et al. and torchvision's ImageNet models.

`build_model(name, input_shape, num_classes)` is the only entry point; every model takes
(C, H, W) images, or (C, L) signals for the 1-D model. The language models (`TOKEN_MODELS`)
take (N, L) integer tokens, input shape (L,) and the vocabulary as `num_classes`, and return
logits (N, V, L): class dimension second, as `nn.CrossEntropyLoss` and `argmax(1)` expect.
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


def _init_small(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases. With the head tied to the
    embedding, torch's N(0, 1) embedding would start the logits at a std of ~sqrt(d)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class TransformerLM(nn.Module):
    """Decoder-only pre-norm transformer: learned positions, causal self-attention, GELU MLP
    (4d), final LayerNorm, output head tied to the token embedding; no dropout."""

    def __init__(self, input_shape: Shape, num_classes: int, d: int, layers: int, heads: int):
        super().__init__()
        (self.max_len,) = input_shape
        self.embed = nn.Embedding(num_classes, d)
        self.position = nn.Embedding(self.max_len, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes, bias=False)
        self.apply(_init_small)
        self.head.weight = self.embed.weight
        mask = nn.Transformer.generate_square_subsequent_mask(self.max_len)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.embed(x.long()) + self.position(torch.arange(length, device=x.device))
        mask = self.causal_mask[:length, :length].to(h.dtype)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h)).transpose(1, 2)


class LSTMLM(nn.Module):
    """Byte embedding, a stacked LSTM, a linear head; no dropout."""

    def __init__(self, input_shape: Shape, num_classes: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(num_classes, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.head(out).transpose(1, 2)


def _transformer_lm(d: int, layers: int, heads: int) -> Callable[[Shape, int], nn.Module]:
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        return TransformerLM(input_shape, num_classes, d, layers, heads)

    return build


def _lstm_lm(hidden: int, layers: int = 2) -> Callable[[Shape, int], nn.Module]:
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        return LSTMLM(input_shape, num_classes, hidden, layers)

    return build


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
    "transformer_lm_tiny": _transformer_lm(64, 2, 2),
    "transformer_lm_small": _transformer_lm(128, 4, 4),
    "transformer_lm_base": _transformer_lm(512, 8, 8),
    "lstm_lm": _lstm_lm(256),
}
# Models of (N, L) tokens that return (N, V, L) logits.
TOKEN_MODELS = frozenset(
    {"transformer_lm_tiny", "transformer_lm_small", "transformer_lm_base", "lstm_lm"}
)


def build_model(name: str, input_shape: Shape, num_classes: int) -> nn.Module:
    """Build a registered model; an unknown name lists the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), num_classes)
