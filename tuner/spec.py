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

from search_spaces.cells import STRATA, Cell, study_cells
from search_spaces.spaces import SearchSpace
from trainables.budget import Budget, BudgetError
from trainables.config import BatchLayout, ConfigError, TrialConfig, batch_layout
from trainables.metrics import StudyMetric, get_metric
from trainables.workload import Workload
from trainables.workloads import BUILTIN_NAMES, builtin, get_workload
from tuner.shipping import make_importable
from tuner.store import objects as store
from tuner.store.names import SPEC_FILE
from tuner.trust import MARK, owner_mark

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
    asks, so a study resumes anywhere; tuner/store/objects.py).
    """
    if store.is_uri(storage):
        return store.working_copy(storage) / name, store.join(storage, name)
    return Path(storage) / name, str(Path(storage) / name)


@dataclass(frozen=True)
class StudySpec:
    """One batch-size study; every field has its final value (no hidden defaults downstream)."""

    workload: str  # a reference (trainables.workloads.find_workload): a name or MODULE:ATTR
    dataset: str
    data_dir: str | None
    batch_sizes: tuple[int, ...]
    trials: int  # search trials; confirmation runs come on top (cells x seeds)
    budget: str  # UNIT:AMOUNT per trial, trainables.budget (epochs:2, steps:300, ...)
    min_steps: int  # every batch size trains at least this many optimizer steps
    eval_every: int  # optimizer steps between evaluations; 0: about 20 per trial
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
    grace: float  # ASHA's first rung, a fraction of the budget
    reduction_factor: int
    divergence_factor: float
    worker_retries: int
    target: float  # of steps-to-target: an accuracy, or a validation loss in nats
    stop_at_target: bool
    strata: tuple[str, ...]  # dimensions with a cell each: "rule", "optimizer"
    seeds: int  # confirmation runs of each cell's best configuration
    search_ranges: dict[str, Any]
    compile: bool = False  # torch.compile every trial's model (trainables.accel)
    loader_workers: int = 0  # DataLoader processes per worker for streamed data; 0: its CPUs
    metric: str = "accuracy"  # how trials are judged (trainables.metrics): accuracy or loss
    decode: str = "auto"  # JPEG decoding for ImageFolder data: gpu, cpu or auto (gpu on GPUs)
    # The checks (search_spaces.checks): a batch size short of the baseline by more than
    # `tolerance` (the metric's units) gets more steps, up to `max_steps` (0: twice the longest
    # budget of the study); `rule_test`: each rule's prediction from the baseline is run.
    max_steps: int = 0
    # ... up to this many times the baseline's examples where `max_steps` is 0 (0: studies
    # made before the cap was in data, twice the longest budget; search_spaces.checks)
    max_data_multiple: float = 0.0
    # Steps to target from budget-free runs (trainables.budget_free) of each batch size's best
    # configuration, with this many warmup steps (False: studies made before them).
    budget_free_steps: bool = False
    target_warmup: int = 0
    # Doublings of the baseline's steps the checks start ahead (search_spaces.checks.
    # baseline_ahead); -1: by the slots the study has (checks.speculation)
    speculate: int = -1
    tolerance: float = 0.01
    rule_test: bool = True
    checks: bool = True  # the lr and more-steps checks (False: --no-checks, --smoke)
    # A user's own workload: its name, the file or package directory shipped to the workers
    # when it is not installed (tuner.shipping), its metric's direction and whether its loss
    # is its own; the batch size at which base_lr is defined (0: the built-in's, old studies).
    workload_name: str = ""
    workload_source: str = ""
    metric_mode: str = ""
    own_loss: bool = False
    reference_batch: int = 0
    # How the study measures: "grid" (every batch size searched and confirmed) or "branch"
    # (tuner.branch: one base run at the smallest batch size, branched at larger ones from its
    # checkpoints at `branch_at` fractions of its budget, each branch `window` examples long
    # (0: the default of tuner.branch.plan), from `base_lr` at the reference batch (0: a short
    # search picks it); `verify_schedule` runs the batch-size schedule it suggests.
    method: str = "grid"
    branch_at: tuple[float, ...] = ()
    window: int = 0
    base_lr: float = 0.0
    verify_schedule: bool = False
    # A branch study's tolerance, in the metric's units (0: half of what k = 1 gains over the
    # window at each checkpoint, tuner.analysis.branch.GAIN_SHARE; --tolerance sets it).
    branch_tolerance: float = 0.0
    # Where trials run (tuner.cluster.placement, decided when the study joins its cluster): a
    # multi-worker trial's placement group strategy (STRICT_PACK: whole on one node) and the
    # one accelerator type every trial runs on ("": any node).
    placement_strategy: str = "PACK"
    accelerator_type: str = ""

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

    def budget_spec(self) -> Budget:
        """The per-trial budget (raises ConfigError on a malformed one)."""
        try:
            return Budget.parse(self.budget, self.min_steps)
        except BudgetError as error:
            raise ConfigError(f"--budget {self.budget}: {error}") from None

    def space(self) -> SearchSpace:
        return SearchSpace.from_ranges(self.search_ranges)

    def cells(self) -> list[Cell]:
        """The study's cells: batch size x each stratified dimension."""
        return study_cells(self.batch_sizes, self.space(), self.strata)

    @property
    def confirmation_trials(self) -> int:
        """The most confirmation runs the study can have (a cell without a finished best trial
        has none)."""
        return len(self.cells()) * self.seeds

    @property
    def rule_test_trials(self) -> int:
        """The rule test's runs: every rule at every batch size above the smallest, per seed."""
        if not self.rule_test:
            return 0
        return len(self.space().scaling_rules) * (len(self.batch_sizes) - 1) * self.seeds

    @property
    def equal_data_trials(self) -> int:
        """The equal-data runs' first round (with the checks): each cell above the smallest
        batch size, at its confirmed lr and at half and twice it, per seed (the line search
        goes on while a step gains; a cell whose budget saw the baseline's data runs none)."""
        if not self.checks:
            return 0
        smallest = min(self.batch_sizes)
        return 3 * sum(c.batch_size > smallest for c in self.cells()) * self.seeds

    @property
    def most_trials(self) -> int:
        """A bound on the trials of the study, for Tune's `num_samples` (the searcher says when
        it is done): the checks run a cell's best at up to 64 levels (lr and steps) and up to 16
        at equal data; a cell's range extensions add at most 3 search trials."""
        extensions = len(self.cells()) * self.seeds * (64 + 16) if self.checks else 0
        edges = 3 * len(self.cells())
        return self.trials + edges + self.confirmation_trials + self.rule_test_trials + extensions

    def rungs(self) -> list[float]:
        """ASHA's rungs as fractions of the budget, below its end: grace, grace * rf, ..."""
        out, rung = [], self.grace
        while rung < 1 - 1e-9:
            out.append(rung)
            rung *= self.reduction_factor
        return out

    def layouts(self) -> dict[int, BatchLayout]:
        """The split of every batch size of the grid (raises on an impossible one)."""
        return {
            b: batch_layout(b, self.workers_per_trial, self.max_device_batch)
            for b in self.batch_sizes
        }

    def validate(self) -> None:
        """Fail up front, in one line, on a spec that cannot run."""
        if sorted(set(self.batch_sizes)) != list(self.batch_sizes):
            raise ConfigError("batch sizes must be distinct and increasing")
        unknown = [s for s in self.strata if s not in STRATA]
        if unknown:
            raise ConfigError(f"--stratify {','.join(unknown)}: use rule, optimizer or none")
        cells = self.cells()
        if self.trials < len(cells):
            raise ConfigError(
                f"{self.trials} trials cannot cover the {len(cells)} cells of this study "
                f"({len(self.batch_sizes)} batch sizes{self._strata_text()}); use --trials >= "
                f"{len(cells)}, or fewer batch sizes, rules or optimizers"
            )
        if self.decode == "gpu" and not self.use_gpu:
            raise ConfigError(
                "--decode gpu needs GPU workers (--gpus-per-worker); use --decode cpu or auto"
            )
        if self.gpus_per_worker > 1:
            raise ConfigError(
                f"--gpus-per-worker {self.gpus_per_worker:g}: a worker trains on one GPU; "
                f"for more GPUs per trial use --gpus-per-worker 1 --workers-per-trial N"
            )
        if 0 < self.gpus_per_worker < 1 and self.workers_per_trial > 1:
            raise ConfigError(
                f"--gpus-per-worker {self.gpus_per_worker:g} with --workers-per-trial "
                f"{self.workers_per_trial} would put several NCCL ranks of one trial on one "
                f"GPU; share GPUs only between 1-worker trials, or use --gpus-per-worker 1"
            )
        if self.bn_mode == "sync" and self.workers_per_trial > 1 and not self.use_gpu:
            raise ConfigError(
                "--bn-mode sync needs GPU workers (PyTorch's SyncBatchNorm runs on CUDA only); "
                "on CPU workers use --bn-mode per_worker or ghost"
            )
        if not 0 < self.grace < 1:
            raise ConfigError(
                f"--grace {self.grace:g}: ASHA's first rung is a fraction of the budget in "
                f"(0, 1), e.g. 0.11"
            )
        self.budget_spec()
        self.layouts()
        # One full trial config per cell proves that every trial is well-formed.
        space = self.space()
        for cell in cells:
            optimizer = cell.optimizer or space.optimizers[0]
            TrialConfig.from_dict(
                self.trial_config(
                    {
                        "batch_size": cell.batch_size,
                        "scaling_rule": cell.rule or space.scaling_rules[0],
                        "optimizer": optimizer,
                        "base_lr": space.base_lr[optimizer][0],
                        "weight_decay": space.weight_decay[0],
                        "warmup_fraction": space.warmup_fraction[1],
                    }
                )
            )

    def _strata_text(self) -> str:
        space = self.space()
        parts = {
            "rule": f" x {len(space.scaling_rules)} rules",
            "optimizer": f" x {len(space.optimizers)} optimizers",
        }
        return "".join(parts[s] for s in self.strata)

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The full trial config for one suggestion (`params`; its `seed`, when given, is the
        training seed of a confirmation run)."""
        workload = self.load_workload()
        budget = self.budget_spec()
        steps = int(params.get("budget_steps") or 0)  # a check's run of its own length
        if steps:
            budget = Budget("steps", steps)
        return {
            "workload": self.workload,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "batch_size": int(params["batch_size"]),
            "scaling_rule": params["scaling_rule"],
            "optimizer": params["optimizer"],
            "base_lr": float(params["base_lr"]),
            "reference_batch": self.reference,
            # searched where the space has a range (spaces.GAP_PARAMS), else the workload's
            "momentum": float(params.get("momentum", workload.momentum)),
            "beta2": float(params.get("beta2", getattr(workload, "beta2", 0.999))),
            "warmup_fraction": float(params["warmup_fraction"]),
            "weight_decay": float(params["weight_decay"]),
            "budget_unit": budget.unit,
            "budget_amount": budget.amount,
            "min_steps": budget.min_steps,
            "eval_every": self.eval_every,
            "schedule": workload.schedule,
            "final_lr_factor": workload.final_lr_factor,
            "label_smoothing": workload.label_smoothing,
            "num_workers": self.workers_per_trial,
            "max_device_batch": self.max_device_batch,
            "bn_mode": self.bn_mode,
            "ghost_batch": self.ghost_batch,
            "divergence_factor": self.divergence_factor,
            "max_train_examples": self.max_train_examples,
            "split_seed": self.seed,
            "seed": int(params.get("seed", self.seed)),
            "metric": self.metric,
            "metric_mode": self.metric_mode,
            "stop_at_target": self.target
            if self.stop_at_target or params.get("budget_free")
            else 0.0,
            "budget_free": bool(params.get("budget_free")),
            "warmup_in_steps": int(params.get("warmup_in_steps", 0)),
            "use_gpu": self.use_gpu,
            "compile": self.compile,
            "loader_workers": self.loader_workers or max(1, int(self.cpus_per_worker)),
            "decode": self.decode_on(),
        }

    @property
    def study_metric(self) -> StudyMetric:
        metric = get_metric(self.metric, self.metric_mode)
        if self.own_loss and metric.name == "loss":  # not cross-entropy: not in nats
            metric = dataclasses.replace(metric, unit="", label="validation loss (its own)")
        return metric

    def load_workload(self) -> Workload:
        """The study's workload, its module found again where the study shipped it from (a
        report, `tuner.explain` or a resume run from another directory)."""
        make_importable(self.workload_source)
        return get_workload(self.workload)

    @property
    def reference(self) -> int:
        """The batch size at which base_lr is defined. Read from the spec, never from the
        workload's code (a report runs none of a study's code: tuner.trust): studies from
        before the spec saved it named built-in workloads only, whose reference is ours."""
        if self.reference_batch:
            return self.reference_batch
        if self.workload in BUILTIN_NAMES:
            return builtin(self.workload).reference(self.batch_sizes)
        return min(self.batch_sizes)

    @property
    def title(self) -> str:
        """The workload's name, for people (a reference may be a module path or a pickle)."""
        return self.workload_name or self.workload

    @property
    def what(self) -> str:
        """'mnist1d on mnist1d'; a workload with one data set of its own: its name alone."""
        return self.title if self.dataset == "default" else f"{self.title} on {self.dataset}"

    def decode_on(self) -> str:
        """Where ImageFolder JPEGs are decoded: `gpu` (nvJPEG) on GPU workers unless asked."""
        if self.decode == "auto":
            return "gpu" if self.use_gpu else "cpu"
        return self.decode

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        data["strata"] = list(self.strata)
        data["branch_at"] = list(self.branch_at)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if "target_accuracy" in data:  # studies written before language models were added
            data.setdefault("target", data.pop("target_accuracy"))
        values = {k: v for k, v in data.items() if k in fields}
        values["batch_sizes"] = tuple(values["batch_sizes"])
        values["strata"] = tuple(values.get("strata", ()))
        values["branch_at"] = tuple(values.get("branch_at", ()))
        if "tolerance" not in values:  # studies saved before the checks: the metric's default
            values["tolerance"] = get_metric(values.get("metric", "accuracy")).default_tolerance
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
    """Write `study.json` (spec + environment + this user's mark) into the study directory."""
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    path = spec.study_dir / SPEC_FILE
    saved = spec.to_dict()
    # this user's mark: explain and --resume run the study's code only for its maker
    # (tuner.trust), or where a user says so
    content = {"spec": saved, "environment": environment(), MARK: owner_mark(saved)}
    path.write_text(json.dumps(content, indent=2))
    return path


def load_spec(study_dir: str | Path) -> StudySpec:
    """Read the spec of an existing study."""
    path = Path(study_dir) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {study_dir} a study directory?")
    return StudySpec.from_dict(json.loads(path.read_text())["spec"])
