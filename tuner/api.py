"""The Python API: `tuner.run_study(workload, **options)`, the CLI's study from a notebook or a
script, with the same options and the same checks.

    from tuner import run_study
    result = run_study("examples/regression.py:workload", budget="steps:200", seeds=2)
    result.frontier          # the degradation map as a pandas DataFrame
    print("\\n".join(result.verdict))

`workload` is anything the CLI takes (a built-in name, an entry-point name, `module:attr`,
`file.py:attr`) or a `Workload` object. An object that some module holds as an attribute is
run by that reference (its module shipped to the workers when not installed); one defined in a
notebook or a script's `__main__` travels to the workers by value (cloudpickle), and a later
`run_study(..., resume=True)` needs the same object again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.workload import Workload
from trainables.workloads import by_value
from tuner.errors import InputError
from tuner.report.names import FRONTIER_JSON


@dataclass(frozen=True)
class StudyResult:
    """What a finished study left: its directory, the degradation map and the verdict."""

    study_dir: Path
    exit_code: int
    frontier: pd.DataFrame = field(repr=False)
    verdict: list[str]
    report: dict[str, Any] = field(repr=False)


def reference(workload: str | Workload) -> str:
    """The CLI's reference for `workload`: a module attribute that is this object, else the
    object itself by value."""
    if isinstance(workload, str):
        return workload
    if not isinstance(workload, Workload):
        raise InputError(
            f"run_study takes a tuner.Workload or a reference string, not {type(workload).__name__}"
        )
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None or name.startswith(("_", "tuner", "trainables")):
            continue
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if value is workload and getattr(module, "__file__", None):
                return f"{name}:{attr}"
    return by_value(workload)


def _argv(ref: str, options: dict[str, Any]) -> list[str]:
    """The CLI arguments of `options` (names as the CLI's, with underscores)."""
    from tuner.options import build_parser

    actions = {a.dest: a for a in build_parser()._actions if a.option_strings}
    argv = [ref]
    for name, value in options.items():
        if name not in actions or name in ("list", "help"):
            raise TypeError(f"run_study() got an unknown option {name!r}")
        flag = actions[name].option_strings[-1]
        if isinstance(actions[name], argparse._StoreTrueAction):
            if value:
                argv.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [flag, str(value)]
    return argv


def run_study(workload: str | Workload, **options: Any) -> StudyResult:
    """Run one study as `python -m tuner.search` would, in this process; options are the CLI's
    (`batch_sizes=(16, 64)`, `budget="steps:300"`, `seeds=2`, `no_checks=True`, ...).

    Bad input raises `tuner.errors.InputError` (a `ValueError`) before anything starts.
    """
    from tuner.cluster.connect import disconnect
    from tuner.resolve import run_checked
    from tuner.search import parse_and_check
    from tuner.study import session

    spec, run = parse_and_check(_argv(reference(workload), options))
    if run.pop("dry_run"):
        from tuner.search import dry_run

        print("\n".join(dry_run(spec, run.pop("slots"))))
        return load_result(spec.study_dir, 0)
    run_options = session.RunOptions(**run)
    spec = run_checked(lambda: session.prepare(spec, run_options))
    try:
        code = session.run(spec, run_options)
    finally:
        disconnect()  # the next study starts its own Ray
    return load_result(spec.study_dir, code)


def load_result(study_dir: str | Path, exit_code: int = 0) -> StudyResult:
    """A finished study's result from its directory (its report's frontier.json)."""
    study_dir = Path(study_dir)
    path = study_dir / FRONTIER_JSON
    report = json.loads(path.read_text()) if path.exists() else {}
    return StudyResult(
        study_dir=study_dir,
        exit_code=exit_code,
        frontier=pd.DataFrame(report.get("frontier", [])),
        verdict=list(report.get("verdict", [])),
        report=report,
    )
