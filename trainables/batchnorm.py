"""BatchNorm modes of a trial, and the BatchNorm batch they give.

The statistics batch changes what a study measures: with per-worker statistics the BN batch is
a worker's micro-batch, which grows with the global batch; Goyal et al. keep it at 32 per GPU
whatever the global batch. *Ghost BatchNorm* (Hoffer et al.) normalises each group of
`ghost_batch` examples of a micro-batch on its own, so the BN batch is the same at every batch
size: that is the study default (science.md section 2 and 4).

Ghost BatchNorm is written here because neither PyTorch nor timm has it. It is one call of
PyTorch's fused `batch_norm`: a micro-batch of k groups of G examples is viewed as G examples
of k x C channels, so each (group, channel) gets its own statistics, and the running statistics
move by the mean of the groups' statistics (one update per forward, with BatchNorm's usual
momentum). Evaluation is plain BatchNorm with the running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over groups of `ghost_batch` examples."""

    ghost_batch: int = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        group = self.ghost_batch
        if not self.training or n <= group:
            return super().forward(x)
        if n % group:
            # A ragged last group: normalise group by group (rare: grids are powers of two).
            return torch.cat([super(GhostBatchNorm2d, self).forward(c) for c in x.split(group)])
        k, channels = n // group, x.shape[1]
        # (k*G, C, H, W) -> (G, k*C, H, W): channel j of group i becomes channel i*C + j.
        grouped = x.unflatten(0, (k, group)).transpose(0, 1).flatten(1, 2)
        running_mean = self.running_mean.repeat(k)
        running_var = self.running_var.repeat(k)
        out = F.batch_norm(
            grouped,
            running_mean,
            running_var,
            self.weight.repeat(k) if self.weight is not None else None,
            self.bias.repeat(k) if self.bias is not None else None,
            training=True,
            momentum=self.momentum if self.momentum is not None else 0.1,
            eps=self.eps,
        )
        with torch.no_grad():  # each repeat moved by its group's statistics: take their mean
            self.running_mean.copy_(running_mean.view(k, channels).mean(0))
            self.running_var.copy_(running_var.view(k, channels).mean(0))
            self.num_batches_tracked += 1
        return out.unflatten(1, (k, channels)).transpose(0, 1).flatten(0, 1)


class PartsAsOneForward:
    """Leaves BatchNorm's running statistics as one forward pass of a whole batch would, when
    the batch runs as equal parts (the noise scale's two halves under ghost BatchNorm).

    Every part after the first starts again from the statistics before the batch; `finish`
    sets them to the parts' mean. Ghost BatchNorm moves its running statistics by the mean of
    its groups' statistics, so with equal parts that mean is exactly one whole forward's update
    (and `num_batches_tracked` moves by one), where running the parts one after the other
    would have moved the statistics twice.
    """

    def __init__(self, model: nn.Module):
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.before = [self._buffers(m) for m in self.layers]
        self.after: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    @staticmethod
    def _buffers(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.running_mean.clone(), layer.running_var.clone()

    def next_part(self) -> None:
        """Call before every part after the first."""
        self.after.append([self._buffers(m) for m in self.layers])
        # Through `.data`: the forward passes' graphs hold these buffers (unused by a training
        # backward), and an in-place change they can see would fail that backward.
        for layer, (mean, var) in zip(self.layers, self.before, strict=True):
            layer.running_mean.data.copy_(mean)
            layer.running_var.data.copy_(var)
            layer.num_batches_tracked.data -= 1

    def finish(self) -> None:
        """Call after the last part's forward pass."""
        ends = [*self.after, [self._buffers(m) for m in self.layers]]
        for i, layer in enumerate(self.layers):
            layer.running_mean.data.copy_(torch.stack([e[i][0] for e in ends]).mean(0))
            layer.running_var.data.copy_(torch.stack([e[i][1] for e in ends]).mean(0))


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def apply_bn_mode(model: nn.Module, mode: str, ghost_batch: int, world: int) -> nn.Module:
    """Per-worker statistics, synchronised across workers, or ghost BatchNorm groups."""
    if mode == "sync" and world > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if mode == "ghost":
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = GhostBatchNorm2d
                module.ghost_batch = ghost_batch
    return model


def bn_batch(mode: str, ghost_batch: int, micro_batch: int, workers: int) -> int:
    """Examples whose statistics one BatchNorm normalisation uses in training."""
    if mode == "ghost":
        return min(ghost_batch, micro_batch)
    if mode == "sync":
        return micro_batch * workers
    return micro_batch


def bn_label(model: nn.Module, mode: str, ghost_batch: int, micro_batch: int, workers: int) -> str:
    """What the report shows: `ghost32`, `per_worker`, `sync`, or `none` for a model without BN."""
    if not has_batchnorm(model):
        return "none"
    return f"ghost{ghost_batch}" if mode == "ghost" else mode
