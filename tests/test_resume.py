"""An interrupted study continues with --resume: finished trials are kept, none run twice."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.conftest import ROOT, assert_each_evaluation_trained_once, run_cli
from tuner.store.table import collect_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow]

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
    "--eval-every",
    "15",
    "--name",
    "resumed",
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


def test_killed_study_resumes_without_repeating_finished_trials(tmp_path):
    study_dir = tmp_path / "resumed"
    log = tmp_path / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner.search", *ARGS, "--storage", str(tmp_path)],
            cwd=ROOT,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 400
        while finished_trials(study_dir / "optuna.db") < 2:
            assert proc.poll() is None, (
                f"the study ended before it could be interrupted:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its Ray processes, if it died alone
            os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean shutdown, no checkpoint
        proc.wait()
    run_cli(
        "tuner.search", "--resume", "--name", "resumed", "--storage", str(tmp_path), "--no-report"
    )

    assert_each_evaluation_trained_once(study_dir)
    table = collect_trials(study_dir).drop_duplicates("trial_id")
    recorded = table[table["outcome"].isin(["completed", "stopped", "diverged"])]
    assert len(recorded) >= 6 - 1  # at most one trial lost between Tune checkpoints
    assert Counter(table["outcome"])["running"] == 0
    assert table["trial_id"].is_unique
    assert Counter(recorded["batch_size"])[8] >= 2 and Counter(recorded["batch_size"])[64] >= 2
