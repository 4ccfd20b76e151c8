"""One study from start to end: join Ray, check the cluster can hold a trial, save the spec, run
(or resume) the Tune experiment, then write the trial table and the report.

`prepare` does everything that can still refuse the study (exit 2, nothing written); `run`
writes and trains.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from tuner.cluster.capacity import check_fits
from tuner.cluster.connect import cluster_nodes, connect
from tuner.cluster.placement import plan_placement
from tuner.spec import StudySpec, save_spec
from tuner.store import objects as store
from tuner.store.names import SPEC_FILE
from tuner.store.optuna_db import close_lost_trials, pull_optuna_db
from tuner.store.table import write_trial_table
from tuner.study import experiment
from tuner.study.searcher import tune_trials
from tuner.study.tracked import StudyTracking
from tuner.tracking.checks import Tracking

INTERRUPTED = 130  # the exit status of a study stopped by Ctrl+C, as a shell's


@dataclass(frozen=True)
class RunOptions:
    """What the CLI decides about this run that is not part of the study itself."""

    address: str | None
    resume: bool
    report: bool = True
    # --gpus-per-worker was not given and the cluster was not known before Ray started:
    # take one GPU per worker if the cluster has GPUs.
    gpus_from_cluster: bool = False
    tracking: Tracking = Tracking()  # --mlflow, --optuna-storage (checked: tuner.tracking)


def cap_text(spec: StudySpec) -> str:
    """The checks' cap as the study states it (search_spaces.checks.DATA_CAP_MULTIPLE)."""
    if spec.max_steps:
        return f"{spec.max_steps} steps"
    if spec.max_data_multiple:
        return f"{spec.max_data_multiple:g}x the baseline's examples"
    return "twice the longest budget"


def prepare(spec: StudySpec, options: RunOptions) -> StudySpec:
    """Join the cluster and return the spec as it will run; `InputError` / `ConfigError` when
    the cluster cannot run it. Nothing is written."""
    # Ray Train trials (more than one worker) need the dashboard's State API: local_ray_kwargs
    connect(options.address, spec.workload_source, dashboard=spec.workers_per_trial > 1)
    nodes = cluster_nodes()
    if options.gpus_from_cluster and any(n.get("GPU", 0) > 0 for n in nodes):
        spec = dataclasses.replace(spec, gpus_per_worker=1.0)
        spec.validate()  # e.g. fractional GPUs are now known
    check_fits(nodes, spec.workers_per_trial, spec.cpus_per_worker, spec.gpus_per_worker)
    placement = plan_placement(
        nodes,
        spec.workers_per_trial,
        spec.cpus_per_worker,
        spec.gpus_per_worker,
        spec.accelerator_type,
    )
    for note in placement.notes:
        print(f"placement: {note}", file=sys.stderr)
    return dataclasses.replace(
        spec,
        placement_strategy=placement.strategy,
        accelerator_type=placement.accelerator_type,
    )


def run(spec: StudySpec, options: RunOptions) -> int:
    """Run or resume the study on the joined cluster; write its table and report."""
    if not options.resume:
        save_spec(spec)
        if spec.remote:  # a resume from anywhere needs the spec, even if this driver dies now
            store.upload_file(spec.study_dir / SPEC_FILE, store.join(spec.study_uri, SPEC_FILE))
    elif spec.remote:
        used = pull_optuna_db(spec.study_uri, spec.study_dir)
        print(f"resuming with the Optuna database from {used}", file=sys.stderr)
    print(
        f"study {spec.name}: {spec.what}, batch sizes "
        f"{list(spec.batch_sizes)}, {len(spec.cells())} cells, {spec.trials} search trials "
        f"+ up to {spec.confirmation_trials} confirmation runs + {spec.rule_test_trials} "
        f"rule-test runs + about {spec.equal_data_trials} equal-data runs + more steps where "
        f"a batch size falls short (up to "
        f"{cap_text(spec)}; the baseline at the same "
        f"multiples), budget {spec.budget_spec()} "
        f"per trial, {spec.workers_per_trial} worker(s)/trial, results in {spec.study_dir}",
        file=sys.stderr,
        flush=True,
    )
    tracked = StudyTracking(spec, options.tracking, options.resume)
    if options.resume:
        tuner = experiment.restore_tuner(spec, tracked.callbacks)
    else:
        tuner = experiment.make_tuner(spec, tracked.callbacks)
    tracked.attach(experiment.searcher_of(tuner))
    results = tuner.fit()
    if spec.remote:  # Tune's results and TensorBoard files, for the trial table and report
        store.download_study(spec.study_uri, spec.study_dir)
    # Tune's saved state, not the results in memory: stopped by Ctrl+C, Tune saves its running
    # trials as running (resumable), then ends them in memory as terminated.
    saved = tune_trials(spec.study_dir) or {}
    unfinished = sum(not trial.ended for trial in saved.values())
    # Stopped between trials, nothing is left running: the search had not said it was done.
    stopped_early = unfinished > 0 or not getattr(experiment.searcher_of(tuner), "done", True)
    # Only a study Tune finished has no Optuna trial left running; an interrupted one's running
    # trials are resumed (closing them would record their ends as errors).
    lost = 0 if stopped_early else close_lost_trials(spec.study_dir, spec.name)
    if lost:
        print(
            f"{lost} trial(s) started just before an interruption were never recorded by Tune; "
            f"marked errored in optuna.db",
            file=sys.stderr,
        )
    table = write_trial_table(spec.study_dir)
    print(f"trial table: {table}", file=sys.stderr)
    if options.report:
        from tuner.report.write import write_report

        try:
            print(f"report: {write_report(spec.study_dir)}", file=sys.stderr)
        except Exception as error:  # the study is done and saved; say why the report is not
            print(
                f"report failed ({type(error).__name__}: {error}); rerun it with "
                f"python -m tuner.report {spec.study_dir}",
                file=sys.stderr,
            )
    tracked.finish(interrupted=stopped_early)
    if spec.remote:
        try:
            count = store.upload_study(spec.study_dir, spec.study_uri)
        except store.StorageError as error:
            print(
                f"error: {error}; the finished study is in {spec.study_dir} on this machine",
                file=sys.stderr,
            )
            return 1
        print(f"uploaded {count} files to {spec.study_uri}", file=sys.stderr)
    if stopped_early:  # Tune stopped early (Ctrl+C): saved, and the report says what ended
        print(
            f"error: the study was interrupted with {unfinished} trial(s) unfinished and the "
            f"rest of its search to run; "
            f"{'its report and trial table hold' if options.report else 'its trial table holds'}"
            f" the trials that ended: continue it with python -m tuner.search --resume --name "
            f"{spec.name} --storage {spec.storage}",
            file=sys.stderr,
        )
        return INTERRUPTED
    errors = sum(1 for r in results if r.error)
    print(
        f"done: {len(results)} trials ({errors} errored). The map: tensorboard --logdir "
        f"{spec.study_dir / 'summary'} (every trial's curves: --logdir {spec.study_dir})",
        file=sys.stderr,
    )
    return 0
