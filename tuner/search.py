"""Run a batch-size study: `python -m tuner.search WORKLOAD [options]`.

One joint Ray Tune + Optuna (TPE) search over batch size, lr scaling rule, base lr, warmup and
weight decay, with ASHA per batch size; every trial a Ray Train `TorchTrainer`. Results go to
STORAGE/NAME: Tune's trial directories with TensorBoard files, `trials.csv`, `study.json`,
`optuna.db`, and the degradation map (`report.md`, figures) written by `tuner.report`.
STORAGE may be an object store (`s3://bucket/studies`): the driver then works in a local copy
and uploads the study's files at its end (tuner/storage.py).

Examples:
    python -m tuner.search --list
    python -m tuner.search simple_cnn --dataset digits --trials 16
    python -m tuner.search resnet50 --data-dir /data/imagenet --workers-per-trial 8
    python -m tuner.search simple_cnn --name my-study --resume
    python -m tuner.search resnet50 --storage s3://my-bucket/studies --name rn50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainables.config import BN_MODES, ConfigError
from trainables.data import NEEDS_FILES, DataUnavailable, check_data
from trainables.workloads import WORKLOADS, get_workload
from tuner import storage as store
from tuner.spec import SPEC_FILE, StudySpec, load_spec, save_spec, study_location

SMOKE = {"epochs": 2, "grid": 2, "trials_per_batch": 2, "max_train_examples": 512}


def parse_grid(text: str) -> tuple[int, ...]:
    """`8,32,128` or a powers-of-two range `8:512`."""
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            sizes, b = [], low
            while b <= high:
                sizes.append(b)
                b *= 2
            return tuple(sizes)
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad batch sizes {text!r}: use 8,32,128 or 8:512"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", nargs="?", help="registered workload (see --list)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--dataset", help="data set (default: the workload's first)")
    p.add_argument("--data-dir", help="where data files live or are downloaded to")
    p.add_argument("--batch-sizes", type=parse_grid, help="grid: 8,32,128 or 8:512 (powers of 2)")
    p.add_argument("--trials", type=int, help="trial budget (default: 4 per batch size)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the workload's)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="data-parallel workers")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="default: 1 if the cluster has GPUs, else 0",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        help="trials at once (default: as many as the cluster's resources hold)",
    )
    p.add_argument(
        "--max-device-batch",
        type=int,
        help="largest micro-batch per worker; larger shares accumulate gradients",
    )
    p.add_argument(
        "--max-train-examples",
        type=int,
        default=0,
        help="train on a seeded subset of this size (0: all)",
    )
    p.add_argument("--bn-mode", choices=BN_MODES, default="per_worker")
    p.add_argument("--ghost-batch", type=int, default=128, help="group size for --bn-mode ghost")
    p.add_argument("--grace-epochs", type=int, default=1, help="ASHA's first rung, in epochs")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA's reduction factor")
    p.add_argument(
        "--divergence-factor",
        type=float,
        default=5.0,
        help="a train loss above this x ln(classes) counts as diverged",
    )
    p.add_argument(
        "--worker-retries",
        type=int,
        default=2,
        help="restarts of a trial's worker group from its last epoch checkpoint",
    )
    p.add_argument("--target", type=float, help="target accuracy for steps-to-target")
    p.add_argument(
        "--storage",
        default="studies",
        help="where studies live: a directory (shared by all nodes on a cluster) or an "
        "object-store URI such as s3://bucket/studies (then the driver keeps a local working "
        "copy; see docs/cluster.md)",
    )
    p.add_argument("--name", help="study name (default: WORKLOAD-DATASET-TIMESTAMP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--address",
        help="Ray cluster to join: host:port, or `auto` for the one "
        "running on this machine (default: $RAY_ADDRESS, else a new local Ray)",
    )
    p.add_argument("--resume", action="store_true", help="continue the study named by --name")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny study: 2 epochs, 2 batch sizes, 4 trials, small data",
    )
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="do not check the data on this machine (it lives on the workers)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return p


def list_workloads() -> str:
    lines = []
    for w in WORKLOADS.values():
        lines.append(f"{w.name}: {w.description}")
        for name, s in w.datasets.items():
            files = " (needs files)" if name in NEEDS_FILES else ""
            grid = ",".join(str(b) for b in s.batch_sizes)
            lines.append(
                f"    --dataset {name}{files}: {s.epochs} epochs, batch sizes {grid}, "
                f"target acc {s.target_accuracy}"
            )
    return "\n".join(lines)


def build_spec(args: argparse.Namespace, has_gpus: bool) -> StudySpec:
    """Turn CLI options into a validated spec (raises ConfigError / KeyError on bad input)."""
    workload = get_workload(args.workload)
    dataset = args.dataset or workload.default_dataset
    if args.smoke and not args.dataset and dataset in NEEDS_FILES:
        dataset = "synthetic"
    settings = workload.settings(dataset)
    grid = tuple(args.batch_sizes or settings.batch_sizes)
    epochs = args.epochs or settings.epochs
    max_train = args.max_train_examples
    if args.smoke:
        grid = grid[: SMOKE["grid"]] if not args.batch_sizes else grid
        epochs = args.epochs or SMOKE["epochs"]
        max_train = max_train or SMOKE["max_train_examples"]
    trials = args.trials or (SMOKE["trials_per_batch"] if args.smoke else 4) * len(grid)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if has_gpus else 0.0)
    spec = StudySpec(
        workload=workload.name,
        dataset=dataset,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        batch_sizes=grid,
        trials=trials,
        epochs=epochs,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=gpus,
        max_concurrent=args.max_concurrent,
        storage=absolute_storage(args.storage),
        name=args.name or f"{workload.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
        seed=args.seed,
        max_device_batch=args.max_device_batch or settings.max_device_batch,
        max_train_examples=max_train,
        bn_mode=args.bn_mode,
        ghost_batch=args.ghost_batch,
        grace_epochs=args.grace_epochs,
        reduction_factor=args.reduction_factor,
        divergence_factor=args.divergence_factor,
        worker_retries=args.worker_retries,
        target_accuracy=args.target if args.target is not None else settings.target_accuracy,
        search_ranges=workload.space.ranges(),
    )
    spec.validate()
    return spec


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def absolute_storage(storage: str) -> str:
    """--storage as the spec keeps it: a URI as given, a directory made absolute."""
    return storage if store.is_uri(storage) else str(Path(storage).resolve())


def spec_to_resume(storage_arg: str, name: str) -> StudySpec:
    """The spec of the study to continue; from an object store, fetched into the working copy."""
    storage = absolute_storage(storage_arg)
    study_dir, study_uri = study_location(storage, name)
    if store.is_uri(storage):
        try:
            store.download_file(store.join(study_uri, SPEC_FILE), study_dir / SPEC_FILE)
        except store.StorageError as error:
            fail(f"no study to resume at {study_uri}: {error}")
    try:
        return load_spec(study_dir)
    except FileNotFoundError:
        fail(f"no study to resume at {study_dir} (no {SPEC_FILE} there)")


def check_new_study(spec: StudySpec) -> None:
    """A new study's storage must be writable and must not hold a study of that name."""
    if spec.remote:
        try:
            store.check_writable(spec.storage)
            taken = store.exists(store.join(spec.study_uri, SPEC_FILE))
        except store.StorageError as error:
            fail(str(error))
    else:
        taken = (spec.study_dir / SPEC_FILE).exists()
    if taken:
        fail(
            f"study {spec.name} already exists at {spec.study_uri}; use --resume to continue "
            f"it or another --name"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_workloads())
        return 0
    if not args.workload and not args.resume:
        fail("name a workload (python -m tuner.search --list shows them)")
    if args.resume:
        if not args.name:
            fail("--resume needs --name NAME of the study to continue (and its --storage)")
        spec = spec_to_resume(args.storage, args.name)
    else:
        try:
            spec = build_spec(args, has_gpus=False)  # validated before Ray starts: fail fast
        except (ConfigError, KeyError) as error:
            fail(str(error).strip("'\""))
        if not args.skip_data_check:
            try:
                n_train = check_data(spec.dataset, spec.data_dir, spec.max_train_examples)
            except DataUnavailable as error:
                fail(str(error))
            too_big = [b for b in spec.batch_sizes if n_train is not None and b > n_train]
            if too_big:
                fail(
                    f"batch sizes {too_big} exceed the {n_train} training examples of "
                    f"{spec.dataset}; not one step per epoch would run"
                )
        check_new_study(spec)

    from tuner.session import run_study  # imports Ray: only once the inputs are known good

    return run_study(spec, args, resume=args.resume, save=save_spec)


if __name__ == "__main__":
    sys.exit(main())
