"""A user's own workload in real local-Ray studies (issue 19): a module in a directory outside
the repository, not installed, with its own loss and metric, through ASHA, confirmation seeds,
the checks, the report, TensorBoard and a resume from another directory; and a 2-worker study
of a classifier through `tuner.run_study`, whose module is on the test process's path only, so
that only Ray's runtime environment (`py_modules`) brings it to the workers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_own_workload import CLASSIFIER, REGRESSION
from trainables.metric_boot import REPLICATES
from trainables.per_example import decode
from tuner.store.table import collect_trials

pytestmark = pytest.mark.ray

ARGS = ["--batch-sizes", "16,64", "--trials", "4", "--seeds", "2", "--eval-every", "20"]
ARGS += ["--rules", "sqrt", "--seed", "0", "--name", "own"]


def search(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.search", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def own_study(tmp_path_factory):
    code = tmp_path_factory.mktemp("user_code")
    (code / "own_study_mod.py").write_text(textwrap.dedent(REGRESSION))
    # From the module's directory, as a user runs it (a local Ray's workers see the driver's
    # directory too; the 2-worker study below needs the shipping, and fails without it).
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    storage = tmp_path_factory.mktemp("studies")
    proc = search("own_study_mod:workload", *ARGS, "--storage", str(storage), cwd=code)
    study = storage / "own"
    assert proc.returncode == 0, proc.stderr[-4000:]
    return study, proc, elsewhere


def test_the_study_judges_by_the_workloads_own_metric(own_study):
    study, _, _ = own_study
    spec = json.loads((study / "study.json").read_text())["spec"]
    assert spec["workload_name"] == "tiny_regression" and spec["metric"] == "mae"
    assert spec["workload_source"].endswith("own_study_mod.py")
    table = collect_trials(study)
    finished = table[table["val_metric"].notna()]
    assert set(finished["batch_size"]) == {16, 64}
    assert finished["val_acc"].isna().all()  # float targets: no accuracy
    summary = table.groupby("trial_id")["val_metric"].last()
    assert (summary < 2.0).any()  # it learned (MAE of predicting 0: about 2.4)


def test_the_report_speaks_of_the_metric(own_study):
    study, proc, _ = own_study
    frontier = json.loads((study / "frontier.json").read_text())
    assert frontier["metric"] == {"name": "mae", "key": "val_metric", "mode": "min"}
    assert frontier["tolerance"] == pytest.approx(0.05)
    rows = pd.DataFrame(frontier["frontier"]).set_index("batch_size")
    assert rows.loc[16, "accuracy"] > 0 and rows.loc[64, "accuracy"] > 0  # MAE values
    assert rows.loc[64, "drop"] == pytest.approx(
        rows.loc[64, "accuracy"] - rows.loc[16, "accuracy"]
    )
    # bounds from the seeds and the MAE's bootstrap replicates, paired (issue 32)
    assert rows.loc[64, "paired"] and rows.loc[64, "drop_low"] < rows.loc[64, "drop_high"]
    confirm = collect_trials(study).query("phase == 'confirm'")
    boot = confirm.sort_values("optimizer_steps").groupby("trial_id")["val_metric_boot"].last()
    assert len(boot) == 4 and {decode(b).size for b in boot} == {REPLICATES}
    report = (study / "report.md").read_text()
    assert "tiny_regression" in report and "mae" in report and "nats" not in report
    assert frontier["verdict"], "no verdict"
    acc = EventAccumulator(str(study / "summary"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "frontier/val_mae" in tags and "frontier/accuracy" not in tags


def test_resume_from_another_directory_finds_the_module_again(own_study):
    study, _, elsewhere = own_study
    before = len(collect_trials(study)["trial_id"].unique())
    proc = search("--resume", "--name", "own", "--storage", str(study.parent), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(collect_trials(study)["trial_id"].unique()) == before  # nothing left to run


def test_run_study_with_two_workers_per_trial(tmp_path, monkeypatch, no_ray_in_this_process):
    """A Workload object from a module the test imports (not installed): run_study finds it as
    module:attr and ships the module; every trial has two Ray Train workers."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "own_blobs_mod.py").write_text(textwrap.dedent(CLASSIFIER))
    monkeypatch.syspath_prepend(str(code))
    import own_blobs_mod

    from tuner import run_study

    result = run_study(
        own_blobs_mod.workload,
        workers_per_trial=2,
        trials=2,
        seeds=0,  # no confirmation runs: each Ray Train trial starts a worker group (issue 31)
        no_checks=True,
        budget="steps:20",
        eval_every=10,
        storage=str(tmp_path / "studies"),
        name="blobs2",
    )
    assert result.exit_code == 0
    spec = json.loads((result.study_dir / "study.json").read_text())["spec"]
    assert spec["workload"] == "own_blobs_mod:workload"
    assert spec["workload_source"] == str(code / "own_blobs_mod.py")
    assert set(result.frontier["batch_size"]) == {16, 64}
    assert result.verdict and any("batch" in line for line in result.verdict)
    table = collect_trials(result.study_dir)
    assert (table.dropna(subset=["val_acc"])["workers"] == 2).all()
    assert table["val_acc"].max() > 0.5  # three separable blobs: well above chance (1/3)


def test_explain_measures_the_workloads_own_loss(own_study):
    """Sharpness and landscapes of its own (Huber) loss, the table in its own metric."""
    study, _, elsewhere = own_study
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.explain", str(study), "--grid", "3"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    why = (study / "why.md").read_text()
    assert "| batch | validation mae |" in why and "nan" not in why


def test_run_study_in_a_process_where_ray_runs_refuses_in_one_line(local_ray, tmp_path):
    """A notebook that called ray.init() itself: its workers would lack the study's settings
    and shipped code, so run_study refuses before anything is written, and leaves that Ray be."""
    import ray

    from tuner import run_study
    from tuner.errors import InputError

    with pytest.raises(InputError, match="already initialised in this process") as caught:
        run_study("simple_cnn", dataset="digits", storage=str(tmp_path / "s"), name="n")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "s").exists() and ray.is_initialized()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_study_starts_the_dashboard_only_for_ray_train_trials(
    no_ray_in_this_process, tmp_path, workers
):
    """Ray Train trials need the State API (the dashboard's; docs/platform-notes: without it a
    stopped trial's CPUs are never released); one-worker trials do not, and a local Ray
    without it costs about 9 CPU-s less per study."""
    import ray

    from tuner.cluster.connect import disconnect
    from tuner.options import build_parser
    from tuner.resolve import build_spec
    from tuner.study.session import RunOptions, prepare

    argv = ["simple_cnn", "--dataset", "digits", "--storage", str(tmp_path), "--name", "d"]
    spec = build_spec(
        build_parser().parse_args([*argv, "--workers-per-trial", str(workers)]), False
    )
    try:
        prepare(spec, RunOptions(address=None, resume=False))
        url = ray._private.worker.global_worker.node.address_info.get("webui_url")
        assert bool(url) == (workers > 1), url
    finally:
        disconnect()


@pytest.mark.parametrize("fails", [1, 2])
def test_a_local_ray_that_times_out_starting_is_started_again_once(
    no_ray_in_this_process, monkeypatch, fails
):
    """Ray gives a new local node 30 s to register; on a machine whose CPUs are all busy it can
    take longer (seen once in CI). The study starts its local Ray again, once; a second time
    out is one clear error, and no Ray is left running."""
    import ray

    from tuner.cluster import connect as connection
    from tuner.errors import InputError

    real_init, calls = ray.init, []

    def slow_node(**kwargs):
        calls.append(kwargs)
        real_init(**kwargs)  # a real start, whose processes the retry must end
        if len(calls) <= fails:
            raise Exception(f"{connection.STARTUP_TIMEOUT}. This could happen because ...")

    monkeypatch.setattr(ray, "init", slow_node)
    try:
        if fails == 1:
            connection.connect(None, dashboard=False)
            assert ray.is_initialized() and len(calls) == 2
        else:
            with pytest.raises(InputError, match="cannot start a local Ray: The current node"):
                connection.connect(None, dashboard=False)
            assert not ray.is_initialized() and len(calls) == 2
    finally:
        connection.disconnect()
