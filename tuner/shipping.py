"""A user's workload module on every Ray worker, without installing it there.

A workload named `module:attr` (or `file.py:attr`) whose module is not installed (not under a
site-packages directory) travels to the workers through Ray's runtime environment
(`py_modules`): the module's top-level package directory, or its file when it is a lone
module. Ray uploads it once per study to the cluster's object store and every worker process
(local or on other nodes) finds it on its import path, under the same name. The study saves
what it shipped (`StudySpec.workload_source`), so `--resume` ships it again, from any
directory. An installed module (`pip install -e .` on every node, or a package registering an
entry point) ships nothing. Plain Python: no Ray here.
"""

from __future__ import annotations

import importlib.util
import site
import sys
import sysconfig
from pathlib import Path

from trainables.workloads import BUILTIN_NAMES, BY_VALUE, split_reference

OURS = {"tuner", "trainables", "search_spaces"}  # this package: installed with the study


def canonical_ref(ref: str) -> str:
    """The reference as the study saves it: a file made absolute (resumable from anywhere)."""
    if ref in BUILTIN_NAMES or ref.startswith(BY_VALUE) or ":" not in ref:
        return ref
    module, attr = ref.rsplit(":", 1)
    if module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return ref


def _installed_roots() -> list[Path]:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return [Path(r).resolve() for r in roots if r]


def is_installed(path: Path) -> bool:
    path = path.resolve()
    return any(path.is_relative_to(root) for root in _installed_roots())


def source_to_ship(ref: str) -> str:
    """The file or package directory to ship for `ref`, "" when the workers import it anyway
    (a built-in, an installed module, a workload carried by value)."""
    if ref in BUILTIN_NAMES or ref.startswith(BY_VALUE) or ":" not in ref:
        return ""
    module, _ = split_reference(ref)
    if module.endswith(".py"):
        return str(Path(module).expanduser().resolve())
    top = module.split(".")[0]
    if top in OURS:
        return ""
    loaded = sys.modules.get(top)
    origin = getattr(loaded, "__file__", None) if loaded else None
    if origin is None:
        found = importlib.util.find_spec(top)
        origin = found.origin if found else None
    if origin is None:  # a namespace package: its first directory
        paths = list(getattr(loaded, "__path__", []) or [])
        return str(Path(paths[0]).resolve()) if paths else ""
    path = Path(origin).resolve()
    source = path.parent if path.name == "__init__.py" else path
    return "" if is_installed(source) else str(source)


def make_importable(source: str) -> None:
    """On resume in another directory: put a shipped module's directory back on sys.path so the
    driver imports the same code it ships."""
    if not source:
        return
    parent = str(Path(source).parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
