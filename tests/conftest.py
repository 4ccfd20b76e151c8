"""Shared fixtures. `small_study` runs one real study (local Ray, subprocess CLI) per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The one real study the end-to-end tests share: 2 batch sizes x 4 trials, 3 epochs on digits.
SMALL_STUDY_ARGS = [
    "simple_cnn",
    "--dataset",
    "digits",
    "--batch-sizes",
    "8,64",
    "--trials",
    "8",
    "--epochs",
    "3",
    "--reduction-factor",
    "2",
    "--seed",
    "0",
    "--name",
    "e2e",
]


def run_cli(
    module: str, *args: str, timeout: float = 900, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repo root, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Path:
    """A finished real study directory (runs ~2 minutes on 2 CPUs)."""
    storage = tmp_path_factory.mktemp("studies")
    proc = run_cli("tuner.search", *SMALL_STUDY_ARGS, "--storage", str(storage))
    study_dir = storage / "e2e"
    (study_dir / "search.log").write_text(proc.stdout + proc.stderr)
    return study_dir
