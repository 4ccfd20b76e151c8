"""Issue 35: a study in an MLflow tracking server (`--mlflow`) and its per-cell Optuna studies in
a shared database (`--optuna-storage`), against the real things started here: `mlflow server`
(SQLite backend) read back through MLflow's client, and PostgreSQL (where it can run; else the
tests that need it skip and say why) read back through Optuna's API."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.servers import start_mlflow, start_postgres, stop

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    server, uri = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop(server)


@pytest.fixture(scope="module")
def postgres() -> str:
    started = start_postgres()
    if isinstance(started, str):
        pytest.skip(started)
    stop_postgres, url = started
    yield url
    stop_postgres()


def refused(argv: list[str], capsys) -> str:
    from tuner.search import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def study_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["simple_cnn", "--dataset", "digits", "--storage", str(tmp_path / "s"), "--name", "n",
            *extra]  # fmt: skip


def test_an_mlflow_server_that_does_not_answer_or_a_malformed_uri_is_one_line(tmp_path, capsys):
    from tests.servers import free_port

    port = free_port()
    err = refused(study_argv(tmp_path, "--mlflow", f"http://127.0.0.1:{port}"), capsys)
    assert f"--mlflow http://127.0.0.1:{port}: no MLflow server answers there" in err
    err = refused(study_argv(tmp_path, "--mlflow", "ftp://tracking.example"), capsys)
    assert "use http(s)://HOST:PORT of an MLflow tracking server" in err
    err = refused(study_argv(tmp_path, "--mlflow", "http://:80"), capsys)
    assert "no host" in err
    assert not (tmp_path / "s").exists()  # nothing written


def test_a_bad_optuna_storage_is_one_line(tmp_path, capsys):
    err = refused(study_argv(tmp_path, "--optuna-storage", "not a url"), capsys)
    assert "not a database URL" in err
    err = refused(study_argv(tmp_path, "--optuna-storage", "nosuchdb://h/x"), capsys)
    assert "not a database URL" in err or "no database driver" in err
    # a database that already holds a study of this name (a teammate's)
    shared = f"sqlite:///{tmp_path / 'team.db'}"
    optuna.create_study(study_name="n/b8", storage=shared)
    err = refused(study_argv(tmp_path, "--optuna-storage", shared), capsys)
    assert "already holds 'n/b8'" in err and "choose another --name" in err
    err = refused(study_argv(tmp_path, "--method", "branch", "--optuna-storage", shared), capsys)
    assert "a branch study keeps no per-cell Optuna studies" in err
    assert not (tmp_path / "s").exists()


def test_a_database_that_refuses_the_login_is_one_line_without_the_password(
    postgres, tmp_path, capsys
):
    wrong = postgres.replace(":study-pass@", ":wrong-pass@")
    err = refused(study_argv(tmp_path, "--optuna-storage", wrong), capsys)
    assert "cannot connect" in err and "password authentication failed" in err
    assert "wrong-pass" not in err and "***" in err
    assert not (tmp_path / "s").exists()


@dataclass
class FakeSpec:  # the fields MlflowStudy reads of a spec (a StudySpec has them all)
    name: str
    batch_sizes: tuple = (8, 64)


def test_a_resumed_study_continues_its_parent_run_and_its_trials_runs(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from tuner.tracking.mlflow_study import MlflowStudy

    first = MlflowStudy(mlflow_uri, tmp_path)
    first.start(FakeSpec("resumed"), resume=False)
    config = {"cell": "b8", "phase": "search", "seed": 0, "base_lr": 0.1}
    first.trial_started("t1", config)
    first.trial_result("t1", {"optimizer_steps": 10, "examples_seen": 80, "val_acc": 0.5})
    first.finish(interrupted=True)  # Ctrl+C: the parent is KILLED, a resume goes on with it
    client = MlflowClient(mlflow_uri)
    assert client.get_run(first.parent).info.status == "KILLED"

    again = MlflowStudy(mlflow_uri, tmp_path)
    again.start(FakeSpec("resumed"), resume=True)
    assert again.parent == first.parent and again.runs == first.runs
    again.trial_started("t1", config)  # the resumed trial: the same run, not a new one
    again.trial_result("t1", {"optimizer_steps": 20, "examples_seen": 160, "val_acc": 0.7})
    again.trial_ended("t1", "completed")
    again.finish()
    children = client.search_runs(
        [client.get_run(first.parent).info.experiment_id],
        f"tags.mlflow.parentRunId = '{first.parent}'",
    )
    assert [c.info.run_id for c in children] == [first.runs["t1"]]
    history = client.get_metric_history(first.runs["t1"], "val_acc")
    assert [(m.step, m.value) for m in history] == [(10, 0.5), (20, 0.7)]
    assert [m.step for m in client.get_metric_history(first.runs["t1"], "by_examples/val_acc")] == [
        80,
        160,
    ]
    assert client.get_run(first.parent).info.status == "FINISHED"
    assert not again.broken


def test_a_server_that_goes_away_mid_study_is_said_once_and_the_study_goes_on(tmp_path, capsys):
    from tuner.tracking.mlflow_study import MlflowStudy

    server, uri = start_mlflow(tmp_path)
    try:
        study = MlflowStudy(uri, tmp_path)
        study.start(FakeSpec("gone"), resume=False)
        study.trial_started("t1", {"cell": "b8", "phase": "search", "seed": 0})
    finally:
        stop(server)
    capsys.readouterr()
    for step in (10, 20, 30):  # nothing raises; one warning; nothing more is tried
        study.trial_result("t1", {"optimizer_steps": step, "val_acc": 0.5})
    study.trial_ended("t1", "completed")
    study.finish()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "the study goes on" in warnings[0], err
    assert study.broken


def test_the_mirror_copies_each_trial_as_it_changes_with_the_same_number(tmp_path, capsys):
    from tuner.tracking.optuna_mirror import OptunaMirror

    local = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'local.db'}")
    mirror = OptunaMirror(f"sqlite:///{tmp_path / 'team.db'}", lambda: local)
    study = optuna.create_study(study_name="m/b8", storage=local, direction="maximize")
    first, second = study.ask(), study.ask()
    first.suggest_float("base_lr", 1e-3, 1.0, log=True)
    second.suggest_float("base_lr", 1e-3, 1.0, log=True)
    mirror.sync("m/b8", 1)  # the second trial, and the first before it
    remote = optuna.load_study(study_name="m/b8", storage=mirror.remote)
    assert [t.number for t in remote.trials] == [0, 1]
    assert all(t.state.name == "RUNNING" for t in remote.trials)
    second.report(0.4, 10)
    second.set_user_attr("outcome", "completed")
    study.tell(second, 0.8)
    mirror.sync("m/b8", 1)
    study.tell(first, state=optuna.trial.TrialState.PRUNED)
    mirror.sync_all()
    mine, theirs = study.trials, remote.trials
    assert [(t.number, t.state, t.values, t.params, t.user_attrs, t.intermediate_values)
            for t in theirs] == [(t.number, t.state, t.values, t.params, t.user_attrs,
                                  t.intermediate_values) for t in mine]  # fmt: skip
    # a database that goes away: said once, the study goes on
    mirror._remote = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'gone.db'}")
    (tmp_path / "gone.db").unlink()
    (tmp_path / "gone.db").mkdir()  # no longer a database
    mirror._ids.clear()
    capsys.readouterr()
    mirror.sync("m/b8", 0)
    mirror.sync("m/b8", 1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "nothing more is mirrored" in warnings[0]


@pytest.mark.ray
def test_a_study_in_mlflow_and_a_shared_optuna_database(mlflow_uri, tmp_path, request):
    """One parent run with the study's options, spec, report and verdict; a nested run per
    trial with its outcome and its evaluations by optimizer step and examples seen; seeds of one
    configuration tagged alike; every Optuna trial in the shared database as in optuna.db."""
    from mlflow.tracking import MlflowClient

    started = start_postgres()
    database = started[1] if not isinstance(started, str) else f"sqlite:///{tmp_path / 'team.db'}"
    try:
        proc = run_cli(
            "tuner.search", "simple_cnn", "--dataset", "digits", "--batch-sizes", "8,64",
            "--rules", "linear", "--trials", "4", "--seeds", "2", "--budget", "steps:40",
            "--no-checks", "--eval-every", "10", "--name", "tracked",
            "--storage", str(tmp_path / "studies"), "--mlflow", mlflow_uri,
            "--optuna-storage", database,
        )  # fmt: skip
        study = tmp_path / "studies" / "tracked"
        assert "warning:" not in proc.stderr, proc.stderr[-3000:]
        assert "View run" not in proc.stdout  # MLflow's own lines stay out of the output
        mirrored = {}
        remote = optuna.storages.RDBStorage(database)
        local = optuna.storages.RDBStorage(f"sqlite:///{study / 'optuna.db'}")
        for name in optuna.get_all_study_names(local):
            keys = ("number", "state", "values", "params", "user_attrs", "intermediate_values")
            rows = [
                [tuple(getattr(t, k) for k in keys) for t in
                 optuna.load_study(study_name=name, storage=storage).trials]
                for storage in (local, remote)
            ]  # fmt: skip
            assert rows[0] == rows[1], name
            mirrored[name] = len(rows[0])
        remote.engine.dispose()
        assert sum(mirrored.values()) > 0
    finally:
        if not isinstance(started, str):
            started[0]()
    if isinstance(started, str):
        request.node.add_report_section("call", "postgres", f"sqlite instead: {started}")

    client = MlflowClient(mlflow_uri)
    parent_id = json.loads((study / "tracking.json").read_text())["mlflow"]["parent_run_id"]
    assert "study-pass" not in (study / "tracking.json").read_text()  # no password kept
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert parent.data.params["batch_sizes"] == "8,64" and parent.data.params["seeds"] == "2"
    files = {a.path for a in client.list_artifacts(parent_id)}
    assert {
        "study.json",
        "report.md",
        "frontier.json",
        "trials.csv",
        "verdict.txt",
        "figures",
    } <= files
    assert client.list_artifacts(parent_id, "figures")
    report = json.loads((study / "frontier.json").read_text())
    verdict = client.download_artifacts(parent_id, "verdict.txt", str(tmp_path))
    assert Path(verdict).read_text() == "\n".join(report["verdict"]) + "\n"
    assert parent.data.metrics["holds_up_to"] == report["holds_up_to"]
    assert parent.data.metrics["cost/trials"] == report["cost"]["trials"]

    table = pd.read_csv(study / "trials.csv")
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
    )
    by_trial = {c.data.tags["trial_id"]: c for c in children}
    assert set(by_trial) == set(table["trial_id"])
    for trial_id, rows in table.groupby("trial_id"):
        run = by_trial[trial_id]
        first = rows.iloc[0]
        assert run.data.tags["outcome"] == first["outcome"], trial_id
        assert run.data.tags["phase"] == first["phase"] and run.data.tags["cell"] == first["cell"]
        assert run.data.params["seed"] == str(first["seed"])
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == rows["optimizer_steps"].tolist(), trial_id
        assert [m.value for m in history] == pytest.approx(rows["val_acc"].tolist())
        by_examples = client.get_metric_history(run.info.run_id, "by_examples/val_acc")
        assert [m.step for m in by_examples] == rows["examples_seen"].tolist()
        status = {"completed": "FINISHED", "stopped": "KILLED"}.get(first["outcome"], "FAILED")
        assert run.info.status == status
    # the seeds of each cell's confirmed configuration carry one tag, its search trial's
    finals = table.drop_duplicates("trial_id")
    for cell, group in finals.groupby("cell"):
        confirm = group[group["phase"] == "confirm"]
        tags = Counter(by_trial[t].data.tags["config"] for t in confirm["trial_id"])
        assert len(tags) == 1, (cell, tags)
        (tag,) = tags
        search = [t for t in group[group["phase"] == "search"]["trial_id"]
                  if by_trial[t].data.tags["config"] == tag]  # fmt: skip
        assert len(search) == 1, cell  # the configuration the seeds confirm
    assert not math.isnan(float(parent.data.metrics["cost/device_hours"]))


@pytest.mark.ray
def test_a_branch_study_in_mlflow(mlflow_uri, tmp_path):
    """A `--method branch` study: its parent run ends with branch.md and branch.json, and each
    of its jobs (lr probes, the base run, the rungs) is a nested run tagged with its kind."""
    from mlflow.tracking import MlflowClient

    from tuner.study.searcher import tune_trials

    storage = tmp_path / "studies"
    run_cli("tuner.search", "simple_cnn", "--dataset", "digits", "--method", "branch", "--smoke",
            "--storage", str(storage), "--name", "br", "--mlflow", mlflow_uri)  # fmt: skip
    study = storage / "br"
    client = MlflowClient(mlflow_uri)
    parent_id = json.loads((study / "tracking.json").read_text())["mlflow"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["method"] == "branch"
    assert {"branch.md", "branch.json", "study.json"} <= {
        a.path for a in client.list_artifacts(parent_id)
    }
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
    )
    jobs = tune_trials(study)
    assert {c.data.tags["trial_id"] for c in children} == set(jobs)
    for child in children:
        job = jobs[child.data.tags["trial_id"]]
        assert child.data.tags["phase"] == job.config["kind"]
        assert child.data.tags["outcome"] in ("completed", "target", "stopped", "diverged")
        if job.config["kind"] == "rung":  # each candidate's and seed's end
            assert any(k.startswith("rung/") for k in child.data.metrics), child.data.metrics
        else:  # its evaluations
            assert client.get_metric_history(child.info.run_id, "val_acc")


def test_a_resume_whose_mlflow_server_is_gone_says_where_the_study_logs(tmp_path, capsys):
    """--resume uses the study's own tracking (tracking.json); where its server no longer
    answers, one line says so and how to go on, before anything starts."""
    from tests.servers import free_port
    from tuner.options import build_parser
    from tuner.resolve import build_spec
    from tuner.spec import save_spec
    from tuner.tracking.checks import Tracking, save_tracking

    argv = ["simple_cnn", "--dataset", "digits", "--storage", str(tmp_path), "--name", "r"]
    spec = build_spec(build_parser().parse_args(argv), gpus_available=False)
    save_spec(spec)
    gone = f"http://127.0.0.1:{free_port()}"
    save_tracking(spec.study_dir, Tracking(mlflow=gone), parent_run_id="abc")
    before = sorted(p.name for p in spec.study_dir.iterdir())
    err = refused(["--resume", "--storage", str(tmp_path), "--name", "r"], capsys)
    assert f"--mlflow {gone}: no MLflow server answers there" in err
    assert "the study logs to it (tracking.json)" in err and "give --mlflow" in err
    assert sorted(p.name for p in spec.study_dir.iterdir()) == before
