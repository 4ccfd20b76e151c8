"""Evaluation on the held-out split: loss, accuracy, the per-example loss's spread, a
workload's own metric, and (for paired comparisons) every example's value, summed or gathered
across workers (`trainables.collective`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables import accel, metric_boot
from trainables.collective import all_gather, all_reduce_sum
from trainables.data import BatchSource
from trainables.per_example import encode as encode_per_example
from trainables.per_example import encode_single

LOSS_CHUNK = 4  # examples per call of a workload's own loss in evaluation (its spread)


def evaluate(
    model: nn.Module,
    source: BatchSource,
    batch: int,
    device: torch.device,
    speed: accel.Acceleration | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    keep: str | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """Validation loss (nats per predicted token or label), accuracy and example count over the
    whole held-out split, summed across workers, and the spread of the per-example loss.

    A language model's example is a sequence: its loss and accuracy are over every token, and
    the spread (`val_loss_sd`) is that of the per-sequence mean loss, whose sampling error
    over `val_examples` sequences is what the verdict's bounds need. A workload's own `loss`
    (a mean over what it is given) is called on chunks of LOSS_CHUNK examples, whose spread
    stands for the per-example one; accuracy is reported only for integer targets. A
    workload's own `metric` gets every worker's outputs and targets at once (`val_metric`).
    With `keep` ("val_acc" or "val_loss"), every example's value of it, in the split's order
    across workers, comes back encoded as `val_per_example` (`trainables.per_example`; an own
    loss's are its chunks' means). `split="test"`: the same over the test set.
    """
    speed = speed or accel.choose(model, device, 0, False)
    model.eval()
    # [loss sum, correct, predictions, examples, sum of squared per-example mean losses]
    totals = torch.zeros(5, device=device, dtype=torch.float64)
    criterion = nn.CrossEntropyLoss(reduction="none")
    outputs, targets, kept = [], [], []
    classes = True
    with torch.no_grad(), accel.autocast(speed):
        for x, y in source.val_batches(batch, split):
            out = model(accel.prepare_input(x, speed)).float()
            if metric is not None:
                outputs.append(out.cpu())
                targets.append(y.cpu())
            if loss is None:
                losses = criterion(out, y).double().reshape(len(y), -1)
                per_example = losses.mean(1)
                totals[0] += losses.sum()
                totals[2] += y.numel()
            else:
                per_example = torch.stack(
                    [
                        loss(out[i : i + LOSS_CHUNK], y[i : i + LOSS_CHUNK]).double().reshape(())
                        for i in range(0, len(y), LOSS_CHUNK)
                    ]
                )
                sizes = torch.tensor(
                    [min(LOSS_CHUNK, len(y) - i) for i in range(0, len(y), LOSS_CHUNK)],
                    device=per_example.device,
                    dtype=torch.float64,
                )
                totals[0] += (per_example * sizes).sum()
                totals[2] += len(y)
            if keep == "val_loss":
                kept.append(per_example.cpu())
            if loss is not None:
                # A chunk mean's variance is the per-example one over the chunk's size.
                per_example = per_example * sizes.sqrt()
            classes = classes and _has_classes(out, y)
            if classes:
                right = out.argmax(1) == y
                totals[1] += right.sum()
                if keep == "val_acc":
                    kept.append(right.double().reshape(len(y), -1).mean(1).cpu())
            totals[3] += len(y)
            totals[4] += (per_example**2).sum()
    loss_sum, correct, predictions, count, squares = all_reduce_sum(totals).tolist()
    model.train()
    mean = loss_sum / predictions
    if loss is None:
        variance = max(squares / count - mean**2, 0.0) * count / max(count - 1, 1)
    else:  # squares are of sqrt(size) * chunk means: E = Var_example + size * mean^2
        chunks = -(-count // LOSS_CHUNK)
        variance = max(squares / chunks - LOSS_CHUNK * mean**2, 0.0) * chunks / max(chunks - 1, 1)
    scores = {
        "val_loss": mean,
        "val_acc": correct / predictions if classes else math.nan,
        "val_examples": int(count),
        "val_loss_sd": math.sqrt(variance),
    }
    if metric is not None:
        gathered = _gathered(outputs, targets)
        scores["val_metric"] = float(metric(*gathered))
        if keep is not None:  # its sampling error over the examples (trainables.metric_boot)
            scores["val_metric_boot"] = encode_single(metric_boot.replicates(metric, *gathered))
    if keep == "val_loss" or (keep == "val_acc" and classes):
        mine = torch.cat(kept).numpy() if kept else np.zeros(0)
        scores["val_per_example"] = encode_per_example(np.concatenate(all_gather(mine)))
    return scores


def _has_classes(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Outputs are class scores (class dimension second) for integer targets."""
    return (
        not y.dtype.is_floating_point
        and out.ndim == y.ndim + 1
        and out.shape[0] == y.shape[0]
        and out.shape[2:] == y.shape[1:]
    )


def _gathered(outputs: list[torch.Tensor], targets: list[torch.Tensor]):
    """Every worker's validation outputs and targets, in the split's order (shards are
    contiguous and ranked)."""
    parts = all_gather((torch.cat(outputs), torch.cat(targets)))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
