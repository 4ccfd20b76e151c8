"""Wires one study into a Ray Tune experiment: searcher, scheduler, callbacks and run config.

The trials themselves are `tuner.study.trial`; Optuna's storage is `tuner.store.optuna_db`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import optuna
from ray import tune

from search_spaces.cell_search import CellSearch
from search_spaces.checks import speculation
from tuner.cluster.capacity import workers_that_fit
from tuner.cluster.connect import cluster_nodes
from tuner.spec import StudySpec
from tuner.store import objects as store
from tuner.store.optuna_db import optuna_storage
from tuner.store.tune_state import repair_torn_state
from tuner.study import actor_cache, saving, sync
from tuner.study.callbacks import (
    CompactEndedTrials,
    ProgressCallback,
    StepTensorBoardCallback,
    TrackingCallback,
)
from tuner.study.scheduler import PerCellASHA
from tuner.study.searcher import CellSearcher
from tuner.study.trial import reuses_actors, trainable


def study_storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    """The study's Optuna storage where its working copy is *now*: evaluated on every call, so a
    searcher restored on another machine (another $BATCH_SCALING_CACHE) opens the database
    there, never a path pickled on the first machine."""
    return optuna_storage(spec.study_dir)


def make_search(spec: StudySpec) -> CellSearch:
    """The per-cell search of the study (search_spaces.cell_search), without its storage."""
    return CellSearch(
        study_name=spec.name,
        storage=None,
        cells=spec.cells(),
        search_trials=spec.trials,
        seeds=spec.seeds,
        space=spec.space(),
        reference_batch=spec.reference,
        seed=spec.seed,
        mode=spec.study_metric.mode,
        tolerance=spec.tolerance,
        max_steps=spec.max_steps,
        max_data_multiple=spec.max_data_multiple,
        budget_free_steps=spec.budget_free_steps,
        target_warmup=spec.target_warmup,
        rule_test=spec.rule_test,
        checks=spec.checks,
    )


def make_searcher(spec: StudySpec, scheduler: PerCellASHA | None = None) -> CellSearcher:
    metric = spec.study_metric
    return CellSearcher(
        make_search(spec), partial(study_storage, spec), metric.key, metric.mode, scheduler
    )


def make_scheduler(spec: StudySpec) -> PerCellASHA:
    metric = spec.study_metric
    return PerCellASHA(
        metric=metric.key,
        mode=metric.mode,
        grace=spec.grace,
        reduction_factor=spec.reduction_factor,
    )


def concurrency(spec: StudySpec) -> int:
    """Trials at once: as many as the cluster's nodes hold (each worker whole on one node), so
    none waits on another; on an autoscaling cluster, what it can grow to."""
    if spec.max_concurrent > 0:
        return spec.max_concurrent
    fits = workers_that_fit(cluster_nodes(), spec.cpus_per_worker, spec.gpus_per_worker)
    return max(1, fits // spec.workers_per_trial)


def callbacks(spec: StudySpec) -> list[tune.Callback]:
    return [
        StepTensorBoardCallback(),
        ProgressCallback(spec.batch_sizes, spec.study_metric),
        CompactEndedTrials(),
    ]


def run_config(spec: StudySpec, extra: Sequence[tune.Callback] = ()) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=spec.storage if spec.remote else os.path.abspath(spec.storage),
        callbacks=[*callbacks(spec), *extra],
        verbose=0,
        # A failed trial is recorded and the study goes on. A one-worker trial trains in its
        # Tune actor: Tune restarts it, --worker-retries times, and it resumes from its last
        # checkpoint (trainables.checkpoint_dir). A
        # multi-worker trial's driver is not retried: the Train run inside it restarts its
        # worker group from its own checkpoint.
        failure_config=tune.FailureConfig(
            max_failures=spec.worker_retries if spec.workers_per_trial == 1 else 0,
            fail_fast=False,
        ),
    )


def save_on_change() -> None:
    """Tune saves the experiment state (trials, searcher, scheduler) when it has changed, at
    most once per gap (`tuner.study.saving`), not on a timer: a study killed between saves
    loses little, and saving stays a small share of the driver however large the study.
    Each save copies to the study only the files that changed (`tuner.study.sync`). Also:
    finished trials' actors are kept while no trial waits (`tuner.study.actor_cache`), so that
    a searcher handing out its next trials a moment later finds them."""
    saving.install()
    sync.install()
    actor_cache.install()


PENDING = "TUNE_MAX_PENDING_TRIALS_PG"
_OURS = "BATCH_SCALING_SET_PENDING"  # marks PENDING as set here, not by the user


def allow_pending(trials: int) -> None:
    """Let Tune queue `trials` trials at once. Tune allows one pending trial for a searcher
    not wrapped in its ConcurrencyLimiter (which this study's is not: see CellSearcher), so
    trials would start one after another, and an autoscaling cluster would be asked for one
    trial's resources at a time (seen: a two-node study ran on one node). A value the user
    set stays."""
    if os.environ.get(PENDING) and not os.environ.get(_OURS):
        return
    os.environ[PENDING] = str(trials)
    os.environ[_OURS] = "1"


def speculate(searcher: CellSearcher, spec: StudySpec, trials: int) -> None:
    """Set how far ahead the baseline's longer runs start (search_spaces.checks.speculation)
    and say so where they do."""
    ahead = speculation(spec.speculate, trials)
    searcher.speculate(ahead)
    if ahead and spec.checks:
        print(
            f"checks: the baseline's runs at more steps start {ahead} doubling(s) ahead of "
            f"the batch sizes that ask for them ({trials} trials at once; --speculate 0: not)",
            file=sys.stderr,
        )


def make_tuner(
    spec: StudySpec, extra: Sequence[tune.Callback] = (), trainable_: object = None
) -> tune.Tuner:
    """The study's Tune experiment; `trainable_`: another trial function (bench/cluster_scale.py's
    stand-in), else the study's own."""
    save_on_change()
    scheduler = make_scheduler(spec)
    searcher = make_searcher(spec, scheduler)  # saves the scheduler's rungs too
    searcher.max_concurrent = concurrency(spec)  # the searcher limits, not Tune's wrapper
    speculate(searcher, spec, searcher.max_concurrent)
    allow_pending(searcher.max_concurrent)
    return tune.Tuner(
        trainable(spec) if trainable_ is None else trainable_,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            # Search trials, each cell's confirmation runs, then the checks: a bound, the
            # searcher says when it is done.
            num_samples=spec.most_trials,
            max_concurrent_trials=None,
            # One trial process per concurrent slot, not per trial: each new one spent ~10 s
            # of CPU starting Python and importing torch and Ray Train (measured here), and
            # Tune 2.60 starts a new one per trial by default.
            reuse_actors=reuses_actors(spec),
        ),
        run_config=run_config(spec, extra),
    )


def restored(spec: StudySpec, trainable_: object) -> tuple[tune.Tuner, object]:
    """Tune's experiment of an interrupted study and its restored searcher: finished trials
    are kept, unfinished ones resumed, errored ones stay errored.

    The trainable is bound to the spec given here, so options that may change on resume
    (--worker-retries, --data-dir) reach the resumed trials. Tune's own concurrency wrapper is
    taken off the restored Tune config (a study saved before the searcher limited itself had
    it), which `Tuner.restore` does not take; the searcher is the one Tune will run (private
    attributes: this is the one place that touches them).
    """
    save_on_change()
    if not store.is_uri(spec.study_uri) and repair_torn_state(Path(spec.study_uri)):
        # (an object store's upload is whole or absent: only a local copy can be torn)
        print(
            "resume: Tune's experiment state was torn by the interruption; continuing from "
            "its last complete copy",
            file=sys.stderr,
        )
    tuner = tune.Tuner.restore(
        spec.study_uri,
        trainable=trainable_,
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
    internal = tuner._local_tuner
    internal._tune_config = dataclasses.replace(internal._tune_config, max_concurrent_trials=None)
    return tuner, searcher_of(tuner)


def searcher_of(tuner: tune.Tuner) -> object:
    """The searcher Tune runs (the one a restored Tuner restores into)."""
    return tuner._local_tuner._tune_config.search_alg


def with_callbacks(tuner: tune.Tuner, extra: Sequence[tune.Callback]) -> None:
    """A restored experiment's callbacks with this run's tracking (a saved TrackingCallback
    lost its client when Tune saved it)."""
    config = tuner._local_tuner._run_config
    kept = [c for c in config.callbacks or [] if not isinstance(c, TrackingCallback)]
    config.callbacks = [*kept, *extra]


def restore_tuner(spec: StudySpec, extra: Sequence[tune.Callback] = ()) -> tune.Tuner:
    """Continue an interrupted grid study (`restored`), --max-concurrent set on its searcher."""
    tuner, searcher = restored(spec, trainable(spec))
    with_callbacks(tuner, extra)
    trials = concurrency(spec)  # asks the cluster for its nodes: once
    searcher.max_concurrent = trials
    speculate(searcher, spec, trials)
    allow_pending(trials)
    return tuner
