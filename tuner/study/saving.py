"""When Tune saves a study's experiment state: when it has changed, at most once per gap.

Tune 2.60 saves its experiment state (every trial's JSON, the searcher's and scheduler's
pickle, our copy of optuna.db) on a timer: every 10 s by default, or on every turn of its loop
(ten or more a second, idle or not) with `TUNE_GLOBAL_CHECKPOINT_S=0`, which this product used
so that a kill lost as little as possible. Each save is O(trials) work, so the driver's CPU
grew with the study: 871 saves in a 105 s study of 26 trials, 14 of its 49 CPU-s (py-spy, issue
33). Here a save happens when the experiment changed since the last one: at once where a trial
ended, at most once per `gap` where trials were only added or started or reported results
(`MIN_GAP_S`, or `1 / SHARE` times what the last save took, so that those saves stay under
`SHARE` of the driver's time however large the study grows); an idle loop saves nothing, and
the end of the experiment (Tune's forced save) is always written. Ends are not paced: Tune
writes a trial's result files (its rows in the trial table) in the driver's staging directory
of the Ray session and copies them to the study only with a save, so a kill after an unsaved
end loses the rows of that trial (seen in issue 33: a resumed study's table had trials with
no evaluations). What a kill loses in a gap, the resume makes up from records written as
things happen (issue 33):
- a trial handed out since the last save is running in optuna.db (the searcher records it at
  once) and unknown to Tune's state and the searcher's: the restored search hands the same run
  out again, which adopts that Optuna record (`search_spaces.reconcile`: same trial number, run
  from its start);
- the scheduler's rungs and stops since are taken in again from the trials' result files
  (`CellSearcher._take_in_results`);
- a running trial resumes from its own latest checkpoint (`trainables.checkpoint_dir`),
  whatever Tune's state says.
Saving every start and end at once was O(trials) per trial, twice: at 1,000 one-second trials
on 16 slots (`bench/cluster_scale.py --bookkeeping`, py-spy) saving took 46% of the driver's
main thread, a 26 MB state of 25.6 KB per trial. Each save also copied the whole staging
directory (every trial's files) to the study: now only the files that changed
(`tuner.study.sync`). Tune writes its experiment state in place while its last copy may still
run in a background thread (a state so torn reached an object store, issue 33): a save waits
for the next turn while a copy runs (a forced one waits for the copy). Measured on the
e2e study of tests/conftest.py (26 trials, py-spy), saving on change instead of every loop
turn: the driver's CPU 49 -> 29 s, Tune's saving 14.4 -> 1.9 s.

Tune has no hook for this: the one place that decides is its checkpoint manager's
`sync_up_experiment_state`, wrapped here (`install`, idempotent). `tests/test_saving.py` checks
the private names it relies on, so a Ray upgrade that moves them fails there, not silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

MIN_GAP_S = 1.0  # the most often a changing study is saved
SHARE = 0.05  # at most this share of the driver's time goes to saving
# The least time between saves, where it should be longer (an object store whose uploads are
# slow or billed per request; tests/test_resume.py kills a study in a trial whose start Tune
# has not saved).
GAP_ENV = "BATCH_SCALING_SAVE_GAP_S"


def min_gap_s() -> float:
    """`MIN_GAP_S`, or $BATCH_SCALING_SAVE_GAP_S seconds where that is set (and positive)."""
    try:
        return max(float(os.environ.get(GAP_ENV, MIN_GAP_S)), MIN_GAP_S)
    except ValueError:
        return MIN_GAP_S


@dataclass
class Pace:
    """Decides, turn by turn of Tune's loop, whether to save now (plain Python: no Ray)."""

    min_gap_s: float = field(default_factory=min_gap_s)
    share: float = SHARE
    saved: Hashable = None  # the experiment's signature at the last save (None: unknown)
    ended_at: float = float("-inf")  # monotonic time the last save ended
    gap_s: float = MIN_GAP_S

    def due(self, signature: Hashable | None, now: float, force: bool = False) -> bool:
        """Save now? `signature`: (trials and their states, running trials' last results),
        from `signature()`; None: unknown, so changed."""
        if force or signature is None or not isinstance(self.saved, tuple):
            return True
        if signature == self.saved:
            return False
        if ended(signature) != ended(self.saved):
            return True  # a trial ended: its result files reach storage only with a save
        # a trial added or started, or results: at most once per gap (the resume makes up
        # what a kill in between loses: see the module's docstring)
        return now - self.ended_at >= self.gap_s

    def done(self, signature: Hashable | None, started: float, ended: float) -> None:
        """A save ran from `started` to `ended` (monotonic seconds)."""
        self.saved = signature
        self.ended_at = ended
        self.gap_s = max(self.min_gap_s, (ended - started) / self.share)


def ended(signature: tuple) -> tuple:
    """How many trials had ended (stopped, failed), from a `signature`."""
    return signature[0][0][-2:]


def signature(controller: Any) -> tuple[Hashable, Hashable] | None:
    """What a save would record, in brief: (how many trials there are in each state and which
    run, each running trial's last result time). None where the controller is not Tune's."""
    try:
        running = sorted(
            (t.trial_id, t.run_metadata.last_result_time) for t in controller._running_trials
        )
        counts = tuple(
            len(getattr(controller, name))
            for name in (
                "_trials",
                "_live_trials",
                "_pending_trials",
                "_paused_trials",
                "_stopped_trials",
                "_failed_trials",
            )
        )
    except (AttributeError, TypeError):
        return None
    return (counts, tuple(key for key, _ in running)), tuple(time for _, time in running)


def copy_running(manager: Any) -> bool:
    """Whether Tune's last copy of the staging directory to the study is still running (its
    syncer's background thread; Ray's private names, checked in tests/test_sync.py)."""
    syncer = getattr(getattr(manager, "_storage", None), "syncer", None)
    process = getattr(syncer, "_sync_process", None)
    return bool(process is not None and process.is_running)


def _paced(original: Callable[..., None]) -> Callable[..., None]:
    def sync_up_experiment_state(
        self: Any, save_fn: Callable[[], None], force: bool = False, wait: bool = False
    ) -> None:
        pace: Pace = self.__dict__.setdefault("_study_pace", Pace())
        brief = signature(getattr(save_fn, "__self__", None))
        forced = force or bool(getattr(self, "_should_force_sync_up", False))
        if not pace.due(brief, time.monotonic(), forced):
            return
        if copy_running(self):
            # Tune writes its experiment state in place while the last copy to the study may
            # still read it: a copy so torn reached the bucket (issue 33). Not now: next turn.
            if not forced and not wait:
                return
            self._storage.syncer.wait()  # the end, Ctrl+C: after the copy, never during it
        synced_before = getattr(self, "_last_sync_time", None)
        self._checkpoint_period = 0.0  # decided here: Tune's own timer must not skip it
        started = time.monotonic()
        original(self, save_fn=save_fn, force=force, wait=wait)
        if getattr(self, "_last_sync_time", None) != synced_before or wait or force:
            pace.done(brief, started, time.monotonic())
        # else: Tune launched no copy (only a syncer `copy_running` cannot see into would
        # still be copying), so this state stayed in the staging directory; not recorded as
        # saved, so the next turn after the gap tries again

    sync_up_experiment_state.paced = True  # type: ignore[attr-defined]
    return sync_up_experiment_state


def install() -> None:
    """Make Tune save on change (idempotent; call before the experiment starts)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    current = manager.sync_up_experiment_state
    if not getattr(current, "paced", False):
        manager.sync_up_experiment_state = _paced(current)


def compact_ended(trial: Any) -> bool:
    """Drop what Tune keeps of an ended trial only to go on updating its running statistics
    (`run_metadata.metric_n_steps`: the last 5 and 10 values of every reported metric, 9.7 of a
    trial's 25.6 KB in the saved state at 1,000 trials); every later save writes the trial
    smaller. Its statistics themselves (`metric_analysis`) and last result stay. Returns
    whether anything was dropped."""
    meta = getattr(trial, "run_metadata", None)
    if meta is None or not getattr(meta, "metric_n_steps", None):
        return False
    meta.metric_n_steps = {}  # its cached JSON (saved beside the trial's) goes on assignment
    return True
