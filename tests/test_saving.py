"""When Tune saves a study's experiment state (tuner.study.saving): on change, paced."""

from __future__ import annotations

import inspect

from tuner.study.saving import MIN_GAP_S, Pace, compact_ended, install, signature

TRIALS = (("2 trials", "1 live", "0 pending", "0 paused", "1 stopped", "0 failed"), ("a",))


def test_nothing_changed_nothing_saved_however_long_the_loop_idles() -> None:
    pace = Pace()
    assert pace.due((TRIALS, (1.0,)), now=0.0)
    pace.done((TRIALS, (1.0,)), started=0.0, ended=0.01)
    assert not any(pace.due((TRIALS, (1.0,)), now=t) for t in (0.5, 5.0, 500.0))


def test_a_new_result_is_saved_after_the_gap_not_before() -> None:
    pace = Pace()
    pace.done((TRIALS, (1.0,)), started=0.0, ended=0.01)
    assert not pace.due((TRIALS, (2.0,)), now=0.01 + MIN_GAP_S / 2)
    assert pace.due((TRIALS, (2.0,)), now=0.02 + MIN_GAP_S)


def test_a_trial_added_or_started_waits_for_the_gap_and_one_that_ended_is_saved_at_once() -> None:
    """Trials added or started are paced as results are (a resume adopts a trial Optuna has
    running and Tune's state lacks: tests/test_cell_search.py, tests/test_resume.py); a trial
    that ended is saved at once, since Tune copies its result files to the study only then."""
    counts = ("2 trials", "1 live", "0 pending", "0 paused", "1 stopped", "0 failed")
    added = ("3 trials", "2 live", "1 pending", "0 paused", "1 stopped", "0 failed")
    ended = ("3 trials", "1 live", "0 pending", "0 paused", "2 stopped", "0 failed")
    pace = Pace()
    pace.done(((counts, ("a",)), (1.0,)), started=0.0, ended=0.01)
    assert not pace.due(((added, ("a",)), (1.0,)), now=0.02)
    assert pace.due(((added, ("a",)), (1.0,)), now=0.02 + MIN_GAP_S)
    assert pace.due(((ended, ("b",)), (1.0,)), now=0.02)


def test_the_gap_grows_with_what_a_save_costs() -> None:
    """Saving results stays under its share of the driver's time as a save grows."""
    pace = Pace(share=0.05)
    pace.done((TRIALS, (1.0,)), started=0.0, ended=0.5)  # a save that took 0.5 s: next in 10 s
    assert not pace.due((TRIALS, (2.0,)), now=9.0)
    assert pace.due((TRIALS, (2.0,)), now=10.5)


def test_a_forced_save_and_an_unknown_state_are_always_saved() -> None:
    pace = Pace()
    pace.done((TRIALS, (1.0,)), started=0.0, ended=0.01)
    assert pace.due((TRIALS, (1.0,)), now=0.02, force=True)
    pace.done(None, started=1.0, ended=1.01)
    assert pace.due(None, now=1.02)  # unknown: taken as changed


def test_the_signature_sees_a_result_and_a_trial_ending() -> None:
    """Read from Tune's own Trial objects: a new result (its time) and a change of state."""
    from ray.tune.experiment import Trial

    class Controller:  # the attributes of TuneController the signature reads
        def __init__(self, trial: Trial):
            self._trials, self._live_trials = [trial], {trial}
            self._running_trials, self._pending_trials = {trial}, set()
            self._paused_trials, self._stopped_trials, self._failed_trials = set(), set(), set()

    trial = Trial("t", stub=True, trial_id="a")
    controller = Controller(trial)
    first = signature(controller)
    trial.run_metadata.last_result_time = 123.0
    second = signature(controller)
    assert second[0] == first[0] and second[1] != first[1]  # a result: the same trials
    controller._running_trials, controller._stopped_trials = set(), {trial}
    assert signature(controller)[0] != second[0]  # a trial ended
    assert signature(object()) is None


def test_the_private_names_it_relies_on_are_in_this_ray() -> None:
    """A Ray upgrade that renames them fails here, not silently (every loop turn a save)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController

    params = inspect.signature(_ExperimentCheckpointManager.sync_up_experiment_state).parameters
    assert list(params)[:4] == ["self", "save_fn", "force", "wait"]
    init = inspect.getsource(_ExperimentCheckpointManager.__init__)
    assert "self._checkpoint_period" in init and "self._should_force_sync_up" in init
    controller = inspect.getsource(TuneController)
    for name in ("_trials", "_live_trials", "_running_trials", "_stopped_trials", "save_to_dir"):
        assert f"self.{name}" in controller or f"def {name}" in controller
    install()
    install()  # idempotent: wrapped once
    wrapped = _ExperimentCheckpointManager.sync_up_experiment_state
    assert getattr(wrapped, "paced", False)


def test_an_ended_trial_is_saved_smaller_and_keeps_its_statistics() -> None:
    """What only a running trial needs (the last values of every metric) is dropped once it
    ended: each later save of Tune's state writes it smaller (issue 33), and its JSON state
    still restores with its last result and statistics."""
    from ray.tune.experiment import Trial
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    trial = Trial("t", stub=True, trial_id="a")
    metrics = {f"m{i}": float(i) for i in range(30)}
    for step in range(1, 12):
        trial.update_last_result({**metrics, "training_iteration": step, "val_acc": step / 20})
    before = len(trial.get_json_state()[1])
    assert compact_ended(trial)
    after = trial.get_json_state()[1]
    assert len(after) < before / 2, (len(after), before)
    restored = _TrainingRunMetadata.from_json_state(after)  # as a resume reads it
    assert restored.last_result["val_acc"] == trial.last_result["val_acc"] == 0.55
    assert restored.metric_analysis["val_acc"]["max"] == 0.55
    assert not compact_ended(trial)  # nothing more to drop
