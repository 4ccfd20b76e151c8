"""Run a batch-size study: `python -m tuner.search WORKLOAD [options]`.

One joint Ray Tune + Optuna (TPE) search over batch size, lr scaling rule, base lr, warmup and
weight decay, with ASHA per batch size; every trial a Ray Train `TorchTrainer`. Results go to
STORAGE/NAME: Tune's trial directories with TensorBoard files, `trials.csv`, `study.json`,
`optuna.db`, and the degradation map (`report.md`, figures) written by `tuner.report`.
STORAGE may be an object store (`s3://bucket/studies`): the driver then works in a local copy
and uploads the study's files at its end (tuner/store/objects.py).

Examples:
    python -m tuner.search --list
    python -m tuner.search examples/regression.py:workload --name my-regression
    python -m tuner.search simple_cnn --dataset digits --trials 16
    python -m tuner.search resnet50 --data-dir /data/imagenet --workers-per-trial 8
    python -m tuner.search simple_cnn --name my-study --resume
    python -m tuner.search resnet50 --storage s3://my-bucket/studies --name rn50
"""

from __future__ import annotations

import os
import sys

from trainables.metrics import get_metric
from trainables.workloads import BUILTIN, entry_points, find_workload
from tuner import options as opts
from tuner import resolve
from tuner.errors import InputError
from tuner.shipping import make_importable
from tuner.spec import StudySpec, load_spec, study_location
from tuner.store import objects as store
from tuner.store.names import SPEC_FILE
from tuner.tracking.checks import check_tracking
from tuner.trust import Untrusted, check_trusted
from tuner.workload_check import check_workload


def list_workloads() -> str:
    """The built-in workloads and those installed packages register, with their defaults."""
    lines = []
    for w in BUILTIN:
        lines += _describe(w, w.name)
    for name, point in sorted(entry_points().items()):
        try:
            lines += _describe(find_workload(name), name, f" (from {point.value})")
        except Exception as error:  # a broken package must not hide the others
            lines.append(f"{name} (from {point.value}): does not load: {error}")
    lines.append("your own: python -m tuner.search my_pkg.my_module:workload (docs/own-model.md)")
    return "\n".join(lines)


def _describe(w, name: str, origin: str = "") -> list[str]:
    label = get_metric(w.metric_name, w.metric_mode).label
    lines = [f"{name}{origin}: {w.description or 'a workload of your own'}; judged by {label}"]
    for dataset, s in w.data_sets().items():
        files = " (needs files)" if s.needs_files else ""
        grid = ",".join(str(b) for b in s.batch_sizes)
        floor = f" (at least {s.min_steps} steps)" if s.min_steps else ""
        how = "measured" if s.measured else "estimated"
        target = w.default_target(s)
        aim = f"target {label} {target:g}" if target is not None else "no default target"
        lines.append(
            f"    --dataset {dataset}{files}: budget {s.budget}{floor} per trial ({how} to "
            f"reach the target), batch sizes {grid}, {aim}"
        )
    return lines


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def saved_spec(storage_arg: str | None, name: str, trust_code: bool = False) -> StudySpec:
    """The spec of the study to continue; from an object store, fetched into the working copy.
    Resuming runs the study's code (Tune's pickled state, its workload): refused in one line for
    a study this user did not make here, unless `trust_code` (tuner.trust)."""
    storage = opts.absolute_storage(resolve.pick(storage_arg, "studies"))
    study_dir, study_uri = study_location(storage, name)
    if store.is_uri(storage):
        try:
            store.download_file(store.join(study_uri, SPEC_FILE), study_dir / SPEC_FILE)
        except store.StorageError as error:
            raise InputError(f"no study to resume at {study_uri}: {error}") from None
    if not (study_dir / SPEC_FILE).is_file():
        raise InputError(f"no study to resume at {study_dir} (no {SPEC_FILE} there)")
    try:
        check_trusted(study_dir / SPEC_FILE, "--resume", trust_code)
    except Untrusted as error:
        raise InputError(str(error)) from None
    return load_spec(study_dir)


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
    run["dry_run"] = bool(args.dry_run)
    if args.dry_run:
        run["slots"] = args.slots
    if args.resume:
        saved = saved_spec(args.storage, args.name, args.trust_code)
        make_importable(saved.workload_source)
        spec, changed = resolve.resume_spec(saved, args)
        for line in changed:
            print(f"resume: {line} applied", file=sys.stderr)
    else:
        gpus = (resolve.this_machine()["GPU"] > 0) if local else None
        spec = resolve.run_checked(lambda: resolve.build_spec(args, gpus_available=gpus))
        run["gpus_from_cluster"] = args.gpus_per_worker is None and gpus is None
        if not args.skip_data_check:
            check_workload(spec, resolve.load_workload(spec.workload))
        check_new_study(spec)
    if local:
        resolve.check_local_fit(spec)
    if not run["dry_run"]:
        run["tracking"] = check_tracking(args, spec.study_dir, spec.name, spec.method == "branch")
    return spec, run


def dry_run(spec: StudySpec, slots: int | None = None) -> list[str]:
    """What `--dry-run` prints: the plan, its estimated cost and its wall time on `slots`
    (tuner.dry_run)."""
    import dataclasses

    from tuner import dry_run as planner

    if spec.method == "branch":
        from tuner.branch import plan as branching

        ladder = branching.ladder_sizes(spec)
        speeds, n_train = planner.probe(dataclasses.replace(spec, batch_sizes=ladder))
        return branching.estimate_lines(spec, branching.make_plan(spec, n_train), speeds)
    return planner.plan(spec, *planner.probe(spec), slots=slots)


def main(argv: list[str] | None = None) -> int:
    try:
        resolved = parse_and_check(argv)
    except InputError as error:
        fail(str(error))
    if resolved is None:
        print(list_workloads())
        return 0
    spec, run = resolved
    if run.pop("dry_run"):
        print("\n".join(dry_run(spec, run.pop("slots"))))
        return 0
    # Ray is imported only now, with the inputs known good.
    from tuner.study import session

    options = session.RunOptions(**run)
    try:
        spec = resolve.run_checked(lambda: session.prepare(spec, options))
    except InputError as error:
        fail(str(error))
    if spec.method == "branch":
        from tuner.branch import run as branch

        return branch.run(spec, options)
    return session.run(spec, options)


if __name__ == "__main__":
    sys.exit(main())
