"""Fetch a study from an object store (all but its checkpoints) to write its report here."""

from __future__ import annotations

import sys
from pathlib import Path

from tuner.report.names import NotAStudy
from tuner.spec import study_location
from tuner.store.names import SPEC_FILE
from tuner.store.objects import download_study, exists, join
from tuner.store.optuna_db import pull_optuna_db


def fetch_study(study_uri: str, into: Path | None = None) -> Path:
    """Copy a study from an object store (all but its checkpoints) to a local directory, with
    the freshest Optuna database it has (a running study has only Tune's snapshot of it)."""
    storage_uri, _, name = study_uri.rstrip("/").rpartition("/")
    into = into or study_location(storage_uri, name)[0]
    if not exists(join(study_uri, SPEC_FILE)):
        raise NotAStudy(f"{study_uri} is not a study (no {SPEC_FILE})")
    count = download_study(study_uri, into)
    source = pull_optuna_db(study_uri, into)
    print(f"fetched {count} files of {study_uri} into {into} (Optuna: {source})", file=sys.stderr)
    return into
