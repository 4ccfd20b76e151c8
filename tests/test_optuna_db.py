"""Opening a study's Optuna database while its driver is still creating it (no Ray)."""

import sqlite3

import optuna
import sqlalchemy
from optuna.storages._rdb import models

from tuner.options import build_parser
from tuner.resolve import build_spec
from tuner.store.names import OPTUNA_DB
from tuner.store.optuna_db import schema_ready
from tuner.store.table import read_cell_trials


def tables(db) -> set[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {name for (name,) in rows}


def test_the_table_never_creates_the_tables_of_a_database_the_driver_is_creating(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    cli = ["simple_cnn", "--rules", "linear", "--storage", str(tmp_path / "studies")]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=False)
    db = spec.study_dir / OPTUNA_DB
    db.parent.mkdir(parents=True)
    db.touch()  # the driver's engine has made the file ...
    assert read_cell_trials(spec.study_dir, spec) == [] and tables(db) == set()
    # ... and Optuna's tables, not yet its alembic stamp: a reader opening an RDBStorage now
    # would stamp it too, racing the driver ("table alembic_version already exists", CI)
    models.BaseModel.metadata.create_all(sqlalchemy.create_engine(f"sqlite:///{db}"))
    before = tables(db)
    assert not schema_ready(db)
    assert read_cell_trials(spec.study_dir, spec) == []
    assert tables(db) == before and "alembic_version" not in before

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")  # the driver finishes
    assert schema_ready(db)
    study = optuna.create_study(study_name=f"{spec.name}/b8", storage=storage)
    study.enqueue_trial({})
    assert [cell for cell, _ in read_cell_trials(spec.study_dir, spec)] == ["b8"]
