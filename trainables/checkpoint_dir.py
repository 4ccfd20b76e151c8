"""A trial's checkpoints in a directory of any file system pyarrow reaches (a local path, or an
object-store URI such as `s3://bucket/studies/name/train_runs/trial-ID`).

The one-worker trial adapter (`trainables.tune_trial`) keeps its checkpoints here, in the
layout Ray Train uses for multi-worker trials (`checkpoint_*/state.pt`, the latest only), so
resuming, `tuner.explain` and the object-store rules see one kind of trial. Tune's own trial
checkpoints are not used: with `num_to_keep` set, Tune snapshots the whole experiment state
after every checkpoint (a few times a second in a study of short trials, racing the searcher's
own state files). Plain pyarrow and torch: no Ray.

A checkpoint holds data only (tensors, numbers, strings, lists and dicts of them: the model's
and optimizer's state, the step, the evaluations so far) and loads with `weights_only=True`,
which unpickles nothing else: a checkpoint someone else wrote runs no code when loaded.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

STATE_FILE = "state.pt"  # Ray Train runs' checkpoints use it too (trainables.ray_worker)
PREFIX = "checkpoint_"


class CheckpointDir:
    """Save a trial's training state and find its latest one again."""

    def __init__(self, uri: str):
        self.fs, self.path = pafs.FileSystem.from_uri(uri)
        self.path = self.path.rstrip("/")

    def _checkpoints(self) -> list[str]:
        """Checkpoint directories with a complete state file, oldest first."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=True)
        names = {
            info.path[len(self.path) + 1 :].split("/")[0]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name == STATE_FILE
        }
        return sorted(n for n in names if n.startswith(PREFIX))

    def latest(self, device: torch.device) -> dict[str, Any] | None:
        """The newest saved state, None before the first checkpoint."""
        found = self._checkpoints()
        if not found:
            return None
        with self.fs.open_input_file(f"{self.path}/{found[-1]}/{STATE_FILE}") as source:
            data = source.read()
        return load_state(io.BytesIO(data), device)

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` as the newest checkpoint, then drop the older ones. The file is written
        under a temporary name and moved into place, so a kill mid-write leaves the previous
        checkpoint as the latest complete one."""
        name = f"{PREFIX}{state['step']:010d}"
        buffer = io.BytesIO()
        torch.save(plain_state(state), buffer)
        final = f"{self.path}/{name}/{STATE_FILE}"
        self.fs.create_dir(f"{self.path}/{name}", recursive=True)
        with self.fs.open_output_stream(final + ".part") as sink:
            sink.write(buffer.getvalue())
        self.fs.move(final + ".part", final)
        for old in self._checkpoints():
            if old != name:
                self.fs.delete_dir(f"{self.path}/{old}")


def plain_state(value: Any) -> Any:
    """`value` with numpy scalars and arrays made plain numbers and tensors, so that it loads
    with `weights_only=True` (a metric of a user's own may hand back numpy values)."""
    if isinstance(value, dict):
        return {key: plain_state(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_state(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def load_state(source: Any, device: torch.device | str) -> dict[str, Any]:
    """A checkpoint's state, loading data only (`weights_only=True`)."""
    return torch.load(source, map_location=device, weights_only=True)
