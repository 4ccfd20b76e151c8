"""The last complete copy of Tune's experiment state (tuner.store.tune_state): kept whole,
and put back only in place of a torn state."""

import json

from tuner.store.tune_state import BACKUP, keep_backup, repair_torn_state


def test_a_torn_state_is_replaced_by_its_last_complete_copy(tmp_path):
    staging, study = tmp_path / "staging", tmp_path / "study"
    staging.mkdir()
    study.mkdir()
    state = {"trial_data": [["{}", "{}"]], "runner_data": {}}
    (staging / "experiment_state-2026-12-06_10-00-00.json").write_text(json.dumps(state))
    keep_backup(staging)
    assert json.loads((staging / BACKUP).read_text()) == state
    # Tune copies the staging directory into the study's; a kill tore the state there
    for name in ("experiment_state-2026-12-06_10-00-00.json", BACKUP):
        (study / name).write_text((staging / name).read_text())
    torn = study / "experiment_state-2026-12-06_10-00-00.json"
    assert not repair_torn_state(study)  # whole: left as it is
    torn.write_text('{"trial_data": [["{}"')
    assert repair_torn_state(study)
    assert json.loads(torn.read_text()) == state
    assert not list(study.glob(".*.part"))


def test_without_a_complete_copy_nothing_is_replaced(tmp_path):
    torn = tmp_path / "experiment_state-2026-12-06_10-00-00.json"
    torn.write_text("")
    assert not repair_torn_state(tmp_path)  # no backup: Tune says what it cannot restore
    (tmp_path / BACKUP).write_text("{")
    assert not repair_torn_state(tmp_path) and torn.read_text() == ""
    assert not repair_torn_state(tmp_path / "empty-dir-without-state")
