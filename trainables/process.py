"""When this process started: what a trial in a new process is charged from (its resources are
held from the process's start: Python, Ray and torch loading count; `tuner.analysis.cost`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_LOADED = time.time()  # this module's import: a process's start where /proc does not say


def process_started() -> float:
    """When this process started, seconds since the epoch (Linux's /proc; elsewhere when this
    module was imported, after Python, Ray and torch)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return _LOADED
