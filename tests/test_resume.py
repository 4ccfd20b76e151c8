"""An interrupted study continues with --resume: finished trials are kept as they were, none is
recorded or trained twice, and it ends as an uninterrupted study would."""

import json
import sqlite3
import time
from collections import Counter

import pandas as pd
import pytest

from tests.conftest import (
    FINISHED_STATES,
    assert_each_evaluation_trained_once,
    assert_resume_kept_the_record,
    ctrl_c_study_when,
    error_lines,
    kill_study_when,
    optuna_records,
    run_cli,
)
from tuner.analysis.cost import study_cost, trial_costs
from tuner.spec import load_spec
from tuner.store.table import collect_trials
from tuner.study.saving import GAP_ENV

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DOWN_S = 8  # between the kill and the resume

ARGS = [
    "simple_cnn",
    "--dataset",
    "digits",
    "--batch-sizes",
    "8,64",
    "--rules",
    "linear",
    "--trials",
    "4",
    "--seeds",
    "1",
    "--budget",
    "steps:60",
    # The checks off: these tests count the search's trials and confirmations.
    "--no-checks",
    "--eval-every",
    "15",
    "--max-concurrent",
    "1",
    "--no-report",
]


def finished_trials(db) -> int:
    """Finished trials in the live optuna.db, read-only. (Opening it with Optuna's RDBStorage
    would run its schema set-up on the file while the study's driver creates it.)"""
    if not db.exists():
        return 0
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return connection.execute(
            "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')"
        ).fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0
    finally:
        connection.close()


def mid_trial(study_dir, finished: int) -> bool:
    """`finished` trials are done and a running one has saved a checkpoint: a kill now lands in
    the middle of its training. (A kill within milliseconds of a trial's start, before Tune's
    state is saved, loses that trial: it is recorded errored and its cell runs another, so the
    final table is not an uninterrupted study's; tests/test_cell_search.py checks that case.)"""
    records = optuna_records(study_dir / "optuna.db")
    if sum(r[0] in FINISHED_STATES for r in records.values()) < finished:
        return False
    running = [json.loads(r[2]) for r in records.values() if r[0] == "RUNNING" and r[2]]
    return any(any((study_dir / "train_runs" / f"trial-{t}").glob("*/state.pt")) for t in running)


def unknown_to_tune(study_dir) -> bool:
    """Every trial Optuna has running is missing from Tune's saved experiment state."""
    records = optuna_records(study_dir / "optuna.db")
    running = [json.loads(r[2]) for r in records.values() if r[0] == "RUNNING" and r[2]]
    saved = "".join(p.read_text() for p in study_dir.glob("experiment_state-*.json"))
    return bool(running) and not any(key in saved for key in running)


def first_run_killed_after(
    tmp_path, name: str, finished: int, extra: list[str], unsaved: bool = False
) -> dict:
    """Start the study, SIGKILL its whole process group in the middle of a trial once
    `finished` trials are done (a crash: no clean shutdown), and return Optuna's record as the
    kill left it. `unsaved`: Tune saves trial starts at most once an hour, and the kill waits
    for a running trial its saved state lacks."""
    study_dir = tmp_path / name
    argv = [*ARGS, *extra, "--name", name, "--storage", str(tmp_path)]
    env = {GAP_ENV: "3600"} if unsaved else None

    def ready() -> bool:
        return mid_trial(study_dir, finished) and (not unsaved or unknown_to_tune(study_dir))

    kill_study_when(argv, tmp_path / "first-run.log", ready, env=env)
    return optuna_records(study_dir / "optuna.db")


def final_rows(study_dir) -> pd.DataFrame:
    """Each trial's last evaluation: what it was, how it ended, what it reached."""
    table = collect_trials(study_dir)
    last = table.sort_values("optimizer_steps").groupby("trial_id").tail(1)
    columns = ["cell", "phase", "optuna_number", "seed", "base_lr", "weight_decay"]
    columns += ["warmup_fraction", "outcome", "optimizer_steps", "val_acc", "val_loss"]
    return last[columns].sort_values(["cell", "optuna_number"]).reset_index(drop=True)


@pytest.mark.parametrize(
    ("workers", "unsaved"),
    [(1, True), (2, False)],
    # A one-worker trial Tune resumes from its checkpoint (the case before saves were paced)
    # is test_a_study_stopped_with_ctrl_c_says_so_and_resumes's; a Ray Train one, this one's.
    ids=["one-worker-trials-unsaved-start", "ray-train-trials"],
)
def test_killed_study_resumes_as_if_never_interrupted(tmp_path, workers, unsaved):
    """Killed once 2 trials had finished (in the first, for Ray Train trials), resumed: the
    finished trials and their Optuna records are kept as they were, no trial is recorded
    twice, no step is trained twice, and (one trial at a time, so the order of trials is fixed)
    the final table is the one an uninterrupted study of the same options ends with.
    `unsaved`: Tune saves trial starts at a pace (tuner.study.saving); here the kill lands in
    a trial whose start Tune's state and the searcher's lack, which only Optuna's record has:
    the resumed search hands its run out again, under the same Optuna trial."""
    extra = ["--workers-per-trial", str(workers)]
    finished = 2
    if workers > 1:
        # One cell and one Ray Train trial, killed in its middle: each Ray Train trial starts a
        # worker group (~30 CPU-s on 2 CPUs, three runs of the study; issue 31). What is Ray
        # Train's own, its workers' checkpoint and their restart from it, is all in that one
        # trial; that finished trials are kept as they were is the one-worker case's to show.
        extra += ["--batch-sizes", "8", "--trials", "1", "--seeds", "0"]
        finished = 0
    before = first_run_killed_after(tmp_path, "resumed", finished, extra, unsaved)
    assert sum(r[0] in FINISHED_STATES for r in before.values()) >= finished
    study_dir = tmp_path / "resumed"
    torn = workers == 1
    if torn:
        # The kill as CI once saw it land: while Tune copied its experiment state into the
        # study directory, leaving it empty (the resume failed: "Failed to restore the run
        # state"). The resume continues from the state's last complete copy.
        (state,) = study_dir.glob("experiment_state-*.json")
        state.write_text("")
    time.sleep(DOWN_S)  # the study is down a while before its resume
    resumed = run_cli("tuner.search", "--resume", "--name", "resumed", "--storage", str(tmp_path))
    message = "resume: Tune's experiment state was torn by the interruption"
    assert (message in resumed.stderr) == torn, resumed.stderr[-3000:]
    spec = load_spec(study_dir)
    total = spec.trials + spec.confirmation_trials
    assert_resume_kept_the_record(before, optuna_records(study_dir / "optuna.db"), total)
    assert_each_evaluation_trained_once(study_dir)
    table = collect_trials(study_dir)
    assert Counter(table.drop_duplicates("trial_id")["outcome"])["running"] == 0
    # one Optuna trial per Tune trial, and back
    assert (table.groupby("trial_id")["optuna_number"].nunique() == 1).all()
    assert (table.groupby(["cell", "optuna_number"])["trial_id"].nunique() == 1).all()
    # The trial the kill cut resumed (Tune had saved it) or, handed out after Tune's last save
    # (saves are paced: tuner.study.saving), ran again from its start under its Optuna record
    # (a new Tune trial); either way it is not charged for the time the study was down.
    after = optuna_records(study_dir / "optuna.db")
    cut_records = [k for k, r in before.items() if r[0] == "RUNNING" and r[2]]
    assert cut_records and all(after[k][0] in ("COMPLETE", "PRUNED") for k in cut_records)
    cut = sorted(json.loads(after[k][2]) for k in cut_records)
    if unsaved:  # unknown to Tune: its run was handed out again, as a new Tune trial
        assert all(after[k][2] != before[k][2] for k in cut_records)
    trials = table.drop_duplicates("trial_id").set_index("trial_id")
    assert (trials.loc[cut, "downtime_s"] >= DOWN_S).all()
    assert (trials.drop(cut)["downtime_s"] == 0).all()
    costs = trial_costs(table, per_worker=1.0).set_index("trial_id")
    spans = trials["ended"] - trials["started"]
    assert (costs.loc[cut, "wall_s"] <= spans[cut] - DOWN_S).all()
    span = trials["ended"].max() - trials["started"].min()
    assert study_cost(table, 0, 1).wall_hours * 3600 <= span - DOWN_S

    run_cli("tuner.search", *ARGS, *extra, "--name", "uninterrupted", "--storage", str(tmp_path))
    got, expected = final_rows(study_dir), final_rows(tmp_path / "uninterrupted")
    pd.testing.assert_frame_equal(got, expected)


def test_a_study_stopped_with_ctrl_c_says_so_and_resumes(tmp_path):
    """Ctrl+C in the middle of a trial: Tune saves and stops, the report covers what ended, and
    the CLI says the study was interrupted (exit 130, one error line with the way on) instead
    of 'done'; --resume ends it with every trial ended."""
    study_dir = tmp_path / "stopped"
    argv = [*ARGS, "--name", "stopped", "--storage", str(tmp_path)]
    log = tmp_path / "first-run.log"
    assert ctrl_c_study_when(argv, log, lambda: mid_trial(study_dir, 1)) == 130
    log = log.read_text()
    errors = error_lines(log)
    assert len(errors) == 1 and errors[0].startswith("error: the study was interrupted with")
    assert f"--resume --name stopped --storage {tmp_path}" in errors[0]
    assert "its trial table holds the trials that ended" in errors[0]  # --no-report
    assert "done: " not in log and (study_dir / "trials.csv").is_file()

    resumed = run_cli("tuner.search", "--resume", "--name", "stopped", "--storage", str(tmp_path))
    assert "done: " in resumed.stderr
    table = collect_trials(study_dir)
    outcomes = Counter(table.drop_duplicates("trial_id")["outcome"])
    # the trial Ctrl+C cut was resumed and recorded, not closed as lost
    assert outcomes["running"] == 0 and outcomes["errored"] == 0, outcomes
    # ... from its checkpoint (the one-worker case of a trial Tune resumes), no step twice
    assert_each_evaluation_trained_once(study_dir)
    cut = table[table["resumed_at_step"] > 0]["trial_id"].unique()
    assert len(cut) == 1, table[["trial_id", "optimizer_steps", "resumed_at_step"]]
