"""A workload tried in the driver before Ray starts: its data opens, its model builds, one batch
goes through the model, the loss and the metric. What a worker would hit on its first step
becomes one `error:` line here, with nothing written (issue 19). Plain Python, no Ray.
"""

from __future__ import annotations

import math

import torch

from trainables.datasets import DEFAULT_DATA_DIR, DataUnavailable, check_data
from trainables.splits import TensorSplit
from trainables.workload import Workload
from trainables.workloads import error_line
from tuner.errors import InputError
from tuner.spec import StudySpec

PROBE = 4  # examples in the probe batch


def check_workload(spec: StudySpec, workload: Workload) -> None:
    """Raise `InputError` (one line) if the study's workload cannot train one step."""
    data = workload.settings(spec.dataset)
    name = spec.title
    if data.streamed:  # ImageNet folders: the layout only (opening them scans 1.28M files)
        try:
            check_data(spec.dataset, spec.data_dir, spec.max_train_examples)
        except DataUnavailable as error:
            raise InputError(str(error)) from None
        return
    try:
        splits = workload.open(
            spec.dataset, spec.data_dir or DEFAULT_DATA_DIR, spec.seed, spec.max_train_examples
        )
    except DataUnavailable as error:
        raise InputError(str(error)) from None
    except Exception as error:  # the user's data factory: its own message, in one line
        raise InputError(f"workload {name}: its data factory raised {error_line(error)}") from None
    n_train = len(splits.train)
    too_big = [b for b in spec.batch_sizes if b > n_train]
    if too_big:
        raise InputError(
            f"--batch-sizes: {too_big} exceed the {n_train} training examples of "
            f"{spec.dataset if spec.dataset != 'default' else name}; not one step per epoch "
            f"would run"
        )
    try:
        model = workload.build_model(splits.input_shape, splits.num_classes)
    except Exception as error:
        raise InputError(f"workload {name}: its model factory raised {error_line(error)}") from None
    x, y = _probe_batch(splits.train)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as error:
        raise InputError(
            f"workload {name}: the model fails on a batch of {PROBE} training inputs of shape "
            f"{tuple(x.shape[1:])}: {error_line(error)}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"workload {name}: the model returns a {type(out).__name__}; it must return one "
            f"tensor of outputs"
        )
    loss = workload.criterion()
    try:
        value = loss(out.float(), y)
    except Exception as error:
        raise InputError(
            f"workload {name}: the loss cannot take the model's output {tuple(out.shape)} with "
            f"targets {tuple(y.shape)} ({y.dtype}): {error_line(error)}"
        ) from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(
            f"workload {name}: the loss returns {shape}, not a scalar tensor (reduce it, e.g. "
            f".mean())"
        )
    fn = getattr(workload.metric, "fn", None)
    if fn is not None:
        try:
            number = float(fn(out.float(), y))
        except Exception as error:
            raise InputError(
                f"workload {name}: metric {workload.metric_name!r} fails on the model's output: "
                f"{error_line(error)}"
            ) from None
        if math.isinf(number):
            raise InputError(f"workload {name}: metric {workload.metric_name!r} returned inf")


def _probe_batch(train) -> tuple[torch.Tensor, torch.Tensor]:
    """The first few training examples as one batch, as the loop would see them."""
    count = min(PROBE, len(train))
    if isinstance(train, TensorSplit):
        return train.x[:count], train.y[:count]
    items = [train[i] for i in range(count)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items])
    y = torch.stack([torch.as_tensor(item[1]) for item in items])
    return x, y
