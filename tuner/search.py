"""Run a batch-size study: `python -m tuner.search WORKLOAD [options]`.

One joint Ray Tune + Optuna (TPE) search over batch size, lr scaling rule, base lr, warmup and
weight decay, with ASHA per batch size; every trial a Ray Train `TorchTrainer`. Results go to
STORAGE/NAME: Tune's trial directories with TensorBoard files, `trials.csv`, `study.json`,
`optuna.db`, and the degradation map (`report.md`, figures) written by `tuner.report`.
STORAGE may be an object store (`s3://bucket/studies`): the driver then works in a local copy
and uploads the study's files at its end (tuner/store/objects.py).

Examples:
    python -m tuner.search --list
    python -m tuner.search simple_cnn --dataset digits --trials 16
    python -m tuner.search resnet50 --data-dir /data/imagenet --workers-per-trial 8
    python -m tuner.search simple_cnn --name my-study --resume
    python -m tuner.search resnet50 --storage s3://my-bucket/studies --name rn50
"""

from __future__ import annotations

import os
import sys

from trainables.datasets import NEEDS_FILES, DataUnavailable, check_data
from trainables.metrics import get_metric
from trainables.workloads import WORKLOADS
from tuner import options as opts
from tuner import resolve
from tuner.errors import InputError
from tuner.spec import StudySpec, load_spec, study_location
from tuner.store import objects as store
from tuner.store.names import SPEC_FILE


def list_workloads() -> str:
    lines = []
    for w in WORKLOADS.values():
        label = get_metric(w.metric).label
        lines.append(f"{w.name}: {w.description}; judged by {label}")
        for name, s in w.datasets.items():
            files = " (needs files)" if name in NEEDS_FILES else ""
            grid = ",".join(str(b) for b in s.batch_sizes)
            floor = f" (at least {s.min_steps} steps)" if s.min_steps else ""
            how = "measured" if s.measured else "estimated"
            lines.append(
                f"    --dataset {name}{files}: budget {s.budget}{floor} per trial ({how} to "
                f"reach the target), batch sizes {grid}, target {label} {s.target:g}"
            )
    return "\n".join(lines)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def saved_spec(storage_arg: str | None, name: str) -> StudySpec:
    """The spec of the study to continue; from an object store, fetched into the working copy."""
    storage = opts.absolute_storage(resolve.pick(storage_arg, "studies"))
    study_dir, study_uri = study_location(storage, name)
    if store.is_uri(storage):
        try:
            store.download_file(store.join(study_uri, SPEC_FILE), study_dir / SPEC_FILE)
        except store.StorageError as error:
            raise InputError(f"no study to resume at {study_uri}: {error}") from None
    try:
        return load_spec(study_dir)
    except FileNotFoundError:
        raise InputError(f"no study to resume at {study_dir} (no {SPEC_FILE} there)") from None


def check_data_fits(spec: StudySpec) -> None:
    """The data is there (or downloadable) and every batch size has a step per epoch."""
    try:
        n_train = check_data(spec.dataset, spec.data_dir, spec.max_train_examples)
    except DataUnavailable as error:
        raise InputError(str(error)) from None
    too_big = [b for b in spec.batch_sizes if n_train is not None and b > n_train]
    if too_big:
        raise InputError(
            f"--batch-sizes: {too_big} exceed the {n_train} training examples of "
            f"{spec.dataset}; not one step per epoch would run"
        )


def check_new_study(spec: StudySpec) -> None:
    """A new study's storage must be writable and must not hold a study of that name."""
    if spec.remote:
        try:
            store.check_writable(spec.storage)
            taken = store.exists(store.join(spec.study_uri, SPEC_FILE))
        except store.StorageError as error:
            raise InputError(str(error)) from None
    else:
        taken = (spec.study_dir / SPEC_FILE).exists()
    if taken:
        raise InputError(
            f"study {spec.name} already exists at {spec.study_uri}; use --resume to continue "
            f"it or another --name"
        )


def parse_and_check(argv: list[str] | None) -> tuple[StudySpec, dict] | None:
    """Parse and check everything that can be checked before Ray starts; None for --list.

    Returns the spec and the run options for `tuner.study.session`; raises `InputError`.
    """
    args = opts.build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.list:
        return None
    opts.check_options(args)
    address = args.address or os.environ.get("RAY_ADDRESS")
    local = resolve.local_cluster(address)
    run = {"address": address, "resume": args.resume, "report": not args.no_report}
    if args.resume:
        spec, changed = resolve.resume_spec(saved_spec(args.storage, args.name), args)
        for line in changed:
            print(f"resume: {line} applied", file=sys.stderr)
    else:
        gpus = (resolve.this_machine()["GPU"] > 0) if local else None
        spec = resolve.run_checked(lambda: resolve.build_spec(args, gpus_available=gpus))
        run["gpus_from_cluster"] = args.gpus_per_worker is None and gpus is None
        if not args.skip_data_check:
            check_data_fits(spec)
        check_new_study(spec)
    if local:
        resolve.check_local_fit(spec)
    return spec, run


def main(argv: list[str] | None = None) -> int:
    try:
        resolved = parse_and_check(argv)
    except InputError as error:
        fail(str(error))
    if resolved is None:
        print(list_workloads())
        return 0
    spec, run = resolved
    # Ray is imported only now, with the inputs known good.
    from tuner.study import session

    options = session.RunOptions(**run)
    try:
        spec = resolve.run_checked(lambda: session.prepare(spec, options))
    except InputError as error:
        fail(str(error))
    return session.run(spec, options)


if __name__ == "__main__":
    sys.exit(main())
