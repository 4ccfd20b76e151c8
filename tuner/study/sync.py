"""Tune's copy of the experiment to the study: only the files that changed since the last copy.

Ray 2.60 keeps the driver's side of an experiment (its state, the searcher's, every trial's
result files) in a staging directory of the Ray session and, with each save of the experiment
state, copies that whole directory to the study (`_FilesystemSyncer`, one `pyarrow` copy of
every file, issue 33): O(trials) files per save, a save per trial end, so O(trials^2) over a
study, in the driver process (a background thread). Here the copy takes only the files whose
size or modification time changed since this driver process last copied them (`COPIED`); an
experiment started or resumed copies everything once. A file replaced or changed while it
is read (Tune writes its searcher's state under a temporary name and appends to result
files) is skipped and copied next time, where Ray's whole-directory copy raised (a syncer
traceback in the middle of a study's output, issue 33) or copied it torn (`read_settled`).

`tests/test_sync.py` checks the private names it relies on, so a Ray upgrade that moves them
fails there, not silently.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

# (local dir, remote path) -> {file: (size, mtime_ns)} copied, in this driver process. Never
# reachable from the syncer (its last command is kept on it): Tune serialises every trial's
# storage context, its syncer with it, into each experiment state (a record of every file
# there made a 1,000-trial state 880 MB) and deep-copies it with each new trial's spec (while
# the copy's thread changed the record: "dictionary changed size during iteration").
COPIED: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}


def changed_files(local_path: str, seen: dict[str, tuple[int, int]]) -> dict[str, tuple]:
    """The files under `local_path` (relative, '/'-separated) whose size or modification time
    differ from `seen`, with their current ones."""
    found = {}
    for root, _, names in os.walk(local_path):
        for name in names:
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
            except FileNotFoundError:  # renamed or removed since it was listed
                continue
            relative = os.path.relpath(path, local_path).replace(os.sep, "/")
            stamp = (info.st_size, info.st_mtime_ns)
            if seen.get(relative) != stamp:
                found[relative] = stamp
    return found


def read_settled(path: str, stamp: tuple[int, int]) -> bytes | None:
    """The file's bytes if they are the whole file as `stamp` (size, mtime) saw it, else None
    (copied at the next save): Tune's loggers append to a trial's result files while a copy
    runs. (Tune's experiment state, which it rewrites in place, is never written while a copy
    runs: `tuner.study.saving.copy_running`.)"""
    try:
        with open(path, "rb") as file:
            data = file.read()
        after = os.stat(path)
    except FileNotFoundError:  # replaced or removed since it was listed
        return None
    if (after.st_size, after.st_mtime_ns) != stamp or len(data) != stamp[0]:
        return None
    return data


def upload_changed(
    local_path: str,
    fs: Any,
    fs_path: str,
    exclude: list[str] | None = None,
    seen: dict[str, tuple[int, int]] | None = None,
    record: tuple[str, str] | None = None,
) -> None:
    """Copy to (`fs`, `fs_path`) the files of `local_path` that changed since `seen` (updated
    with what was copied), each only as a whole (`read_settled`). A file or an `exclude`
    list: Ray's own copy."""
    from ray.train._internal.storage import _upload_to_fs_path

    if record is not None:  # the syncer's command names its record, never holds it
        seen = COPIED.setdefault(record, {})
    if exclude or seen is None or not os.path.isdir(local_path):
        _upload_to_fs_path(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        return
    made: set[str] = set()
    for relative, stamp in changed_files(local_path, seen).items():
        data = read_settled(os.path.join(local_path, *relative.split("/")), stamp)
        if data is None:
            continue  # next time
        target = posixpath.join(fs_path, relative)
        parent = posixpath.dirname(target)
        if parent not in made:
            fs.create_dir(parent, recursive=True)
            made.add(parent)
        with fs.open_output_stream(target) as out:  # an object store's upload: whole or none
            out.write(data)
        seen[relative] = stamp


def _incremental(original: Any) -> Any:
    def _sync_up_command(self: Any, local_path: str, uri: str, exclude: list | None = None):
        function, kwargs = original(self, local_path, uri, exclude)
        if exclude:
            return function, kwargs
        return upload_changed, {**kwargs, "record": (local_path, uri)}

    _sync_up_command.incremental = True  # type: ignore[attr-defined]
    return _sync_up_command


def install() -> None:
    """Make Tune's syncer copy changed files only (idempotent; call in the driver before the
    experiment starts: its first copy takes every file)."""
    from ray.train._internal.storage import _FilesystemSyncer as syncer

    COPIED.clear()
    current = syncer._sync_up_command
    if not getattr(current, "incremental", False):
        syncer._sync_up_command = _incremental(current)
