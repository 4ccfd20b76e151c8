"""The frozen study spec: what one study is, saved with package versions and git revision.

Plain Python (no Ray): the CLI builds a `StudySpec`, the Tune driver turns it plus one Optuna
suggestion into a validated `TrialConfig`, and the report reads it back from `study.json`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from trainables.config import BatchLayout, ConfigError, TrialConfig, batch_layout
from trainables.workloads import get_workload
from tuner import storage as store

SPEC_FILE = "study.json"
PACKAGES = (
    "ray",
    "torch",
    "torchvision",
    "optuna",
    "tensorboard",
    "tensorboardX",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
)


def study_location(storage: str, name: str) -> tuple[Path, str]:
    """(local directory, where Tune and Train write) for study `name` in `storage`.

    A directory: both are `storage/name`. An object-store URI: the study is `URI/name`, and the
    local directory is this machine's working copy of it (computed here, on whichever machine
    asks, so a study resumes anywhere; tuner/storage.py).
    """
    if store.is_uri(storage):
        return store.working_copy(storage) / name, store.join(storage, name)
    return Path(storage) / name, str(Path(storage) / name)


@dataclass(frozen=True)
class StudySpec:
    """One batch-size study; every field has its final value (no hidden defaults downstream)."""

    workload: str
    dataset: str
    data_dir: str | None
    batch_sizes: tuple[int, ...]
    trials: int
    epochs: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_concurrent: int
    storage: str
    name: str
    seed: int
    max_device_batch: int
    max_train_examples: int
    bn_mode: str
    ghost_batch: int
    grace_epochs: int
    reduction_factor: int
    divergence_factor: float
    worker_retries: int
    target_accuracy: float
    search_ranges: dict[str, Any]

    @property
    def remote(self) -> bool:
        """Results live in an object store (`--storage s3://...`), not a shared file system."""
        return store.is_uri(self.storage)

    @property
    def study_dir(self) -> Path:
        """The local directory the driver and the report work in (see `study_location`)."""
        return study_location(self.storage, self.name)[0]

    @property
    def study_uri(self) -> str:
        """Where Tune and Train write (see `study_location`)."""
        return study_location(self.storage, self.name)[1]

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def layouts(self) -> dict[int, BatchLayout]:
        """The split of every batch size of the grid (raises on an impossible one)."""
        return {
            b: batch_layout(b, self.workers_per_trial, self.max_device_batch)
            for b in self.batch_sizes
        }

    def validate(self) -> None:
        """Fail up front, in one line, on a spec that cannot run."""
        if self.trials < len(self.batch_sizes):
            raise ConfigError(
                f"{self.trials} trials cannot cover {len(self.batch_sizes)} batch "
                f"sizes; use --trials >= {len(self.batch_sizes)}"
            )
        if sorted(set(self.batch_sizes)) != list(self.batch_sizes):
            raise ConfigError("batch sizes must be distinct and increasing")
        self.layouts()
        # One full trial config per batch size proves that every trial is well-formed.
        for batch in self.batch_sizes:
            TrialConfig.from_dict(
                self.trial_config(
                    {
                        "batch_size": batch,
                        "scaling_rule": "linear",
                        "optimizer": self.search_ranges["optimizer"][0],
                        "base_lr": self.search_ranges["base_lr"][0],
                        "weight_decay": self.search_ranges["weight_decay"][0],
                        "warmup_epochs": self.search_ranges["warmup_epochs"][0],
                    }
                )
            )

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The full trial config for one Optuna suggestion (`params`)."""
        workload = get_workload(self.workload)
        return {
            "workload": self.workload,
            "model": workload.model,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "batch_size": int(params["batch_size"]),
            "scaling_rule": params["scaling_rule"],
            "optimizer": params["optimizer"],
            "base_lr": float(params["base_lr"]),
            "reference_batch": workload.reference_batch,
            "momentum": workload.momentum,
            "warmup_epochs": float(params["warmup_epochs"]),
            "weight_decay": float(params["weight_decay"]),
            "epochs": self.epochs,
            "schedule": workload.schedule,
            "final_lr_factor": workload.final_lr_factor,
            "label_smoothing": workload.label_smoothing,
            "num_workers": self.workers_per_trial,
            "max_device_batch": self.max_device_batch,
            "bn_mode": self.bn_mode,
            "ghost_batch": self.ghost_batch,
            "divergence_factor": self.divergence_factor,
            "max_train_examples": self.max_train_examples,
            "seed": self.seed,
            "use_gpu": self.use_gpu,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["batch_sizes"] = tuple(values["batch_sizes"])
        return cls(**values)


def _git(*args: str) -> str:
    """Output of a git command run in this package's checkout."""
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
    ).stdout.strip()


def environment() -> dict[str, Any]:
    """Package versions, Python version and git revision, saved with every study."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        revision = _git("rev-parse", "HEAD") or None
        dirty = bool(_git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        revision, dirty = None, None
    return {
        "python": sys.version.split()[0],
        "packages": versions,
        "git_revision": revision,
        "git_dirty": dirty,
        "argv": sys.argv,
    }


def save_spec(spec: StudySpec) -> Path:
    """Write `study.json` (spec + environment) into the study directory."""
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    path = spec.study_dir / SPEC_FILE
    path.write_text(json.dumps({"spec": spec.to_dict(), "environment": environment()}, indent=2))
    return path


def load_spec(study_dir: str | Path) -> StudySpec:
    """Read the spec of an existing study."""
    path = Path(study_dir) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {study_dir} a study directory?")
    return StudySpec.from_dict(json.loads(path.read_text())["spec"])
