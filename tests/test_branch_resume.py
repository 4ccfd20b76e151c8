"""A branch study killed in its base run continues with --resume: the jobs that had ended are
not run again, the base run goes on from its latest kept checkpoint (not from step 0), every
evaluation of it is recorded once, and the time the killed run had spent is counted."""

import json
import time
from collections import Counter

import pytest

from tests.conftest import ctrl_c_study_when, error_lines, kill_study_when, run_cli
from tuner.study.searcher import tune_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NAME = "r"
DOWN_S = 6  # between the kill and the resume
# The base run long enough (steps) for the kill to land between its two checkpoints.
ARGS = ["simple_cnn", "--dataset", "digits", "--method", "branch", "--smoke"]
ARGS += ["--budget", "steps:1200", "--branch-at", "0.1,0.8", "--rules", "sqrt"]


def kept_steps(study) -> list[int]:
    """The base run's checkpoints on disk, by step."""
    found = (study / "branch_points").glob("step-*/checkpoint_*/state.pt")
    return sorted({int(p.parent.parent.name.removeprefix("step-")) for p in found})


def test_a_branch_study_killed_on_one_machine_resumes_on_another_from_the_bucket(
    s3, tmp_path, monkeypatch
):
    """Killed in its base run, with the study in an object store, and resumed in a fresh
    working copy (as on another machine): the base run's checkpoints and Tune's state come from
    the bucket. (This one test covers a local resume too: the resume works on a local copy; a
    local twin of it cost 68 s of CI, issue 31.)"""
    from tuner.store import objects as store

    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    storage, uri = "s3://studies/branch", "s3://studies/branch/" + NAME

    def kept_in_bucket() -> list[int]:
        files = [f for f in store.list_files(uri) if f.startswith("branch_points/")]
        return sorted({int(f.split("/")[1].removeprefix("step-")) for f in files})

    first = {**s3, store.CACHE_ENV: str(tmp_path / "machine-a")}
    argv = [*ARGS, "--storage", storage, "--name", NAME]
    began = time.time()
    kill_study_when(argv, tmp_path / "first.log", lambda: bool(kept_in_bucket()), first, 0.5)
    assert not store.exists(store.join(uri, "branch.json"))
    time.sleep(DOWN_S)
    kept = kept_in_bucket()

    second = {**s3, store.CACHE_ENV: str(tmp_path / "machine-b")}
    proc = run_cli("tuner.search", "--resume", "--storage", storage, "--name", NAME, env=second)
    assert "resuming: 4 lr search done; running again: 1 base run" in proc.stderr, proc.stderr
    work = tmp_path / "machine-b/studies/s3/studies/branch" / NAME
    data = json.loads((work / "branch.json").read_text())
    assert not data["failure"]
    # the base run went on from the checkpoint it had kept, not from step 0
    assert data["base_run"]["resumed_at_step"] == kept[-1]
    assert data["base_run"]["steps"] == data["plan"]["base_steps"]
    steps = [h["step"] for h in data["base_history"]]
    assert steps == sorted(set(steps)) and set(kept) <= set(steps)  # each evaluation once
    assert set(data["plan"]["checkpoints"]) <= set(steps)
    assert [p["checkpoint"] for p in data["points"]] == [0.1, 0.8]
    assert "branch.json" in store.list_files(uri)  # the finished study is in the bucket

    # Tune's state in the bucket: each job ran once (no probe again, one base run, resumed as
    # the same trial)
    store.download_study(uri, tmp_path / "bucket")
    kinds = Counter(t.config.get("kind") for t in (tune_trials(tmp_path / "bucket") or {}).values())
    assert kinds["probe"] == 4 and kinds["base"] == 1 and kinds["rung"] >= 4, kinds

    # the killed base run's time before the kill is a cost of its own row
    jobs = sum(kinds.values())
    assert data["cost"]["trials"] == jobs + 1, (data["cost"]["trials"], jobs)
    assert data["cost"]["by_phase"]["base run"] > 0
    # and the study's wall time leaves out the time it was down
    assert data["cost"]["wall_hours"] * 3600 <= time.time() - began - DOWN_S


def test_a_branch_study_stopped_with_ctrl_c_says_so_and_reports_nothing_until_resumed(tmp_path):
    """Ctrl+C: Tune saves its state and stops; the study reports no half-climbed ladder as a
    measurement (exit 130, one error line that says how to continue), and --resume ends it."""
    storage = tmp_path / "studies"
    study = storage / NAME
    # One branch point: Ctrl+C lands once the base run has kept its first checkpoint, and the
    # ladder the resume then climbs at a second point would check nothing more; the base lr
    # given (no lr search: that finished jobs are not run again is the bucket test's to show)
    # and half the steps (Ctrl+C lands at step 60 of 600, the poll within a second): issue 31.
    one_point = [*ARGS[: ARGS.index("--branch-at")], *ARGS[ARGS.index("--branch-at") + 2 :]]
    argv = [*one_point, "--branch-at", "0.1", "--budget", "steps:600", "--base-lr", "0.05"]
    argv += ["--storage", str(storage), "--name", NAME]
    log = tmp_path / "first.log"
    assert ctrl_c_study_when(argv, log, lambda: bool(kept_steps(study))) == 130
    log = log.read_text()
    errors = error_lines(log)
    assert errors == [
        f"error: the branch study was interrupted with 1 job(s) to run; nothing is reported "
        f"before it ends: continue it with python -m tuner.search --resume --name {NAME} "
        f"--storage {storage}"
    ], log[-3000:]
    assert not (study / "branch.json").exists() and not (study / "branch.md").exists()

    run_cli("tuner.search", "--resume", "--storage", str(storage), "--name", NAME)
    data = json.loads((study / "branch.json").read_text())
    assert not data["failure"] and data["base_run"]["resumed_at_step"] in kept_steps(study)
    assert [p["checkpoint"] for p in data["points"]] == [0.1]
