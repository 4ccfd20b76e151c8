"""Whose code a study runs: a study directory is data until its user says otherwise.

Reading a study (the report, figures, TensorBoard, the cost) needs its data files only. What
runs a study's code (`tuner.explain` imports its workload and loads its checkpoints; `--resume`
unpickles Tune's experiment state and imports the workload) runs it only for a study made on
this machine by this user, or where the user says so (`--trust-code`).

"Made here by this user" is a mark in study.json: an HMAC of what names the study's code (its
workload reference and where its module came from) under a key only this user can read
(`~/.config/batch-scaling-study/owner.key`, mode 0600, made on first use). A study copied from
a bucket or a bug report carries someone else's mark (or none) and is refused in one line; one
whose workload reference was changed after it was marked no longer matches. Its other files
(checkpoints, Tune's state) are as trusted as the storage they came from: whoever can write
to a study's bucket can change what a resume of it runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

KEY_BYTES = 32
MARK = "owner_mark"  # the key in study.json


class Untrusted(Exception):
    """A study whose code would run and that this user did not make; the message is one line."""


def key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batch-scaling-study" / "owner.key"


def _key() -> bytes:
    """This user's key, made on first use. Made under a temporary name and linked into place,
    so two processes starting at once agree on one key and never read half of it."""
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    for _ in range(50):
        text = path.read_text().strip()
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text)
        time.sleep(0.01)
    raise Untrusted(f"{path}: not a key this tool made (remove it to make a new one)")


def _code_fields(spec: dict[str, Any]) -> bytes:
    """What in a saved spec decides which code runs."""
    named = {k: spec.get(k) for k in ("name", "workload", "workload_source")}
    return json.dumps(named, sort_keys=True).encode()


def owner_mark(spec: dict[str, Any]) -> str:
    """This user's mark for a study's spec (as saved in study.json)."""
    return hmac.new(_key(), _code_fields(spec), hashlib.sha256).hexdigest()


def made_here(saved: dict[str, Any]) -> bool:
    """Whether study.json's contents (`saved`) carry this user's mark for its spec."""
    mark = saved.get(MARK)
    spec = saved.get("spec")
    if not isinstance(mark, str) or not isinstance(spec, dict):
        return False
    return hmac.compare_digest(mark, owner_mark(spec))


def check_trusted(study_json: Path, what: str, trust_code: bool) -> None:
    """Raise `Untrusted` (one line) unless the study at `study_json` was made by this user on
    this machine or `trust_code`; `what` says what would run."""
    if trust_code:
        return
    saved = json.loads(study_json.read_text())
    if made_here(saved):
        return
    spec = saved.get("spec") or {}
    workload = str(spec.get("workload", "?"))
    shown = workload if len(workload) <= 80 else workload[:40] + "... (a pickled workload)"
    raise Untrusted(
        f"{study_json.parent} was not made by this user on this machine: {what} would run its "
        f"code (workload {shown}; its pickled state and checkpoints); if you trust it, add "
        f"--trust-code"
    )
