"""The training loop: plain PyTorch, the same in-process, in tests and inside Ray Train workers.

`train(config, ...)` runs a trial epoch by epoch and hands every epoch's metrics (and, for
checkpointing, the full training state) to a `report` callable. Distributed data parallelism is
whatever `wrap_model` returns (Ray's `prepare_model` gives DDP); all cross-worker reductions go
through `_all_reduce_sum`, which is a no-op in a single process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainables.config import TrialConfig
from trainables.data import BatchSource, Splits, load_dataset
from trainables.models import build_model
from trainables.optim import build_optimizer, lr_at_step, param_groups, set_lr

Report = Callable[[dict[str, Any], dict[str, Any] | None], None]
DIVERGENCE_CHECK_EVERY = 16  # steps between cross-worker divergence checks (one tiny all-reduce)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from chunks of `ghost_batch` (Hoffer et al.).

    Running statistics are updated once per chunk, so their effective momentum is higher than
    with one update per batch; evaluation is plain BatchNorm.
    """

    ghost_batch: int = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_batch:
            return super().forward(x)
        return torch.cat(
            [super(GhostBatchNorm2d, self).forward(c) for c in x.split(self.ghost_batch)]
        )


def apply_bn_mode(model: nn.Module, mode: str, ghost_batch: int, world: int) -> nn.Module:
    """Per-worker statistics (Goyal et al., the default), synchronised, or ghost BatchNorm."""
    if mode == "sync" and world > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if mode == "ghost":
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = GhostBatchNorm2d
                module.ghost_batch = ghost_batch
    return model


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _autocast(device: torch.device):
    # bf16 autocast on GPUs only: CPU autocast would slow the small CPU models down.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(
    model: nn.Module, source: BatchSource, batch: int, device: torch.device
) -> tuple[float, float]:
    """Validation loss and accuracy over the whole held-out split, summed across workers."""
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad(), _autocast(device):
        for x, y in source.val_batches(batch):
            logits = model(x).float()
            totals[0] += criterion(logits, y).double()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
    loss_sum, correct, count = _all_reduce_sum(totals).tolist()
    return loss_sum / count, correct / count


def train(
    config: TrialConfig,
    *,
    report: Report,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m,
    resume_state: dict[str, Any] | None = None,
    splits: Splits | None = None,
) -> None:
    """Train one trial; call `report(metrics, state)` after every epoch.

    Stops early, reporting `diverged=True`, when the training loss turns non-finite or exceeds
    `divergence_factor` x the chance-level loss ln(num_classes).
    """
    device = device or torch.device("cpu")
    layout = config.layout()
    if world != layout.workers:
        raise ValueError(f"config asks for {layout.workers} workers but {world} are running")
    torch.manual_seed(config.seed)  # same initial weights on every worker and every retry
    if splits is None:
        splits = load_dataset(
            config.dataset,
            config.data_dir,
            config.seed,
            synthetic_shape(config.model),
            config.max_train_examples,
        )
    source = BatchSource(splits, config.batch_size, rank, world, config.seed, device)
    steps_per_epoch = source.steps_per_epoch
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch {config.batch_size} exceeds the {len(splits.train)} training examples"
        )

    model = build_model(config.model, splits.input_shape, splits.num_classes)
    model = apply_bn_mode(model, config.bn_mode, config.ghost_batch, world).to(device)
    optimizer = build_optimizer(
        config.optimizer,
        param_groups(model, config.weight_decay),
        lr=config.peak_lr,
        momentum=config.momentum,
    )
    start_epoch, step = 0, 0
    if resume_state:
        if resume_state.get("finished"):
            # The run had ended (full budget or diverged) before its driver was restarted:
            # report the final epoch again instead of training anything twice.
            report(resume_state["metrics"], None)
            return
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_epoch, step = resume_state["epoch"], resume_state["step"]
    ddp_model = wrap_model(model)

    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    schedule = dict(
        peak_lr=config.peak_lr,
        base_lr=config.base_lr,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        total_steps=config.epochs * steps_per_epoch,
        schedule=config.schedule,
        final_factor=config.final_lr_factor,
    )
    loss_limit = config.divergence_factor * math.log(splits.num_classes)
    eval_batch = min(max(layout.micro_batch, 256), config.max_device_batch)
    layout_metrics = {
        "global_batch": layout.global_batch,
        "per_worker_batch": layout.per_worker,
        "accumulation_steps": layout.accumulation_steps,
        "micro_batch": layout.micro_batch,
        "workers": layout.workers,
        # BN statistics change what is measured (per worker, synchronised, ghost groups).
        "bn_mode": config.bn_mode if config.bn_mode != "ghost" else f"ghost{config.ghost_batch}",
    }

    for epoch in range(start_epoch, config.epochs):
        ddp_model.train()
        started = time.perf_counter()
        # [loss sum, batches, non-finite count] for the epoch and for the current check window
        epoch_sums = torch.zeros(3, device=device, dtype=torch.float64)
        window = torch.zeros(3, device=device, dtype=torch.float64)
        diverged = False
        lr = schedule["peak_lr"]
        for x, y in source.train_batches(epoch):
            lr = lr_at_step(step, **schedule)
            set_lr(optimizer, lr)
            micro_x = x.split(layout.micro_batch)
            micro_y = y.split(layout.micro_batch)
            step_loss = torch.zeros((), device=device, dtype=torch.float64)
            for i, (xm, ym) in enumerate(zip(micro_x, micro_y, strict=True)):
                last = i == len(micro_x) - 1
                # Skip DDP's gradient all-reduce on all but the last micro-batch.
                sync = (
                    contextlib.nullcontext()
                    if last or not hasattr(ddp_model, "no_sync")
                    else ddp_model.no_sync()
                )
                with sync, _autocast(device):
                    loss = criterion(ddp_model(xm).float(), ym) / len(micro_x)
                loss.backward()
                step_loss += loss.detach().double()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            finite = torch.isfinite(step_loss)
            window += torch.stack(
                [
                    torch.where(finite, step_loss, 0.0),
                    torch.ones_like(step_loss),
                    (~finite).double(),
                ]
            )
            if step % DIVERGENCE_CHECK_EVERY == 0:
                diverged = _check_divergence(window, epoch_sums, loss_limit)
                if diverged:
                    break
        if not diverged:
            diverged = _check_divergence(window, epoch_sums, loss_limit)
        train_time = time.perf_counter() - started
        loss_sum, batches, _ = epoch_sums.tolist()
        val_loss, val_acc = evaluate(ddp_model, source, eval_batch, device)
        examples = step * config.batch_size
        epoch_examples = (step - (epoch * steps_per_epoch)) * config.batch_size
        metrics = {
            "epoch": epoch + 1,
            "examples_seen": examples,
            "optimizer_steps": step,
            "train_loss": loss_sum / max(batches, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "peak_lr": config.peak_lr,
            "samples_per_second": epoch_examples / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - started,
            "diverged": diverged,
            **layout_metrics,
        }
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "metrics": metrics,
            "finished": diverged or epoch + 1 == config.epochs,
        }
        report(metrics, state)
        if diverged:
            return


def _check_divergence(window: torch.Tensor, epoch_sums: torch.Tensor, loss_limit: float) -> bool:
    """All-reduce the window's [loss sum, batches, non-finite]; fold it into the epoch sums."""
    totals = _all_reduce_sum(window.clone())
    epoch_sums += totals
    loss_sum, batches, bad = totals.tolist()
    window.zero_()
    if batches == 0:
        return False
    # Both sums run over workers and steps, so their ratio is the mean per-step loss.
    return bad > 0 or loss_sum / batches > loss_limit


def synthetic_shape(model: str) -> tuple[int, ...]:
    """Input shape of synthetic data for a model."""
    return {"conv1d": (1, 40), "simple_cnn": (1, 28, 28)}.get(model, (3, 32, 32))
