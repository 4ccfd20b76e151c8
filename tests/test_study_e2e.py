"""A real small joint study on local Ray, read back through its files."""

import json
from collections import Counter

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuner.store.table import collect_trials

pytestmark = pytest.mark.ray


def test_every_batch_size_gets_its_share(small_study):
    table = collect_trials(small_study)
    per_trial = table.drop_duplicates("trial_id")
    assert len(per_trial) == 8
    assert Counter(per_trial["batch_size"]) == {8: 4, 64: 4}


def test_asha_stopped_trials_and_every_trial_is_accounted_for(small_study):
    per_trial = collect_trials(small_study).drop_duplicates("trial_id")
    outcomes = Counter(per_trial["outcome"])
    assert outcomes["stopped"] >= 1, outcomes
    assert outcomes["completed"] >= 2, outcomes  # at least one full trial per batch size
    assert set(outcomes) <= {"completed", "stopped", "diverged", "errored"}


def test_trial_table_is_complete(small_study):
    table = collect_trials(small_study)
    assert (small_study / "trials.csv").exists()
    for trial_id, rows in table.groupby("trial_id"):
        epochs = rows["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)), trial_id  # no gaps, no duplicates
        outcome = rows["outcome"].iloc[0]
        if outcome == "completed":
            assert epochs[-1] == 3
        # examples seen = optimizer steps x global batch, whatever the batch size
        assert (rows["examples_seen"] == rows["optimizer_steps"] * rows["batch_size"]).all()
        assert rows["val_acc"].between(0, 1).all()


def test_optuna_storage_agrees_with_outcomes(small_study):
    storage = optuna.storages.RDBStorage(f"sqlite:///{small_study / 'optuna.db'}")
    trials = optuna.load_study(study_name="e2e", storage=storage).trials
    assert len(trials) == 8
    expected = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "stopped": optuna.trial.TrialState.PRUNED,
    }
    for t in trials:
        assert t.state == expected[t.user_attrs["outcome"]]


def test_tensorboard_files_hold_every_trial_metrics(small_study):
    table = collect_trials(small_study)
    files = sorted(small_study.glob("trial_driver_*/events.out.tfevents.*"))
    assert len(files) == 8
    seen = set()
    for path in files:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {
            "trial/val_acc",
            "trial/val_loss",
            "trial/train_loss",
            "trial/lr",
            "trial/samples_per_second",
        } <= tags
        steps = [e.step for e in acc.Scalars("trial/val_acc")]
        trial_id = path.parent.name.split("_")[2]
        rows = table[table["trial_id"] == trial_id]
        assert steps == rows["epoch"].astype(int).tolist()  # x axis is the epoch
        values = [e.value for e in acc.Scalars("trial/val_acc")]
        assert values == pytest.approx(rows["val_acc"].tolist(), rel=1e-6)
        seen.add(trial_id)
    assert seen == set(table["trial_id"])


def test_spec_saves_versions_and_revision(small_study):
    saved = json.loads((small_study / "study.json").read_text())
    assert saved["spec"]["batch_sizes"] == [8, 64] and saved["spec"]["trials"] == 8
    packages = saved["environment"]["packages"]
    assert packages["ray"] and packages["torch"] and packages["optuna"]
    assert "git_revision" in saved["environment"]
