"""Studies in an object store (`--storage s3://...`), against a real S3 endpoint on loopback.

The fast tests drive tuner/store/objects.py and the CLI's up-front checks; the Ray test kills a
study mid-run and resumes it from the bucket alone, in a fresh working copy (as on another
machine).
"""

from __future__ import annotations

import json
from collections import Counter

import optuna
import pytest

from tests.conftest import (
    assert_each_evaluation_trained_once,
    assert_resume_kept_the_record,
    kill_study_when,
    optuna_records,
    run_cli,
)
from tuner.spec import load_spec
from tuner.store import objects as store
from tuner.store import optuna_db
from tuner.store.table import collect_trials


@pytest.fixture
def aws(s3, monkeypatch, tmp_path):
    """This process talks to the test endpoint; working copies go under tmp_path."""
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    return {**s3, store.CACHE_ENV: str(tmp_path / "cache")}


def make_db(path, trials: int) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    for _ in range(trials):
        study.tell(study.ask(), 0.5)
    storage.engine.dispose()


def test_working_copy_is_named_after_the_uri(monkeypatch, tmp_path):
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path))
    assert store.working_copy("s3://bucket/a/b/") == tmp_path / "studies/s3/bucket/a/b"
    assert store.join("s3://bucket/a/", "/n", "x.json") == "s3://bucket/a/n/x.json"


def test_a_study_goes_up_and_comes_back_without_its_checkpoints(aws, tmp_path):
    src = tmp_path / "src"
    for name in ("study.json", "trial_a/result.json", "figures/a.png", "train_runs/t/state.pt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name * 100)
    uri = "s3://studies/roundtrip/one"
    assert store.upload_study(src, uri, skip=()) == 4
    assert "train_runs/t/state.pt" in store.list_files(uri)
    dest = tmp_path / "dest"
    assert store.download_study(uri, dest) == 3
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "figures/a.png",
        "study.json",
        "trial_a/result.json",
    ]
    assert (dest / "trial_a/result.json").read_text() == "trial_a/result.json" * 100


def test_storage_that_cannot_be_written_is_one_line(aws):
    with pytest.raises(store.StorageError) as error:
        store.check_writable("s3://no-such-bucket/studies")
    message = str(error.value)
    assert "\n" not in message and "no-such-bucket" in message
    with pytest.raises(store.StorageError, match="AWS_ENDPOINT_URL"):
        store.check_writable("s3://studies/x?endpoint_override=127.0.0.1:9000")
    store.check_writable("s3://studies/ok")  # the bucket exists: fine, and leaves nothing
    assert store.list_files("s3://studies/ok") == []


def test_the_freshest_optuna_database_wins(aws, tmp_path):
    uri = "s3://studies/dbs/s"
    local = tmp_path / "work"
    local.mkdir()
    make_db(tmp_path / "snap.db", 3)
    store.upload_file(tmp_path / "snap.db", store.join(uri, "optuna-snapshot.db"))
    assert optuna_db.pull_optuna_db(uri, local) == "optuna-snapshot.db"  # nothing local yet
    assert optuna_db.trial_count(local / "optuna.db") == 3
    make_db(local / "optuna.db", 2)  # the driver here recorded two more since
    assert optuna_db.pull_optuna_db(uri, local) == "local"
    assert optuna_db.trial_count(local / "optuna.db") == 5
    make_db(tmp_path / "final.db", 6)
    store.upload_file(tmp_path / "final.db", store.join(uri, "optuna.db"))
    assert optuna_db.pull_optuna_db(uri, local) == "optuna.db"
    with pytest.raises(store.StorageError):
        optuna_db.pull_optuna_db("s3://studies/dbs/none", tmp_path / "empty")


def test_a_sqlite_snapshot_is_a_whole_database(tmp_path):
    make_db(tmp_path / "live.db", 4)
    optuna_db.snapshot_sqlite(tmp_path / "live.db", tmp_path / "snap.db")
    assert optuna_db.trial_count(tmp_path / "snap.db") == 4
    assert not list(tmp_path.glob("*.part"))


def test_cli_refuses_unwritable_storage_and_missing_studies_in_one_line(aws):
    proc = run_cli(
        "tuner.search", "simple_cnn", "--smoke", "--storage", "s3://no-such-bucket/x",
        env=aws, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot write to storage s3://no-such-bucket/x")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli(
        "tuner.search", "--resume", "--name", "nope", "--storage", "s3://studies/x",
        env=aws, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no study to resume at s3://studies/x/nope")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_new_study_never_replaces_one_of_the_same_name(aws, tmp_path):
    (tmp_path / "local/taken").mkdir(parents=True)
    (tmp_path / "local/taken/study.json").write_text("{}")
    (tmp_path / "spec.json").write_text("{}")
    store.upload_file(tmp_path / "spec.json", "s3://studies/names/taken/study.json")
    for storage, where in [
        (str(tmp_path / "local"), str(tmp_path / "local/taken")),
        ("s3://studies/names", "s3://studies/names/taken"),
    ]:
        proc = run_cli(
            "tuner.search", "simple_cnn", "--smoke", "--storage", storage, "--name", "taken",
            env=aws, check=False, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            f"error: study taken already exists at {where}; use --resume to continue it or "
            "another --name"
        )


def test_report_on_a_uri_that_holds_no_study_is_one_line(aws, tmp_path):
    proc = run_cli(
        "tuner.report", "s3://studies/names/nothing", "--into", str(tmp_path / "x"),
        env=aws, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: s3://studies/names/nothing is not a study (no study.json)"
    assert not (tmp_path / "x").exists()


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
    "steps:40",
    # The checks off: these tests count the search's trials and confirmations.
    "--no-checks",
    "--eval-every",
    "10",
    "--max-train-examples",
    "768",
    "--name",
    "moved",
    "--storage",
    "s3://studies/cluster",
]
STUDY = "s3://studies/cluster/moved"


def finished_in_snapshot(tmp_path) -> int:
    """Finished trials in the Optuna snapshot that Tune has synced to the bucket so far."""
    uri = store.join(STUDY, "optuna-snapshot.db")
    if not store.exists(uri):
        return 0
    store.download_file(uri, tmp_path / "probe.db")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'probe.db'}")
    try:
        trials = [
            t
            for name in optuna_db.cell_studies(storage, "moved")
            for t in optuna.load_study(study_name=name, storage=storage).trials
        ]
    finally:
        storage.engine.dispose()
    return sum(t.state.is_finished() for t in trials)


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_killed_on_one_machine_resumes_on_another_from_the_bucket(aws, tmp_path):
    first = {**aws, store.CACHE_ENV: str(tmp_path / "machine-a")}

    def two_finished_in_the_bucket() -> bool:  # polled every 2 s: the kill lands at any moment
        return finished_in_snapshot(tmp_path) >= 2

    kill_study_when(ARGS, tmp_path / "first-run.log", two_finished_in_the_bucket, first, 2)
    assert not store.exists(store.join(STUDY, "report.md"))
    store.download_file(store.join(STUDY, "optuna-snapshot.db"), tmp_path / "at-kill.db")
    before = optuna_records(tmp_path / "at-kill.db")  # what the bucket knew at the kill

    second = {**aws, store.CACHE_ENV: str(tmp_path / "machine-b")}
    resumed = run_cli("tuner.search", "--resume", "--name", "moved", "--storage",
                      "s3://studies/cluster", env=second)  # fmt: skip
    assert "Optuna database from optuna-snapshot.db" in resumed.stderr
    work = tmp_path / "machine-b/studies/s3/studies/cluster/moved"
    assert (work / "report.md").is_file()

    # Nothing trained twice, and the trial table, built from the bucket's results and the
    # snapshot, has every trial once.
    assert_each_evaluation_trained_once(work)
    spec = load_spec(work)
    # The kill lands at any moment here (the bucket is polled every 2 s), and Tune uploads
    # its state, the searcher's and Optuna's snapshot one file after another: a kill between
    # two uploads can lose the trial handed out in that instant (seen: a confirmation run the
    # searcher's state had handed out and neither Tune's state nor the snapshot knew).
    total = spec.trials + spec.confirmation_trials
    # Seen in CI: both trials running at the kill lost (Tune's search generator, uploaded
    # after the kill's last trial list, had counted them as created, so they were never
    # created again): at most the trials running at the kill are lost, recorded failed.
    running = sum(r[0] == "RUNNING" for r in before.values())
    after = optuna_records(work / "optuna.db")
    assert_resume_kept_the_record(before, after, total, lost=max(running, 1))
    full = collect_trials(work)
    assert (full.groupby("trial_id")["optuna_number"].nunique() == 1).all()
    table = full.drop_duplicates("trial_id")
    recorded = table[table["outcome"].isin(["completed", "stopped", "diverged"])]
    assert total - max(running, 1) <= len(recorded) <= total
    assert Counter(table["outcome"])["running"] == 0 and table["trial_id"].is_unique

    # The bucket holds the whole study: the driver's files and every trial's checkpoint.
    files = store.list_files(STUDY)
    for name in ("study.json", "optuna.db", "trials.csv", "report.md", "frontier.json"):
        assert name in files, name
    assert any(f.startswith("figures/") for f in files)
    assert any(f.startswith("summary/") for f in files)
    checkpointed = {f.split("/")[1] for f in files if f.endswith("/state.pt")}
    assert {f"trial-{t}" for t in recorded["trial_id"]} <= checkpointed

    # Anyone with the URI gets the report: fetched without checkpoints, written locally.
    fetched = tmp_path / "laptop"
    run_cli("tuner.report", STUDY, "--into", str(fetched), env=aws)
    assert not (fetched / "train_runs").exists()
    ours = json.loads((work / "frontier.json").read_text())
    theirs = json.loads((fetched / "frontier.json").read_text())
    assert theirs["frontier"] == ours["frontier"]

    # TensorBoard reads the map straight from the bucket (its own S3 reader, through boto3).
    from tensorboard.backend.event_processing import event_accumulator as ea

    def frontier_scalars(logdir: str) -> list[tuple[int, float]]:
        acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0})
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("frontier/accuracy")]

    from_bucket = frontier_scalars(store.join(STUDY, "summary"))
    assert from_bucket and from_bucket == frontier_scalars(str(work / "summary"))
