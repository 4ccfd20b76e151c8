"""Optuna's SQLite storage of a study: opening it, consistent snapshots, and choosing the freshest.

Plain Python (Optuna and SQLite, no Ray): the searcher, the driver's end-of-study bookkeeping,
the trial table and the report all open the database through here.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import optuna

from tuner.store.names import OPTUNA_DB, OPTUNA_SNAPSHOT
from tuner.store.objects import StorageError, download_file, exists, join


def optuna_storage(study_dir: Path) -> optuna.storages.RDBStorage:
    """Optuna's storage (SQLite) in the study directory (for an object store, in this machine's
    working copy; tuner/store/objects.py)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{study_dir / OPTUNA_DB}")


def schema_ready(db: Path) -> bool:
    """Whether Optuna has finished creating its tables in `db` (its alembic revision is the
    last thing it writes). Read-only: a reader that opened an `RDBStorage` on a database the
    driver is still creating would create the same tables at the same moment, and one of the
    two fails ("table alembic_version already exists"; CI, test_node_removal)."""
    return _first_row(db, "SELECT version_num FROM alembic_version") is not None


def _first_row(db: Path, query: str) -> tuple | None:
    """The first row of `query` on an SQLite file opened read-only; None where the file, its
    table or a row is missing, or it is not SQLite."""
    if not db.exists():
        return None
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return connection.execute(query).fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()


def snapshot_sqlite(db: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (its backup API), replaced atomically so
    that an upload reading the previous copy never sees a torn file."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    os.close(fd)
    source, target = sqlite3.connect(db), sqlite3.connect(tmp)
    try:
        source.backup(target)
        target.close()
        os.replace(tmp, dest)
    finally:
        source.close()
        target.close()
        Path(tmp).unlink(missing_ok=True)


def trial_count(db: Path) -> int:
    """Trials recorded in an Optuna SQLite file (0 if it has none or is not one)."""
    row = _first_row(db, "SELECT COUNT(*) FROM trials")
    return int(row[0]) if row else 0


def pull_optuna_db(study_uri: str, study_dir: Path) -> str:
    """Make `study_dir/OPTUNA_DB` the freshest Optuna database of the study, and say which it is.

    Candidates, in order of preference on a tie: the local one (live on the machine that ran
    the driver), the one the driver uploaded at its end (`optuna.db`), and the snapshot Tune
    synced with its last experiment checkpoint (`optuna-snapshot.db`, from a driver that did
    not reach its end). Fresher means more trials recorded: trials are only ever added.
    """
    local = study_dir / OPTUNA_DB
    best, best_count = "local", trial_count(local)
    for remote in (OPTUNA_DB, OPTUNA_SNAPSHOT):
        uri = join(study_uri, remote)
        if not exists(uri):
            continue
        tmp = study_dir / f".{remote}.download"
        download_file(uri, tmp)
        count = trial_count(tmp)
        if count > best_count:
            os.replace(tmp, local)
            best, best_count = remote, count
        else:
            tmp.unlink()
    if best == "local" and not local.exists():
        raise StorageError(f"no Optuna database for the study at {study_uri} or in {study_dir}")
    return best


def cell_studies(storage: optuna.storages.BaseStorage, study_name: str) -> list[str]:
    """The names of a study's cell studies (`NAME/b512-linear`, ...) in `storage`."""
    prefix = f"{study_name}/"
    return sorted(n for n in optuna.get_all_study_names(storage) if n.startswith(prefix))


def close_lost_trials(study_dir: Path, study_name: str) -> int:
    """After Tune has finished, no Optuna trial can still be running: a RUNNING one was
    suggested after Tune's last experiment checkpoint before a crash, and the resumed
    study never heard of it. Record it as failed (outcome `errored`) so storage and Tune agree."""
    storage = optuna_storage(study_dir)
    lost = 0
    for name in cell_studies(storage, study_name):
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            if trial.state not in (
                optuna.trial.TrialState.RUNNING,
                optuna.trial.TrialState.WAITING,
            ):
                continue
            storage.set_trial_user_attr(trial._trial_id, "outcome", "errored")
            storage.set_trial_user_attr(trial._trial_id, "lost_in_interruption", True)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            lost += 1
    return lost
