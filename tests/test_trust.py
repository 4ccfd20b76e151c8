"""Whose code a study runs (issue 34; tuner.trust): a study this user made here is trusted, one
copied from elsewhere or with its workload reference changed is not, and the key is one."""

from __future__ import annotations

import json
import multiprocessing
import stat

import pytest

from tuner import trust
from tuner.options import build_parser
from tuner.resolve import build_spec
from tuner.spec import save_spec


@pytest.fixture
def own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return trust.key_path()


def saved_study(tmp_path) -> object:
    args = build_parser().parse_args(
        ["simple_cnn", "--dataset", "digits", "--storage", str(tmp_path), "--name", "s"]
    )
    return save_spec(build_spec(args, gpus_available=False))


def test_a_study_made_here_is_trusted_and_one_changed_or_from_elsewhere_is_not(
    tmp_path, own_key, monkeypatch
):
    path = saved_study(tmp_path)
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    trust.check_trusted(path, "explain", trust_code=False)  # made here: no error
    saved = json.loads(path.read_text())
    saved["spec"]["workload"] = "my_pkg.evil:workload"  # its code changed after it was marked
    path.write_text(json.dumps(saved))
    with pytest.raises(trust.Untrusted) as error:
        trust.check_trusted(path, "explain", trust_code=False)
    assert "explain would run its code (workload my_pkg.evil:workload" in str(error.value)
    assert "\n" not in str(error.value) and "--trust-code" in str(error.value)
    trust.check_trusted(path, "explain", trust_code=True)  # the user says so
    # another user (another key) sees the untouched study as not theirs
    other = saved_study(tmp_path / "again")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(trust.Untrusted):
        trust.check_trusted(other, "--resume", trust_code=False)
    del saved["owner_mark"]  # an older study: no mark at all
    path.write_text(json.dumps(saved))
    with pytest.raises(trust.Untrusted):
        trust.check_trusted(path, "--resume", trust_code=False)


def _key_of(config: str, out) -> None:
    import os

    os.environ["XDG_CONFIG_HOME"] = config
    out.put(trust._key().hex())


def test_processes_that_start_at_once_agree_on_one_key(tmp_path):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_key_of, args=(str(tmp_path / "config"), out)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    keys = {out.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join()
    assert len(keys) == 1 and len(next(iter(keys))) == 2 * trust.KEY_BYTES
