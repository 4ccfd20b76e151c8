"""An interrupted study continues with --resume: finished trials are kept, none run twice."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest

from tests.conftest import ROOT, run_cli
from tuner.results import collect_trials, read_results

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = [
    "simple_cnn",
    "--dataset",
    "digits",
    "--batch-sizes",
    "8,64",
    "--trials",
    "6",
    "--epochs",
    "2",
    "--name",
    "resumed",
    "--no-report",
]


def finished_trials(db) -> int:
    if not db.exists():
        return 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        trials = optuna.load_study(study_name="resumed", storage=storage).trials
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in trials)


def test_killed_study_resumes_without_repeating_finished_trials(tmp_path):
    study_dir = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.search", *ARGS, "--storage", str(tmp_path)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 400
        while finished_trials(study_dir / "optuna.db") < 2:
            assert proc.poll() is None, "the study ended before it could be interrupted"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean shutdown, no final checkpoint
        proc.wait()
    run_cli(
        "tuner.search", "--resume", "--name", "resumed", "--storage", str(tmp_path), "--no-report"
    )

    # A trial whose Train run had finished is resumed by Tune and re-reports its last epoch
    # from the checkpoint: the same numbers to the last bit, timings included. Had any epoch
    # been trained twice, its epoch_time_s would differ between the two reports.
    for trial_id, rows in read_results(study_dir).items():
        by_epoch = {}
        for row in rows:
            by_epoch.setdefault(row["epoch"], set()).add((row["epoch_time_s"], row["val_loss"]))
        assert all(len(v) == 1 for v in by_epoch.values()), f"{trial_id} trained an epoch twice"
    table = collect_trials(study_dir).drop_duplicates("trial_id")
    recorded = table[table["outcome"].isin(["completed", "stopped", "diverged"])]
    assert len(recorded) >= 6 - 1  # at most one trial lost between Tune checkpoints
    assert Counter(table["outcome"])["running"] == 0
    assert table["trial_id"].is_unique
    assert Counter(recorded["batch_size"])[8] >= 2 and Counter(recorded["batch_size"])[64] >= 2
