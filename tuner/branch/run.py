"""`python -m tuner.search WORKLOAD --method branch`: one Ray Tune experiment whose searcher
(`BranchSearcher`) hands out the branch study's jobs as their inputs exist:

1. the short lr search (`--base-lr` skips it): `PROBE_LRS` probes of the base run's schedule;
2. the base run at the smallest batch size, keeping its checkpoints;
3. from every checkpoint at once, the ladder k = 1, 2, 4, ...: k = 1 and 2 first, then each
   next rung once the smaller ones are in and the ladder goes on (`needs_next_rung`): it stops
   at the first rung shown degraded, so a study pays for the rungs that decide, not for all;
4. with `--verify-schedule`, the batch-size schedule the ladders suggest.
Every job is a Tune trial in a reused trial process (`tuner.branch.trial`), so jobs start in
about a second and run at once where the cluster holds them. Its cost is counted as the grid's
(`tuner.analysis.cost`): each trial from the moment it is handed to Tune to its end.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.search import Searcher

from trainables.datasets import DEFAULT_DATA_DIR
from trainables.optim import scaling_factor
from tuner.analysis.branch import (
    ERRORED,
    BranchRun,
    LocalCritical,
    batch_schedule,
    judged_ladder,
    measure,
    needs_next_rung,
)
from tuner.branch import plan as planning
from tuner.branch.plan import BranchPlan
from tuner.branch.trial import trainable
from tuner.spec import StudySpec, save_spec
from tuner.store import objects as store
from tuner.store.names import SPEC_FILE
from tuner.store.tune_state import keep_backup
from tuner.study import experiment
from tuner.study.experiment import allow_pending, concurrency
from tuner.study.searcher import tune_trials
from tuner.study.session import INTERRUPTED
from tuner.study.tracked import StudyTracking

PHASES = {"probe": "lr search", "base": "base run", "rung": "branches", "verify": "schedule"}
PLACEMENT = ["node_id", "nodes", "device_name"]  # what each job reports of where it ran


@dataclass
class Job:
    """One trial of the study: what it runs and when it ran."""

    kind: str
    batch: int
    payload: dict[str, Any]
    trial_id: str = ""
    started: float = math.nan
    ended: float = math.nan
    error: bool = False
    result: dict[str, Any] = field(default_factory=dict)


class BranchSearcher(Searcher):
    """Tune's searcher for a branch study: a queue of jobs that grows as results come in."""

    def __init__(self, spec: StudySpec, plan: BranchPlan, max_concurrent: int = 0):
        super().__init__(metric=None, mode=None)
        self.spec, self.plan, self.max_concurrent = spec, plan, max_concurrent
        self.study_metric = spec.study_metric
        self.jobs: list[Job] = []
        self.queue: list[Job] = []
        self.running: dict[str, Job] = {}
        self.base_lr = spec.base_lr
        self.base_config: dict[str, Any] | None = None
        self.failure = ""  # why the study could not go on, where it could not
        self.runs: dict[tuple[float, int], list[BranchRun]] = {}
        self.open_points: set[float] = set()
        self.start: dict[float, float] = {}  # the base run's value at each checkpoint
        self.verify_asked = False
        self.interrupted: list[Job] = []  # jobs cut short by an interruption, for their cost
        self.saved_at = math.nan
        self.down: list[tuple[float, float]] = []  # from a last save to a resume
        if self.base_lr:
            self._enqueue_base()
        else:
            self._enqueue_probes()

    # --- Tune's side -----------------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_concurrent and len(self.running) >= self.max_concurrent:
            return None
        if self.queue:
            job = self.queue.pop(0)
            job.trial_id, job.started = trial_id, time.time()
            self.running[trial_id] = job
            return job.payload
        return Searcher.FINISHED if not self.running else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.running.pop(trial_id, None)
        if job is None:
            return
        job.ended, job.error, job.result = time.time(), error, dict(result or {})
        getattr(self, f"_after_{job.kind}")(job)

    def save(self, checkpoint_path: str) -> None:
        """Everything the study knows, with Tune's experiment state (saved when the study
        changed: `tuner.study.saving`)."""
        self.saved_at = time.time()
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)
        keep_backup(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        """Continue from a saved state, told by Tune's saved trials what became of the jobs
        that were running: a job Tune had ended is ended here (its result read from Tune's
        state), one Tune never saved goes back to the queue, and one Tune will run again
        counts its time so far as `interrupted` (a cost, from its start to the last save)
        and starts its clock again. Jobs that had ended are never run again."""
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        # this run's spec (options that may change on resume) and cluster, set before Tune
        # restores this
        now_spec, limit = self.spec, self.max_concurrent
        self.__dict__.update(state)
        self.spec, self.max_concurrent = now_spec, limit
        trials = tune_trials(Path(checkpoint_path).parent) or {}
        now = time.time()
        for trial_id, job in list(self.running.items()):
            trial = trials.get(trial_id)
            if trial is None:
                del self.running[trial_id]
                job.trial_id, job.started = "", math.nan
                self.queue.insert(0, job)
            elif trial.ended:
                self.on_trial_complete(trial_id, trial.last_result, error=trial.status == "ERROR")
                # it ended when it reported, not now
                ended = (trial.last_result or {}).get("timestamp")
                if isinstance(ended, (int, float)) and ended >= job.started:
                    job.ended = float(ended)
            else:
                # a row of its own: one trial's row would span the time it was down
                cut_id = f"{trial_id}-cut{len(self.interrupted)}"  # cut again: another row
                cut = Job(job.kind, job.batch, job.payload, cut_id, job.started)
                cut.ended = max(job.started, self.saved_at)
                self.interrupted.append(cut)
                job.started = now
        if now > self.saved_at:
            self.down.append((self.saved_at, now))
        print(f"resuming: {resume_line(self)}", file=sys.stderr, flush=True)

    # --- the study's steps -----------------------------------------------------------------

    def _add(self, kind: str, batch: int, payload: dict[str, Any]) -> None:
        job = Job(kind, batch, {"kind": kind, **payload})
        self.jobs.append(job)
        self.queue.append(job)

    def _enqueue_probes(self) -> None:
        stop = max(1, round(planning.PROBE_FRACTION * self.plan.base_steps))
        for lr in planning.probe_lrs(self.spec, self.plan):
            config = planning.base_config(self.spec, self.plan, lr)
            self._add("probe", self.plan.base_batch, {"config": config, "stop_step": stop})

    def _after_probe(self, job: Job) -> None:
        if any(j.kind == "probe" and math.isnan(j.ended) for j in self.jobs):
            return
        probes = [j for j in self.jobs if j.kind == "probe" and not j.error]
        scored = [(json.loads(j.result["record"]), j) for j in probes if "record" in j.result]
        scored = [(r, j) for r, j in scored if math.isfinite(r["value"])]
        if not scored:
            self.failure = "every lr of the short search diverged or failed: pass --base-lr"
            return
        best = max(scored, key=lambda rj: self.study_metric.sign * rj[0]["value"])
        self.base_lr = best[0]["base_lr"]
        self._enqueue_base()

    def _enqueue_base(self) -> None:
        self.base_config = planning.base_config(self.spec, self.plan, self.base_lr)
        payload = {"config": self.base_config, "keep_steps": list(self.plan.checkpoints)}
        self._add("base", self.plan.base_batch, payload)

    def _after_base(self, job: Job) -> None:
        record = json.loads(job.result["record"]) if "record" in job.result else None
        if job.error or record is None or record["diverged"]:
            self.failure = "the base run failed or diverged: try another --base-lr"
            return
        at = {h["step"]: h["value"] for h in json.loads(job.result.get("history", "[]"))}
        for fraction, step in zip(self.plan.fractions, self.plan.checkpoints, strict=True):
            self.start[fraction] = at.get(step, math.nan)
        for fraction in self.plan.fractions:
            self.open_points.add(fraction)
            for k in self.plan.multipliers[:2]:
                self._enqueue_rung(fraction, k)

    def _enqueue_rung(self, fraction: float, k: int) -> None:
        assert self.base_config is not None
        step = self.plan.checkpoints[self.plan.fractions.index(fraction)]
        lr = planning.lr_at(self.base_config, step, self.plan.base_steps)
        # Neither the base run's seed (its search branch would replay the examples the base
        # run began with) nor a confirmation's.
        seeds = [self.spec.seed + 1 + i for i in range(self.plan.seeds)]
        search_seed = self.spec.seed + 1 + self.plan.seeds
        configs = {
            str(s): planning.branch_config(self.spec, self.plan, self.base_config, k, s)
            for s in [search_seed, *seeds]
        }
        payload = {
            "checkpoint": fraction,
            "step": step,
            "multiplier": k,
            "candidates": [[c.label, c.lr] for c in planning.candidates(self.plan, lr, k)],
            "search_seed": search_seed,
            "confirm_seeds": seeds,
            "configs": configs,
            "late_steps": planning.late_steps(self.plan, k),
        }
        self.runs[(fraction, k)] = []
        self._add("rung", k * self.plan.base_batch, payload)

    def _after_rung(self, job: Job) -> None:
        fraction, k = job.payload["checkpoint"], job.payload["multiplier"]
        records = json.loads(job.result["runs"]) if "runs" in job.result else []
        self.runs[(fraction, k)] = [BranchRun.from_record(r) for r in records]
        if job.error or not records:  # a rung that cannot be measured ends its ladder
            self.runs[(fraction, k)] = [failed_run(fraction, k)]
        pending = [
            j
            for j in self.jobs
            if j.kind == "rung" and j.payload["checkpoint"] == fraction and math.isnan(j.ended)
        ]
        if pending:
            return
        runs = self.point_runs(fraction)
        rungs, tolerance = judged_ladder(
            runs,
            self.plan.base_batch,
            self.start.get(fraction),
            self.spec.branch_tolerance,
            self.study_metric,
        )
        measured = [r.multiplier for r in rungs]
        following = [m for m in self.plan.multipliers if m > max(measured)]
        if following and needs_next_rung(rungs, tolerance):
            self._enqueue_rung(fraction, following[0])
            return
        self.open_points.discard(fraction)
        if not self.open_points and self.spec.verify_schedule and not self.verify_asked:
            self.verify_asked = True
            self._enqueue_verify()

    def point_runs(self, fraction: float) -> list[BranchRun]:
        return [r for (f, _), runs in sorted(self.runs.items()) if f == fraction for r in runs]

    def all_runs(self) -> list[BranchRun]:
        return [r for _, runs in sorted(self.runs.items()) for r in runs]

    def measured(self) -> list[LocalCritical]:
        return measure(
            self.all_runs(),
            self.plan.base_batch,
            self.spec.branch_tolerance,
            self.study_metric,
            self.start,
        )

    def _enqueue_verify(self) -> None:
        schedule = batch_schedule(self.measured(), self.plan.base_batch)
        if len(schedule) < 2:
            return  # the schedule never grows the batch: nothing to verify
        assert self.base_config is not None
        payload = verify_payload(self.spec, self.plan, self.base_config, schedule)
        self._add("verify", schedule[-1][1], payload)

    def _after_verify(self, job: Job) -> None:
        pass

    # --- what the study found ----------------------------------------------------------------

    def cost_table(self) -> pd.DataFrame:
        """One row per job with its start and end, in the grid's trial-table columns; a job an
        interruption cut short has a row more, for the time it ran before."""
        rows = [
            {
                "trial_id": j.trial_id,
                "batch_size": j.batch,
                "phase": PHASES[j.kind],
                "workers": self.spec.workers_per_trial,
                "started": j.started,
                "ended": j.ended,
                "down": json.dumps(self.down),  # the study's, for its wall time
                **{k: j.result.get(k, math.nan) for k in PLACEMENT},  # where (tuner.branch.trial)
            }
            for j in [*self.interrupted, *self.jobs]
            if j.trial_id
        ]
        columns = ["trial_id", "batch_size", "phase", "workers", "started", "ended", "down"]
        columns += PLACEMENT
        return pd.DataFrame(rows, columns=columns)


def failed_run(fraction: float, k: int) -> BranchRun:
    return BranchRun(fraction, k, ERRORED, math.nan, 0, "search", math.nan)


def verify_payload(
    spec: StudySpec, plan: BranchPlan, base: dict[str, Any], schedule: list[tuple[float, int]]
) -> dict[str, Any]:
    """The schedule's run: from the base run's checkpoint where the batch first grows, each
    segment at its batch for its share of the base run's examples, the lr at every step the
    base run's at the same examples scaled from the base batch by the base run's rule."""
    total = plan.base_steps
    first = plan.fractions.index(schedule[1][0])
    from_step = plan.checkpoints[first]
    segments = []
    bounds = [*(plan.checkpoints[plan.fractions.index(f)] for f, _ in schedule[1:]), total]
    for (fraction, batch), start, end in zip(schedule[1:], bounds[:-1], bounds[1:], strict=True):
        k = batch // plan.base_batch
        steps = max(1, (end - start) // k)
        factor = scaling_factor(base["scaling_rule"], batch, plan.base_batch)
        lrs = [planning.lr_at(base, start + i * k, total) * factor for i in range(steps)]
        # a fresh permutation per segment: each starts its data order at its beginning
        config = planning.branch_config(spec, plan, base, k, base["seed"] + 100 + len(segments))
        config |= {"budget_unit": "steps", "budget_amount": steps, "eval_every": 0}
        segments.append({"config": config, "lrs": lrs, "from": fraction, "batch": batch})
    return {
        "from_step": from_step,
        "from_examples": from_step * plan.base_batch,
        "segments": segments,
    }


def training_examples(spec: StudySpec) -> int:
    """The training set's size, as a trial will see it (the plan's budget needs it)."""
    splits = spec.load_workload().open(
        spec.dataset, spec.data_dir or DEFAULT_DATA_DIR, spec.seed, spec.max_train_examples
    )
    return len(splits.train)


def new_tuner(
    spec: StudySpec, plan: BranchPlan, searcher: BranchSearcher, extra: Sequence[Any] = ()
) -> tune.Tuner:
    most = planning.PROBE_LRS + 2 + len(plan.fractions) * len(plan.multipliers)
    return tune.Tuner(
        trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=most, reuse_actors=True, max_concurrent_trials=None
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage if spec.remote else os.path.abspath(spec.storage),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.worker_retries, fail_fast=False),
            callbacks=list(extra),  # --mlflow (tuner.study.tracked)
        ),
    )


def resume_line(searcher: BranchSearcher) -> str:
    """What a resumed study had done, and what it runs again."""
    ended = Counter(PHASES[j.kind] for j in searcher.jobs if not math.isnan(j.ended))
    again = Counter(PHASES[j.kind] for j in searcher.running.values())
    done = ", ".join(f"{n} {phase}" for phase, n in ended.items()) or "nothing"
    rerun = ", ".join(f"{n} {phase}" for phase, n in again.items())
    line = f"{done} done"
    if rerun:
        line += f"; running again: {rerun}"
    if "base" in [j.kind for j in searcher.running.values()]:
        line += " (the base run from its latest checkpoint)"
    return line


def run(spec: StudySpec, options: Any) -> int:
    """Run a branch study on the joined cluster and write what it found."""
    from tuner.branch import write

    experiment.save_on_change()  # the searcher's state and Tune's, saved together
    if options.resume:
        tuner, searcher = experiment.restored(spec, trainable(spec))
        tracked = StudyTracking(spec, options.tracking, resume=True)
        experiment.with_callbacks(tuner, tracked.callbacks)
        plan = searcher.plan
        searcher.spec, searcher.max_concurrent = spec, concurrency(spec)  # this run's
    else:
        plan = planning.make_plan(spec, training_examples(spec))
        save_spec(spec)
        if spec.remote:
            store.upload_file(spec.study_dir / SPEC_FILE, store.join(spec.study_uri, SPEC_FILE))
        tracked = StudyTracking(spec, options.tracking, resume=False)
        searcher = BranchSearcher(spec, plan, concurrency(spec))
        tuner = new_tuner(spec, plan, searcher, tracked.callbacks)
    print(write.plan_line(spec, plan), file=sys.stderr, flush=True)
    allow_pending(max(searcher.max_concurrent, 1))
    tuner.fit()
    left = len(searcher.queue) + len(searcher.running)
    if left and not searcher.failure:
        tracked.finish(interrupted=True)
        # Tune stopped early (Ctrl+C): ladders half climbed would read as measured
        print(
            f"error: the branch study was interrupted with {left} job(s) to run; nothing is "
            f"reported before it ends: continue it with python -m tuner.search --resume "
            f"--name {spec.name} --storage {spec.storage}",
            file=sys.stderr,
        )
        return INTERRUPTED
    try:
        written = write.write_study(spec, plan, searcher)
    except Exception as error:  # the runs are saved; say why the report is not
        print(
            f"error: the branch study's report failed ({type(error).__name__}: {error}); its "
            f"trials are in {spec.study_dir}",
            file=sys.stderr,
        )
        return 1
    tracked.finish(interrupted=False)
    if spec.remote:
        count = store.upload_study(spec.study_dir, spec.study_uri)
        print(f"uploaded {count} files to {spec.study_uri}", file=sys.stderr)
    for line in write.summary(spec, plan, searcher):
        print(line, file=sys.stderr)
    print(f"report: {written}", file=sys.stderr)
    return 1 if searcher.failure else 0
