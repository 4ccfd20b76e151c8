"""The training loop: plain PyTorch, the same in-process, in tests and inside Ray Train workers.

`train(config, ...)` runs a trial for its budget in optimizer steps (`trainables.budget`) and,
every `eval_every` steps and at its end, evaluates on the held-out split and hands the metrics
(and, for checkpointing, the full training state) to a `report` callable. A run resumed from a
state continues at its exact step, in the middle of an epoch if need be, with the same data
order. Distributed data parallelism is whatever `wrap_model` returns (Ray's `prepare_model`
gives DDP); all cross-worker reductions go through `trainables.collective`, a no-op in one
process. Evaluation is `trainables.evaluation`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from trainables import accel
from trainables.batchnorm import (
    PartsAsOneForward,
    apply_bn_mode,
    bn_batch,
    bn_label,
    has_batchnorm,
)
from trainables.budget import default_eval_every, evaluation_steps
from trainables.budget_free import evaluation_grid, weight_average
from trainables.collective import all_reduce_sum
from trainables.config import TrialConfig
from trainables.data import BatchSource, Splits
from trainables.evaluation import evaluate
from trainables.metrics import get_metric
from trainables.noise_scale import NoiseScale, squared_norm
from trainables.optim import build_optimizer, lr_at_step, param_groups, set_lr
from trainables.trial_data import open_splits, trial_workload
from trainables.workload import chance_loss

Report = Callable[[dict[str, Any], dict[str, Any] | None], None]
DIVERGENCE_CHECK_EVERY = 16  # steps between cross-worker divergence checks (one tiny all-reduce)
# Steps between gradient-noise-scale measurements (trainables.noise_scale): at least
# NOISE_SCALE_EVERY, and at least NOISE_SCALE_EXAMPLES of a worker's examples. A measurement
# runs a step as two half-size passes (or a second backward pass through a retained graph), and
# a pass has a fixed cost whatever its size, so it costs a small batch relatively more:
# measured on digits (CPU), a measured step costs +64% at batch 8, +45% at 32, +12% at 128 and
# 512. Every 4th step, that was 16% / 11% / 3% / 3% of training time; with the examples floor
# (every 64th step at batch 8, 16th at 32), bench/noise_scale_overhead.py gives <= 5% at each.
NOISE_SCALE_EVERY = 4
NOISE_SCALE_EXAMPLES = 512


def noise_scale_interval(per_worker_batch: int) -> int:
    """Optimizer steps between two noise-scale measurements at this per-worker batch."""
    return max(NOISE_SCALE_EVERY, math.ceil(NOISE_SCALE_EXAMPLES / max(per_worker_batch, 1)))


def halves_are_independent(micro_batch: int, bn_mode: str, ghost_batch: int, no_bn: bool) -> bool:
    """Whether a micro-batch's two halves can run as two micro-batches without changing what is
    computed: no BatchNorm statistic spans both (no BatchNorm, or ghost groups inside each half)."""
    half = micro_batch // 2
    ghost_inside = bn_mode == "ghost" and half >= ghost_batch and half % ghost_batch == 0
    return micro_batch % 2 == 0 and (no_bn or ghost_inside)


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
    start_state: dict[str, Any] | None = None,
    keep_steps: tuple[int, ...] = (),
    lr_fn: Callable[[int], float] | None = None,
    test_at_end: bool = True,
) -> None:
    """Train one trial for its budget; call `report(metrics, state)` after every evaluation.

    Stops early, reporting `diverged=True`, when the training loss turns non-finite or exceeds
    `divergence_factor` x the chance-level loss ln(num_classes); and, with `stop_at_target`,
    once the study metric reaches it (`reached_target=True`).

    A branch (`tuner.branch`) starts from another run's `start_state` (its weights and
    optimizer state; its own steps count from 0), with the lr `lr_fn(step)` in place of the
    config's schedule. `keep_steps`: steps evaluated besides the regular evaluations, and
    reported with every validation example's value as the run's end is, where a base run keeps
    checkpoints to branch from and a branch averages its window's end. `test_at_end=False`
    skips the test set (a branch is judged on validation only).
    """
    device = device or torch.device("cpu")
    layout = config.layout()
    if world != layout.workers:
        raise ValueError(f"config asks for {layout.workers} workers but {world} are running")
    # Every evaluation so far, without its per-example record: a resumed run reports them all
    # again, in order.
    history: list[dict[str, Any]] = []
    if resume_state:
        # The run's evaluations up to its checkpoint first, again (the same numbers, nothing
        # trained): a scheduler that never saw them judges the trial at each, as it would have.
        # Not the checkpoint's alone: a Ray Train run's workers train on while their reports
        # travel, so a study killed then had seen its first evaluation at most, and its ASHA
        # judged the resumed trial at step 45 where an uninterrupted study stopped it at 15
        # (seen in CI). Evaluations it did see are ignored again (one record per step). A run
        # that had ended (full budget, diverged or at target) ends here.
        history = list(resume_state.get("history") or [resume_state["metrics"]])
        for earlier in history:
            report(earlier, None)
        if resume_state.get("finished"):
            return
    torch.manual_seed(config.seed)  # same initial weights on every worker and every retry
    workload = trial_workload(config)
    if splits is None:
        splits = open_splits(config)
    source = BatchSource(
        splits,
        config.batch_size,
        rank,
        world,
        config.seed,
        device,
        loader_workers=config.loader_workers,
        micro_batch=layout.micro_batch,
    )
    per_epoch = source.steps_per_epoch
    n_train = len(splits.train)
    if per_epoch < 1:
        raise ValueError(f"batch {config.batch_size} exceeds the {n_train} training examples")
    total = config.budget().steps(n_train, config.batch_size)
    if config.budget_free:
        evaluations = evaluation_grid(total)
    else:
        evaluations = evaluation_steps(total, config.eval_every or default_eval_every(total))
    evaluations = sorted(set(evaluations) | {s for s in keep_steps if 0 < s <= total})

    model = workload.build_model(splits.input_shape, splits.num_classes)
    model = apply_bn_mode(model, config.bn_mode, config.ghost_batch, world).to(device)
    speed = accel.choose(model, device, total, config.compile)
    accel.configure_backends(speed)
    accel.prepare_model(model, speed)
    optimizer = build_optimizer(
        config.optimizer,
        param_groups(model, config.weight_decay),
        lr=config.peak_lr,
        momentum=config.momentum,
        beta2=config.beta2,
        fused=speed.fused_optimizer,
    )
    own_loss = workload.loss
    criterion = own_loss or nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    own_metric = getattr(workload.metric, "fn", None)
    # Divergence: the training loss beyond `divergence_factor` x chance (cross-entropy), or x
    # the first checked window's loss (a workload's own loss, whose chance level is unknown).
    loss_limit = math.nan if own_loss else config.divergence_factor * chance_loss(splits)
    step = 0
    noise = NoiseScale()
    if start_state:  # a branch: another run's weights and optimizer, its own step count
        model.load_state_dict(start_state["model"])
        optimizer.load_state_dict(start_state["optimizer"])
        loss_limit = start_state.get("loss_limit", loss_limit)
    if resume_state:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        step = resume_state["step"]
        noise = NoiseScale(**resume_state.get("noise_scale", {}))
        loss_limit = resume_state.get("loss_limit", loss_limit)
    average = weight_average(model) if config.budget_free else None
    if average is not None and resume_state and "average" in resume_state:
        average.module.load_state_dict(resume_state["average"])
    resumed_at = step  # 0 for a fresh run: a retry that ignored its checkpoint shows here
    ddp_model = accel.compiled(wrap_model(model), speed)

    schedule = config.lr_schedule(total)
    metric = get_metric(config.metric, config.metric_mode)
    eval_batch = min(max(layout.micro_batch, 256), config.max_device_batch)
    constants = {
        "budget_steps": total,
        "warmup_steps": schedule["warmup_steps"],
        "peak_lr": config.peak_lr,
        "global_batch": layout.global_batch,
        "per_worker_batch": layout.per_worker,
        "accumulation_steps": layout.accumulation_steps,
        "micro_batch": layout.micro_batch,
        "tokens_per_example": splits.tokens_per_example,
        "workers": layout.workers,
        # BN statistics change what is measured (per worker, synchronised, ghost groups).
        "bn_mode": bn_label(model, config.bn_mode, config.ghost_batch, layout.micro_batch, world),
        "bn_batch": bn_batch(config.bn_mode, config.ghost_batch, layout.micro_batch, world),
    }
    if constants["bn_mode"] == "none":
        constants["bn_batch"] = 0  # no BatchNorm in the model
    halves_independent = halves_are_independent(
        layout.micro_batch, config.bn_mode, config.ghost_batch, constants["bn_mode"] == "none"
    )
    # The small gradient must be one worker's own: across workers it is taken before DDP's
    # all-reduce (a first micro-batch or half run under no_sync), so a step of one micro-batch
    # whose halves share BatchNorm statistics is not measured; nor under torch.compile (whose
    # backward is not run twice).
    measure_noise = not config.compile and (
        world == 1 or layout.accumulation_steps > 1 or halves_independent
    )
    noise_every = noise_scale_interval(layout.per_worker)
    constants |= speed.as_metrics()

    # [loss sum, steps, non-finite count] since the last evaluation and for the current check
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    window = torch.zeros(3, device=device, dtype=torch.float64)
    next_eval = iter([s for s in evaluations if s > step])
    due = next(next_eval)
    started, since, lr, diverged = time.perf_counter(), step, config.peak_lr, False
    first_step_s = 0.0  # the first step's time: with --compile, mostly compilation
    ddp_model.train()
    while step < total and not diverged:
        epoch, offset = divmod(step, per_epoch)
        for micro_batches in source.train_batches(epoch, start=offset):
            lr = lr_fn(step) if lr_fn is not None else lr_at_step(step, **schedule)
            set_lr(optimizer, lr)
            began = time.perf_counter()
            window += _train_step(
                ddp_model,
                optimizer,
                criterion,
                micro_batches,
                source.per_step,
                device,
                speed,
                noise if measure_noise and step % noise_every == 0 else None,
                world,
                halves_independent,
            )
            step += 1
            if average is not None:
                average.update(model, step=step)
            if not first_step_s:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_step_s = time.perf_counter() - began
            if step % DIVERGENCE_CHECK_EVERY == 0 or step == due:
                diverged, window_loss = _check_divergence(window, sums, loss_limit)
                if math.isnan(loss_limit) and math.isfinite(window_loss):
                    loss_limit = config.divergence_factor * max(window_loss, 1e-12)
                noise.flush()  # its norms are read in the same host sync
            if step != due and not diverged:
                continue
            train_time = time.perf_counter() - started
            # The run's end keeps every validation example's value, for paired comparisons
            # (a diverged run's end too: it is judged at it, issue 32), and is scored on the
            # test set, where the data set has one (nothing selects on it).
            keep = metric.key if step == total or step in keep_steps or diverged else None
            judged = average.module if average is not None else ddp_model
            scores = evaluate(judged, source, eval_batch, device, speed, own_loss, own_metric, keep)
            if step == total and splits.test is not None and test_at_end:
                test = evaluate(
                    judged,
                    source,
                    eval_batch,
                    device,
                    speed,
                    own_loss,
                    own_metric,
                    split="test",
                )
                scores |= {
                    "test" + key[3:]: test[key]
                    for key in ("val_acc", "val_loss", "val_metric", "val_examples")
                    if key in test
                }
            loss_sum, steps, _ = sums.tolist()
            examples = step * config.batch_size
            reached = bool(config.stop_at_target) and metric.reached(
                scores[metric.key], config.stop_at_target
            )
            samples_per_second = (step - since) * config.batch_size / max(train_time, 1e-9)
            metrics = {
                "optimizer_steps": step,
                "examples_seen": examples,
                "epoch": examples / n_train,
                "progress": step / total,
                "train_loss": loss_sum / max(steps, 1),
                **scores,
                "lr": lr,
                "samples_per_second": samples_per_second,
                # An example of a language model is a sequence of this many tokens.
                "tokens_per_second": samples_per_second * splits.tokens_per_example,
                "window_time_s": time.perf_counter() - started,
                "first_step_s": first_step_s,
                "gns_b_simple": noise.b_simple,
                "gns_trace": noise.trace,
                "gns_grad_sq": noise.grad_sq,
                "gns_steps": noise.steps,
                "diverged": diverged,
                "reached_target": reached,
                "resumed_at_step": resumed_at,
                **constants,
            }
            finished = diverged or reached or step == total
            history.append(
                {
                    k: v
                    for k, v in metrics.items()
                    if k not in ("val_per_example", "val_metric_boot")
                }
            )
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "noise_scale": noise.state(),
                "loss_limit": loss_limit,
                "metrics": metrics,
                "history": list(history[:-1]) + [metrics],
                "finished": finished,
            }
            if average is not None:
                state["average"] = average.module.state_dict()
            report(metrics, state)
            if finished:
                return
            sums.zero_()
            due = next(next_eval)
            started, since = time.perf_counter(), step


def _train_step(
    ddp_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    micro_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    device: torch.device,
    speed: accel.Acceleration,
    noise: NoiseScale | None = None,
    world: int = 1,
    halves_independent: bool = False,
) -> torch.Tensor:
    """One optimizer step over this worker's `count` micro-batches, accumulating gradients;
    returns [loss, 1, non-finite] to add to the divergence window (no host sync here).

    With `noise`, the step also yields the two gradients of the noise-scale estimator: with
    accumulation, this worker's first micro-batch against the step's (all-reduced) gradient.
    With one micro-batch, the first half of this worker's share against the step's gradient:
    run as two micro-batches when no BatchNorm statistic spans both halves
    (`halves_independent`: the same computation), else (one worker only) from one forward and
    two backward passes (the first half's loss then still sees the second half through
    BatchNorm; that costs a second backward pass).
    """
    step_loss = torch.zeros((), device=device, dtype=torch.float64)
    # Only a measured step needs the parameter list (kept off the hot path otherwise).
    params = [p for g in optimizer.param_groups for p in g["params"]] if noise is not None else []
    parts = None  # with BatchNorm, the halves leave its running statistics as one forward
    if noise is not None and count == 1 and halves_independent:
        micro_batches, count = _halves(micro_batches), 2  # the accumulation path, below
        parts = PartsAsOneForward(ddp_model) if has_batchnorm(ddp_model) else None
    small = None  # (squared norm, examples) of the small-batch gradient
    batch = 0
    for i, (xm, ym) in enumerate(micro_batches):
        last = i == count - 1
        batch += len(ym)
        # Skip DDP's gradient all-reduce on all but the last micro-batch.
        sync = (
            contextlib.nullcontext()
            if last or not hasattr(ddp_model, "no_sync")
            else ddp_model.no_sync()
        )
        split = noise is not None and count == 1 and world == 1 and len(ym) >= 2
        if parts is not None and i > 0:
            parts.next_part()
        with sync, accel.autocast(speed):
            logits = ddp_model(accel.prepare_input(xm, speed)).float()
            if split:
                half = len(ym) // 2
                first = criterion(logits[:half], ym[:half]) * half / len(ym)
                loss = first + criterion(logits[half:], ym[half:]) * (len(ym) - half) / len(ym)
            else:
                loss = criterion(logits, ym) / count
        if parts is not None and last:
            parts.finish()
        if split:
            first.backward(retain_graph=True)
            grads = [p.grad for p in params if p.grad is not None]
            small = (squared_norm(grads) * (len(ym) / half) ** 2, half)
            (loss - first).backward()
        else:
            loss.backward()
            if noise is not None and count > 1 and i == 0:
                grads = [p.grad for p in params if p.grad is not None]
                small = (squared_norm(grads) * count**2, len(ym))
        step_loss += loss.detach().double()
    if small is not None:
        big_sq = squared_norm([p.grad for p in params if p.grad is not None])
        noise.defer(small[0], big_sq, small[1], batch * world)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    finite = torch.isfinite(step_loss)
    return torch.stack(
        [torch.where(finite, step_loss, 0.0), torch.ones_like(step_loss), (~finite).double()]
    )


def _halves(micro_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """The one micro-batch of a step as its two halves."""
    for x, y in micro_batches:
        half = len(y) // 2
        yield x[:half], y[:half]
        yield x[half:], y[half:]


def _check_divergence(
    window: torch.Tensor, sums: torch.Tensor, loss_limit: float
) -> tuple[bool, float]:
    """All-reduce the window's [loss sum, steps, non-finite]; fold it into the running sums.
    Returns whether the run diverged and the window's mean loss (NaN: no step)."""
    totals = all_reduce_sum(window.clone())
    sums += totals
    loss_sum, steps, bad = totals.tolist()
    window.zero_()
    if steps == 0:
        return False, math.nan
    # Both sums run over workers and steps, so their ratio is the mean per-step loss.
    mean = loss_sum / steps
    return bad > 0 or mean > loss_limit, mean  # a NaN limit (not yet known) never trips
