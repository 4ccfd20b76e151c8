"""The flat, validated trial config that flows from the search to the worker loop.

Config flows one way: CLI -> study spec -> Optuna suggestions -> `TrialConfig` -> loop. A key
that is unknown or missing fails loudly here, so a typo cannot silently become a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainables.budget import UNITS, Budget, warmup_steps
from trainables.metrics import METRICS, get_metric
from trainables.optim import OPTIMIZERS, SCALING_RULES, SCHEDULES, scaled_lr

BN_MODES = ("per_worker", "sync", "ghost")
DECODERS = ("cpu", "gpu")
# Warmup is a fraction of the budget, and never more than this (science.md section 2: Goyal et
# al. warm up over 5 of 90 epochs, 6%); longer, the peak lr would hardly be used.
WARMUP_MAX_FRACTION = 0.25


class ConfigError(ValueError):
    """A trial or study config that cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class BatchLayout:
    """How one global batch is split: workers x accumulation steps x micro-batch."""

    global_batch: int
    workers: int
    per_worker: int
    accumulation_steps: int
    micro_batch: int


def batch_layout(global_batch: int, workers: int, max_device_batch: int) -> BatchLayout:
    """Split `global_batch` across `workers`, accumulating when a share exceeds the cap.

    The accumulation count is the smallest one that divides the worker's share evenly into
    micro-batches of at most `max_device_batch`, so every micro-batch has the same size and
    the accumulated gradient equals the full-batch gradient.
    """
    if global_batch < 1 or workers < 1 or max_device_batch < 1:
        raise ConfigError(
            f"batch {global_batch}, workers {workers}, device cap {max_device_batch}: "
            "all must be positive"
        )
    if global_batch % workers:
        raise ConfigError(
            f"global batch {global_batch} cannot be split evenly across {workers} workers; "
            f"use batch sizes divisible by {workers}"
        )
    per_worker = global_batch // workers
    steps = next(
        a
        for a in range(1, per_worker + 1)
        if per_worker % a == 0 and per_worker // a <= max_device_batch
    )
    return BatchLayout(global_batch, workers, per_worker, steps, per_worker // steps)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; built only through `from_dict`, which validates it."""

    workload: str  # a reference trainables.workloads.find_workload resolves, on every worker
    dataset: str
    data_dir: str | None
    batch_size: int
    scaling_rule: str
    optimizer: str
    base_lr: float
    reference_batch: int
    momentum: float
    warmup_fraction: float  # of the budget's steps: a ramp from 0 to the peak lr
    weight_decay: float
    budget_unit: str  # epochs, steps or examples (trainables.budget)
    budget_amount: float
    min_steps: int  # floor of the budget in steps at every batch size (0: none)
    eval_every: int  # optimizer steps between evaluations (0: about 20 per trial)
    schedule: str
    final_lr_factor: float
    label_smoothing: float
    num_workers: int
    max_device_batch: int
    bn_mode: str
    ghost_batch: int
    divergence_factor: float
    max_train_examples: int  # 0: the whole training split; else a seeded subset (smoke runs)
    split_seed: int  # the held-out validation split: the same for every trial of a study
    seed: int  # initial weights and batch order: varied only by confirmation runs
    metric: str  # how a trial is judged: accuracy, loss, or the workload's own metric
    metric_mode: str  # the direction of the workload's own metric ("" for accuracy and loss)
    stop_at_target: float  # end the trial once the metric reaches this (0: never)
    use_gpu: bool
    compile: bool  # torch.compile the model (trainables.accel)
    loader_workers: int  # DataLoader processes for streamed (ImageFolder) data
    decode: str  # where ImageFolder JPEGs are decoded: gpu (nvJPEG) or cpu
    beta2: float = 0.999  # AdamW's / LAMB's second-moment decay (momentum is their beta1)
    # The steps-to-target arm (trainables.budget_free): warmup of `warmup_in_steps` steps, then
    # a constant lr, judged on the weights' moving average, evaluated on a geometric grid.
    budget_free: bool = False
    warmup_in_steps: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build and validate; unknown or missing keys raise `ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if unknown:
            raise ConfigError(f"unknown trial config keys: {', '.join(unknown)}")
        if missing:
            raise ConfigError(f"missing trial config keys: {', '.join(missing)}")
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        checks = [
            (self.scaling_rule in SCALING_RULES, f"scaling_rule must be one of {SCALING_RULES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.bn_mode in BN_MODES, f"bn_mode must be one of {BN_MODES}"),
            (self.base_lr > 0, "base_lr must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (0 < self.beta2 < 1, "beta2 must be in (0, 1)"),
            (
                0 <= self.warmup_fraction <= WARMUP_MAX_FRACTION,
                f"warmup_fraction must be in [0, {WARMUP_MAX_FRACTION}] of the budget",
            ),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_in_steps >= 0, "warmup_in_steps must be >= 0"),
            (self.budget_unit in UNITS, f"budget_unit must be one of {UNITS}"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: about 20 evaluations)"),
            (
                self.metric in METRICS or self.metric_mode in ("max", "min"),
                f"metric must be one of {tuple(METRICS)}, or have metric_mode max or min",
            ),
            (
                self.stop_at_target == 0
                or (self.metric not in METRICS and not self.metric_mode)
                or get_metric(self.metric, self.metric_mode).target_problem(self.stop_at_target)
                is None,
                "stop_at_target must be 0 (never) or a target of the metric",
            ),
            (self.reference_batch >= 1, "reference_batch must be >= 1"),
            (0 <= self.final_lr_factor <= 1, "final_lr_factor must be in [0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.divergence_factor > 1, "divergence_factor must be > 1"),
            (self.ghost_batch >= 1, "ghost_batch must be >= 1"),
            (self.max_train_examples >= 0, "max_train_examples must be >= 0"),
            (self.loader_workers >= 0, "loader_workers must be >= 0"),
            (self.decode in DECODERS, f"decode must be one of {DECODERS}"),
            (self.decode == "cpu" or self.use_gpu, "decode gpu needs use_gpu"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.budget()  # raises on an impossible budget
        self.layout()  # raises on an impossible split

    def budget(self) -> Budget:
        try:
            return Budget(self.budget_unit, self.budget_amount, self.min_steps)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def layout(self) -> BatchLayout:
        return batch_layout(self.batch_size, self.num_workers, self.max_device_batch)

    def lr_schedule(self, total_steps: int) -> dict[str, Any]:
        """The keyword arguments of `trainables.optim.lr_at_step` for a run of `total_steps`."""
        if self.budget_free:  # nothing depends on where the run ends
            return {
                "peak_lr": self.peak_lr,
                "warmup_steps": min(self.warmup_in_steps, total_steps),
                "total_steps": total_steps,
                "schedule": "constant",
                "final_factor": 1.0,
            }
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": warmup_steps(self.warmup_fraction, total_steps),
            "total_steps": total_steps,
            "schedule": self.schedule,
            "final_factor": self.final_lr_factor,
        }

    @property
    def peak_lr(self) -> float:
        """The actual lr after the scaling rule (before warmup and decay)."""
        return scaled_lr(self.base_lr, self.scaling_rule, self.batch_size, self.reference_batch)
