"""A last complete copy of Tune's experiment state, for a resume after a kill that tore it.

Tune writes its experiment state (experiment_state-<session>.json) in its staging directory
and copies it into the study directory in place, each time it saves
(`tuner.study.saving`). A kill during that copy leaves the study's file torn
(seen in CI: empty), and `Tuner.restore` then fails ("Failed to restore the run state"): the
study is lost. The searchers copy the state Tune has just written, whole, to `BACKUP` (atomically,
in the staging directory) each time Tune saves them; Tune copies that file into the study
directory too, one file after the other, so a kill tears one of the two at most.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATES = "experiment_state-*.json"  # Tune's name for its state (TuneController.CKPT_FILE_TMPL)
BACKUP = "experiment_state_backup.json"  # not matched by STATES: Tune never restores it


def newest_state(directory: Path) -> Path | None:
    """The experiment state Tune restores from in `directory`, None if it has none."""
    states = sorted(directory.glob(STATES))  # Tune restores the newest by name (its session)
    return states[-1] if states else None


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _copy_atomically(source: Path, dest: Path) -> None:
    part = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(source, part)
    os.replace(part, dest)


def keep_backup(staging_dir: Path) -> None:
    """Copy the experiment state Tune has just written in `staging_dir` to `BACKUP` (called
    from a searcher's `save`, which Tune calls after writing its state, before copying both)."""
    newest = newest_state(staging_dir)
    if newest is not None:
        _copy_atomically(newest, staging_dir / BACKUP)


def repair_torn_state(study_dir: Path) -> bool:
    """Put the last complete copy in place of a torn experiment state; True if it did. An older
    state than the searcher's is fine: the searchers reconcile their trials with Tune's on
    restore (the two were never saved at one instant)."""
    newest, backup = newest_state(study_dir), study_dir / BACKUP
    if newest is None or _parses(newest) or not _parses(backup):
        return False
    _copy_atomically(backup, newest)
    return True
