"""The public workload type: what a study trains, on what data, judged how, with which defaults.

`from tuner import Workload` is this class. A user's own model is a `Workload` in their own
module, run as `python -m tuner.search my_pkg.my_module:workload`; the built-in workloads
(`trainables.workloads`) are `Workload`s too. Every field but `name`, `model` and `data` has a
default a first study can run with (docs/own-model.md).

The factories run on every Ray worker (and once in the driver, to check them before anything
starts), so they must be importable there: a module that is not installed is shipped to the
workers by the study (`tuner.shipping`). Plain Python and PyTorch: no Ray here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from search_spaces.spaces import SearchSpace
from trainables.splits import Splits, TensorSplit

# Defaults of a user's workload (docs/own-model.md): a grid of five batch sizes an order of
# magnitude and a half wide, ten epochs with at least 300 steps at every batch size (the
# large batch sizes of a small data set would otherwise get a handful), lr ranges a decade
# and a half on either side of the usual defaults (SGD 0.1 at batch 128, Adam 1e-3).
DEFAULT_BATCH_SIZES = (16, 32, 64, 128, 256)
DEFAULT_BUDGET = "epochs:10"
DEFAULT_MIN_STEPS = 300
DEFAULT_ACCURACY_TARGET = 0.9
DEFAULT_SPACES = {
    "sgd": SearchSpace(
        base_lr={"sgd": (1e-3, 1.0)}, weight_decay=(1e-6, 1e-2), warmup_fraction=(0.0, 0.2)
    ),
    "adamw": SearchSpace(
        base_lr={"adamw": (1e-4, 3e-2)},
        weight_decay=(1e-5, 1e-1),
        warmup_fraction=(0.0, 0.2),
        optimizers=("adamw",),
    ),
}
DEFAULT_DATASET = "default"  # the one data set of a workload given `data=`


@dataclass(frozen=True)
class Metric:
    """A metric of the user's own: `fn(outputs, targets) -> float` over the whole validation
    set (all workers' outputs gathered), higher is better when `mode` is "max".

    `tolerance`: the largest change in this metric (its own units) that still counts as "holds".
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    mode: str = ""
    tolerance: float = 0.01


@dataclass(frozen=True)
class Data:
    """One data set of a workload and the defaults that go with it (a built-in workload has
    several, chosen by `--dataset`; a workload given `data=` has one, "default")."""

    load: Callable[..., Any]  # (data_dir, seed) -> (train, val[, test]), or Splits
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES  # default grid
    budget: str = DEFAULT_BUDGET  # per trial: UNIT:AMOUNT (trainables.budget)
    min_steps: int = DEFAULT_MIN_STEPS  # and at least this many optimizer steps
    target: float | None = None  # of steps-to-target (None: the metric's default)
    max_device_batch: int = 1024  # largest micro-batch one device takes before accumulating
    measured: bool = False  # the budget was measured to suffice here (else an estimate)
    needs_files: bool = False  # reads files that may have to be downloaded or provided
    streamed: bool = False  # too large to open in the driver's check (ImageNet folders)


@dataclass(frozen=True)
class Workload:
    """A model, its data, how it is trained and judged, and the study's defaults for it.

    Required: `name`, `model` (a factory: called with the keyword arguments it names among
    `input_shape` and `num_classes`, or with none) and `data` (a factory: `(data_dir, seed)`,
    or fewer of them by name, returning the training and validation sets, each a torch
    `Dataset` or an `(inputs, targets)` pair of tensors). The rest is optional:
    `loss(outputs, targets) -> scalar tensor` (cross-entropy when omitted), `metric`
    ("accuracy", "loss", or a `Metric`), the default grid, budget, target, search ranges,
    reference batch and optimiser.
    """

    name: str
    model: Callable[..., nn.Module]
    data: Callable[..., Any] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metric: str | Metric = "accuracy"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    budget: str = DEFAULT_BUDGET
    min_steps: int = DEFAULT_MIN_STEPS
    target: float | None = None
    reference_batch: int | None = None  # where base_lr is defined (None: the smallest batch)
    optimizer: str = "sgd"
    space: SearchSpace | None = None  # search ranges (None: DEFAULT_SPACES[optimizer])
    description: str = ""
    datasets: Mapping[str, Data] = field(default_factory=dict)  # instead of `data`: named sets
    # How every trial trains (fixed, not searched).
    schedule: str = "cosine"
    final_lr_factor: float = 0.0
    momentum: float = 0.9  # AdamW's / LAMB's beta1 (searched where space= gives a range)
    beta2: float = 0.999  # AdamW's / LAMB's (likewise)
    label_smoothing: float = 0.0  # of the default cross-entropy loss
    bn_batch: int = 32  # ghost BatchNorm group: Goyal et al.'s 32 examples per GPU
    max_device_batch: int = 1024

    # --- what the study asks of it ------------------------------------------------------

    def data_sets(self) -> dict[str, Data]:
        """Its data sets by name, the default first."""
        if self.datasets:
            return dict(self.datasets)
        return {
            DEFAULT_DATASET: Data(
                load=self.data,
                batch_sizes=tuple(self.batch_sizes),
                budget=self.budget,
                min_steps=self.min_steps,
                target=self.target,
                max_device_batch=self.max_device_batch,
            )
        }

    @property
    def default_dataset(self) -> str:
        return next(iter(self.data_sets()))

    def settings(self, dataset: str) -> Data:
        sets = self.data_sets()
        if dataset not in sets:
            raise KeyError(
                f"workload {self.name!r} does not run on {dataset!r}; its data sets: "
                f"{', '.join(sets)}"
            )
        return sets[dataset]

    @property
    def search_space(self) -> SearchSpace:
        if self.space is not None:
            return self.space
        if self.optimizer not in DEFAULT_SPACES:
            raise ValueError(
                f"no default search ranges for optimizer {self.optimizer!r}: give space="
                f"SearchSpace(...), or optimizer one of {', '.join(DEFAULT_SPACES)}"
            )
        return DEFAULT_SPACES[self.optimizer]

    def reference(self, grid: tuple[int, ...]) -> int:
        return self.reference_batch or min(grid)

    @property
    def metric_name(self) -> str:
        return self.metric.name if isinstance(self.metric, Metric) else self.metric

    @property
    def metric_mode(self) -> str:
        """The custom metric's direction ("" for accuracy and loss, whose is known)."""
        return self.metric.mode if isinstance(self.metric, Metric) else ""

    def default_target(self, data: Data) -> float | None:
        if data.target is not None:
            return data.target
        return DEFAULT_ACCURACY_TARGET if self.metric == "accuracy" else None

    def problems(self) -> list[str]:
        """What is wrong with this workload's declaration (checked before anything runs)."""
        out = []
        if not isinstance(self.name, str) or not self.name:
            out.append("name must be a non-empty string")
        if not callable(self.model):
            out.append(f"model must be a factory (a callable), not {type(self.model).__name__}")
        if self.data is None and not self.datasets:
            out.append("data is missing: give data=FACTORY returning (train, val)")
        elif self.data is not None and not callable(self.data):
            out.append(f"data must be a factory (a callable), not {type(self.data).__name__}")
        if self.loss is not None and not callable(self.loss):
            out.append("loss must be a callable (outputs, targets) -> scalar tensor")
        if isinstance(self.metric, Metric):
            if self.metric.mode not in ("max", "min"):
                out.append(
                    f"metric {self.metric.name!r} has no direction: give mode='max' (higher "
                    f"is better) or mode='min'"
                )
            if not callable(self.metric.fn):
                out.append(f"metric {self.metric.name!r}: fn must be a callable")
            if self.metric.name in ("accuracy", "loss"):
                out.append(f"metric name {self.metric.name!r} is taken by a built-in metric")
        elif self.metric not in ("accuracy", "loss"):
            out.append(f"metric {self.metric!r}: use 'accuracy', 'loss', or Metric(name, fn, mode)")
        try:
            _ = self.search_space
        except ValueError as error:
            out.append(str(error))
        return out

    # --- on a worker ------------------------------------------------------------------------

    def build_model(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        model = call_with(self.model, input_shape=tuple(input_shape), num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned {type(model).__name__}, not a nn.Module")
        return model

    def criterion(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss: the workload's own, or cross-entropy."""
        if self.loss is not None:
            return self.loss
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    @property
    def own_loss(self) -> bool:
        return self.loss is not None

    def open(
        self,
        dataset: str,
        data_dir: str,
        seed: int,
        max_train_examples: int = 0,
        decode: str = "cpu",
    ) -> Splits:
        """Load `dataset` (`max_train_examples` > 0: a seeded subset, and a quarter as many
        validation examples, at least 64, for smoke runs)."""
        data = self.settings(dataset)
        loaded = call_with(data.load, data_dir=data_dir, seed=seed, decode=decode)
        return smoke_subset(as_splits(loaded, dataset), max_train_examples, seed)


def call_with(fn: Callable[..., Any], **available: Any) -> Any:
    """Call `fn` with the arguments it names among `available`; with unnamed positional
    parameters, fill them in `available`'s order (a `(root, seed)` data factory)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: pass what it was documented to
        return fn(*list(available.values())[:2])
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return fn(**available)
    named = {p.name for p in parameters}
    if named <= set(available):
        return fn(**{k: v for k, v in available.items() if k in named})
    positional = [p for p in parameters if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    return fn(*list(available.values())[: len(positional)])


def _as_split(part: Any, which: str) -> TensorSplit | Dataset:
    if isinstance(part, TensorSplit):
        return part
    if isinstance(part, TensorDataset) and len(part.tensors) == 2:
        return TensorSplit(*part.tensors)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = (torch.as_tensor(v) for v in part)
        if len(x) != len(y):
            raise ValueError(f"{which} set: {len(x)} inputs but {len(y)} targets")
        if x.dtype == torch.float64:
            x = x.float()
        if y.dtype == torch.float64:
            y = y.float()
        return TensorSplit(x, y)
    if isinstance(part, Dataset) and hasattr(part, "__len__"):
        return part
    raise TypeError(
        f"the data factory's {which} set is a {type(part).__name__}: give a torch Dataset "
        f"(with a length) or an (inputs, targets) pair of tensors"
    )


def as_splits(loaded: Any, name: str) -> Splits:
    """A data factory's result as `Splits`: input shape and number of classes read from it."""
    if isinstance(loaded, Splits):
        return loaded
    if not isinstance(loaded, (tuple, list)) or len(loaded) not in (2, 3):
        raise TypeError(
            f"the data factory returned a {type(loaded).__name__}: return (train, val) or "
            f"(train, val, test), each a torch Dataset or an (inputs, targets) pair of tensors"
        )
    train, val = _as_split(loaded[0], "training"), _as_split(loaded[1], "validation")
    # A test set (optional): the confirmed runs are scored on it; nothing selects on it.
    test = _as_split(loaded[2], "test") if len(loaded) == 3 else None
    if len(train) == 0 or len(val) == 0 or (test is not None and len(test) == 0):
        raise ValueError("the data factory returned an empty training, validation or test set")
    x0, _ = train[0] if not isinstance(train, TensorSplit) else (train.x[0], train.y[0])
    shape = tuple(torch.as_tensor(x0).shape)
    return Splits(name, train, val, shape, num_classes(train, val), test=test)


def num_classes(train: TensorSplit | Dataset, val: TensorSplit | Dataset) -> int:
    """Classes of integer targets (largest label + 1); 0 for other targets (a regression)."""
    if isinstance(train, TensorSplit) and isinstance(val, TensorSplit):
        if train.y.dtype.is_floating_point or train.y.dtype == torch.bool:
            return 0
        return int(max(train.y.max(), val.y.max())) + 1
    classes = getattr(train, "classes", None)
    if classes is not None:
        return len(classes)
    targets = getattr(train, "targets", None)
    if targets is not None:
        targets = torch.as_tensor(targets)
        return 0 if targets.dtype.is_floating_point else int(targets.max()) + 1
    y0 = torch.as_tensor(train[0][1])
    return 0 if y0.dtype.is_floating_point else -1  # -1: integer, number unknown


def smoke_subset(splits: Splits, max_train_examples: int, seed: int) -> Splits:
    """With `max_train_examples` > 0, a seeded subset of that many training examples and a
    quarter as many validation (and test) examples (at least 64): for smoke runs on big data
    sets."""
    if max_train_examples:
        splits.train = subset(splits.train, max_train_examples, seed)
        splits.val = subset(splits.val, max(max_train_examples // 4, 64), seed + 1)
        if splits.test is not None:
            splits.test = subset(splits.test, max(max_train_examples // 4, 64), seed + 2)
    return splits


def subset(split: TensorSplit | Dataset, size: int, seed: int) -> TensorSplit | Dataset:
    """A seeded subset of `size` examples (the whole split if it is smaller)."""
    if len(split) <= size:
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size]
    if isinstance(split, TensorSplit):
        return TensorSplit(split.x[keep], split.y[keep])
    return torch.utils.data.Subset(split, keep.tolist())


def is_classification(splits: Splits) -> bool:
    return splits.num_classes != 0


def chance_loss(splits: Splits) -> float:
    """Cross-entropy of a uniform guess (the divergence check's yardstick), NaN if unknown."""
    return math.log(splits.num_classes) if splits.num_classes >= 2 else math.nan
