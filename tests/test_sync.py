"""Tune's copy of the experiment to the study takes changed files only (tuner.study.sync)."""

from __future__ import annotations

import inspect
import os
import pickle
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tuner.study.sync import COPIED, install, upload_changed


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def stamps(root) -> dict[str, int]:
    """Every file under `root` by relative path, with its modification time (ns)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_only_what_changed_is_copied_again(tmp_path) -> None:
    """The first copy takes every file; the next ones only a file that grew, a new file, or one
    replaced (as Tune replaces its state files); files left alone are not written again."""
    staging, study = tmp_path / "staging", tmp_path / "study"
    write(staging / "experiment_state.json", "{}")
    for i in range(3):
        write(staging / f"trial_{i}" / "result.json", f'{{"step": {i}}}\n')
    fs, seen = pafs.LocalFileSystem(), {}
    upload_changed(str(staging), fs, str(study), seen=seen)
    first = stamps(study)
    assert set(first) == set(stamps(staging)) and len(seen) == 4
    assert (study / "trial_1" / "result.json").read_text() == '{"step": 1}\n'

    time.sleep(0.01)
    upload_changed(str(staging), fs, str(study), seen=seen)
    assert stamps(study) == first  # nothing changed: nothing written

    time.sleep(0.01)
    with open(staging / "trial_2" / "result.json", "a") as out:
        out.write('{"step": 3}\n')
    write(staging / "trial_3" / "result.json", '{"step": 0}\n')
    (staging / "experiment_state.tmp").write_text('{"trials": 4}')
    os.replace(staging / "experiment_state.tmp", staging / "experiment_state.json")
    upload_changed(str(staging), fs, str(study), seen=seen)
    now = stamps(study)
    changed = {f for f in now if now[f] != first.get(f)}
    assert changed == {
        "trial_2/result.json",
        "trial_3/result.json",
        "experiment_state.json",
    }
    assert (study / "experiment_state.json").read_text() == '{"trials": 4}'
    assert (study / "trial_2" / "result.json").read_text().count("step") == 2


def test_the_private_names_it_relies_on_are_in_this_ray() -> None:
    """A Ray upgrade that renames them fails here, not silently (every save a full copy)."""
    from ray.train._internal.storage import _FilesystemSyncer, _upload_to_fs_path

    params = list(inspect.signature(_upload_to_fs_path).parameters)
    assert params == ["local_path", "fs", "fs_path", "exclude"]
    command = list(inspect.signature(_FilesystemSyncer._sync_up_command).parameters)
    assert command == ["self", "local_path", "uri", "exclude"]
    install()
    install()  # idempotent
    syncer = _FilesystemSyncer(storage_filesystem=pafs.LocalFileSystem())
    function, kwargs = syncer._sync_up_command("/a", "/b")
    assert function is upload_changed and kwargs["record"] == ("/a", "/b")
    # the record of what was copied stays out of the syncer, which Tune serialises into every
    # trial's entry of each experiment state (a 1,000-trial state was 880 MB): not even
    # through the last command, which the syncer keeps
    COPIED[kwargs["record"]] = {f"trial_{i}/result.json": (1, 1) for i in range(100)}
    syncer._current_cmd = (function, kwargs)
    assert b"trial_99" not in pickle.dumps(syncer)


def test_a_file_that_changes_while_read_waits_for_the_next_copy(tmp_path) -> None:
    from tuner.study.sync import read_settled

    path = tmp_path / "result.json"
    path.write_text("a\n")
    info = path.stat()
    assert read_settled(str(path), (info.st_size, info.st_mtime_ns)) == b"a\n"
    with open(path, "a") as out:
        out.write("b\n")  # grew after it was listed
    assert read_settled(str(path), (info.st_size, info.st_mtime_ns)) is None
    assert read_settled(str(tmp_path / "gone.json"), (1, 1)) is None


@pytest.mark.ray  # Tune's staging directory is in the Ray session's
def test_the_state_is_never_written_while_the_last_copy_reads_it(tmp_path, local_ray) -> None:
    """Tune rewrites its experiment state in place: a save while the last copy to the study
    still runs could leave a torn state there (seen in the bucket, issue 33). With Ray's own
    checkpoint manager, storage and background syncer: such a save waits for the next turn,
    a forced one (the end, Ctrl+C) for the copy to end."""
    import threading

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from tuner.study import saving

    saving.install()
    storage = StorageContext(storage_path=str(tmp_path / "studies"), experiment_dir_name="e")
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0)
    release, events = threading.Event(), []

    def save(what: str):
        def save_fn() -> None:  # as Tune's: the state, in place, in the staging directory
            staging = Path(storage.experiment_driver_staging_path)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / "experiment_state-x.json").write_text(f'{{"{what}": 1}}')
            events.append(what)

        return save_fn

    def slow_copy() -> None:
        events.append("copy starts")
        release.wait(10)
        events.append("copy ends")

    storage.syncer._launch_sync_process((slow_copy, {}))  # the last copy, still running
    manager.sync_up_experiment_state(save_fn=save("saved"))
    assert events == ["copy starts"]  # not written now; the next turn will

    def forced() -> None:
        manager.sync_up_experiment_state(save_fn=save("saved"), force=True)

    thread = threading.Thread(target=forced)
    thread.start()
    time.sleep(0.2)
    assert events == ["copy starts"]
    release.set()
    thread.join(10)
    assert events == ["copy starts", "copy ends", "saved"]
    manager.sync_up_experiment_state(save_fn=save("saved again"), force=True, wait=True)
    assert events[-1] == "saved again"
    assert (tmp_path / "studies" / "e" / "experiment_state-x.json").read_text() == (
        '{"saved again": 1}'
    )
