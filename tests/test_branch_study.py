"""`python -m tuner.search WORKLOAD --method branch --smoke --verify-schedule` on local Ray, as a
user runs it, read back through its files: the plan it ran, every rung's search and
confirmation runs, the base run's checkpoints, the schedule's run, the cost, TensorBoard."""

import json

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli

pytestmark = pytest.mark.ray


def branch_smoke(storage, name: str, *extra: str):
    args = ["simple_cnn", "--dataset", "digits", "--method", "branch", "--smoke", *extra]
    proc = run_cli("tuner.search", *args, "--storage", str(storage), "--name", name, timeout=600)
    return storage / name, proc.stderr


@pytest.fixture(scope="module")
def branch_study(tmp_path_factory):
    """The default: each checkpoint judged by half of what its k=1 gains over the window."""
    return branch_smoke(tmp_path_factory.mktemp("branch"), "b")


@pytest.fixture(scope="module")
def fixed_tolerance_study(tmp_path_factory):
    """A fixed tolerance (20 pt) every rung of this smoke study keeps, so its schedule grows
    the batch and --verify-schedule has a schedule to run. Two seeds per rung: on --smoke's
    one a rung has no interval and is never shown to hold (issue 32)."""
    storage = tmp_path_factory.mktemp("branch")
    return branch_smoke(storage, "f", "--tolerance", "20", "--verify-schedule", "--seeds", "2")


def test_a_branch_study_measures_every_checkpoint_up_its_ladder(branch_study):
    study, err = branch_study
    data = json.loads((study / "branch.json").read_text())
    assert not data["failure"]
    plan = data["plan"]
    assert plan["fractions"] == [0.25, 0.5] and plan["base_batch"] == 8
    assert data["base_lr_from"] == "short search" and len(data["probes"]) == 4
    assert data["base_lr"] in [p["base_lr"] for p in data["probes"]]
    # the base run kept a checkpoint at every branch point
    for step in plan["checkpoints"]:
        assert list((study / "branch_points" / f"step-{step:08d}").glob("checkpoint_*/state.pt"))
    runs = pd.read_csv(study / "branch_runs.csv")
    assert [p["checkpoint"] for p in data["points"]] == [0.25, 0.5]
    for point in data["points"]:
        batches = [r["batch"] for r in point["rungs"]]
        assert batches == [8, 16, 32][: len(batches)] and len(batches) >= 2
        assert point["low"] <= point["local_critical"] <= point["high"]
        mine = runs[runs["checkpoint"] == point["checkpoint"]]
        for r in point["rungs"]:
            rung = mine[mine["multiplier"] == r["multiplier"]]
            # every candidate once, then the winner with the fresh seed(s)
            assert len(rung[rung["phase"] == "search"]) == 3
            confirm = rung[rung["phase"] == "confirm"]
            assert len(confirm) == 1 and set(confirm["candidate"]) == {r["candidate"]}
    # every rung judged by half of what its k=1 gained, or not at all where it gained nothing
    for point in data["points"]:
        gain = point["window_gain"]
        assert (
            point["tolerance"] == pytest.approx(gain / 2)
            if gain > 0
            else point["tolerance"] != point["tolerance"]
        )
    # no constant batch size's critical batch from checkpoints that could not be judged
    judged = [p for p in data["points"] if p["tolerance"] == p["tolerance"]]
    assert (data["constant_batch"] is None) == (not judged)
    for line in ("at 25% of the base run: local critical batch", "report: "):
        assert line in err


def test_its_report_is_written_again_from_what_it_measured(branch_study):
    """`python -m tuner.report STUDY` on a branch study writes branch.md, its figure and its
    TensorBoard run again from branch.json (no grid report: no report.md, trials.csv), and
    refuses the grid report's options in one line."""
    study, _ = branch_study
    text = (study / "branch.md").read_text()
    for name in ("branch.md", "local_critical.png"):
        (study / name).unlink()
    proc = run_cli("tuner.report", str(study))
    assert (study / "branch.md").read_text() == text and (study / "local_critical.png").is_file()
    assert "local critical batch" in proc.stdout and proc.stdout.strip().endswith("branch.md")
    assert not (study / "report.md").exists() and not (study / "trials.csv").exists()
    events = list((study / "summary").glob("events.out.tfevents.*"))
    assert len(events) == 1  # the run's own, replaced
    accumulator = EventAccumulator(str(study / "summary"))
    accumulator.Reload()
    assert "branch/local_critical" in accumulator.Tags()["scalars"]
    refused = run_cli("tuner.report", str(study), "--target", "0.9", check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --target applies to")


def test_a_constant_batch_is_read_at_the_earliest_checkpoint(fixed_tolerance_study):
    study, err = fixed_tolerance_study
    data = json.loads((study / "branch.json").read_text())
    first = min(data["points"], key=lambda p: p["checkpoint"])
    assert data["constant_batch"] == {
        "checkpoint": first["checkpoint"],
        "batch": first["local_critical"],
        "low": first["low"],
        "high": first["high"],
        "censored": first["censored"],
        "caution": data["constant_batch"]["caution"],
    }
    assert f"for a constant batch size: about {first['local_critical']} (" in err
    report = (study / "branch.md").read_text()
    assert "For a constant batch size" in report
    # the smoke study branches from 25% first: past the start of training, and it says so
    assert "earliest checkpoint judged is at 25%" in data["constant_batch"]["caution"]
    assert "caution: the earliest checkpoint judged is at 25%" in err
    assert "Caution: the earliest checkpoint judged is at 25%" in report


def test_the_suggested_schedule_is_run_against_the_base_run(fixed_tolerance_study):
    study, _ = fixed_tolerance_study
    data = json.loads((study / "branch.json").read_text())
    assert {p["tolerance"] for p in data["points"]} == {0.2}
    schedule = [(s["from"], s["batch"]) for s in data["schedule"]]
    assert schedule[0] == (0.0, 8) and len(schedule) >= 2  # it grows the batch
    assert schedule == sorted(schedule) and schedule[1][0] in data["plan"]["fractions"]
    verify = data["verify"]
    assert verify["steps"] < data["base_run"]["steps"] == data["plan"]["base_steps"]
    assert verify["status"] in ("holds", "unresolved", "degraded", "no interval")  # one run a side
    assert verify["history"][-1]["examples"] == data["plan"]["base_steps"] * 8
    assert "Verified (--verify-schedule)" in (study / "branch.md").read_text()


def test_a_branch_study_says_what_it_cost_and_shows_in_tensorboard(fixed_tolerance_study):
    study, _ = fixed_tolerance_study
    data = json.loads((study / "branch.json").read_text())
    cost = data["cost"]
    rungs = sum(len(p["rungs"]) for p in data["points"])
    assert cost["trials"] == 4 + 1 + rungs + 1  # probes, base run, rungs, the schedule
    assert cost["device_hours"] > 0
    assert set(cost["by_phase"]) == {"lr search", "base run", "branches", "schedule"}
    assert "## What it cost" in (study / "branch.md").read_text()
    # where each job ran, as a grid trial reports it (issue 33): one node, its CPU
    assert data["placement"] == {
        "nodes_used": 1,
        "trials": cost["trials"],
        "trials_spanning_nodes": 0,
        "devices": ["cpu"],
    }
    assert (
        f"- Placement: one worker per trial; {cost['trials']} trials ran on 1 node(s) (cpu)."
        in (study / "branch.md").read_text()
    )
    events = EventAccumulator(str(study / "summary"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "branch/local_critical" in scalars
    steps = [e.step for e in events.Scalars("branch/local_critical")]
    assert steps == [25, 50]
    values = [e.value for e in events.Scalars("branch/local_critical")]
    assert values == [p["local_critical"] for p in data["points"]]
    assert "map/local_critical" in events.Tags()["images"]


def test_a_branch_study_runs_its_trials_on_two_workers_each(tmp_path):
    """With --workers-per-trial 2 every job is a Ray Train run of two data-parallel workers:
    the base run keeps its checkpoints (rank 0 writes them), each rung's two workers start from
    them, and the study reads and reports as with one worker. One branch point: every Ray Train
    job starts a worker group (~12 s on 2 CPUs), and the ladder at --smoke's second point adds
    nothing two workers change (issue 31)."""
    args = ["--workers-per-trial", "2", "--base-lr", "0.05", "--branch-at", "0.5"]
    study, err = branch_smoke(tmp_path, "w", *args)
    data = json.loads((study / "branch.json").read_text())
    assert not data["failure"], data["failure"]
    assert [p["checkpoint"] for p in data["points"]] == [0.5]
    assert data["base_run"]["workers"] == 2 and data["base_run"]["per_worker_batch"] == 4
    for step in data["plan"]["checkpoints"]:
        assert list((study / "branch_points" / f"step-{step:08d}").glob("checkpoint_*/state.pt"))
    rungs = sum(len(p["rungs"]) for p in data["points"])
    assert all(len(p["rungs"]) >= 2 for p in data["points"])
    # every job (the base run and each rung) ran as its own Ray Train run
    assert len(list((study / "train_runs").glob("branch-*"))) == 1 + rungs == data["cost"]["trials"]
    # both workers of every job on the one node, placed whole (STRICT_PACK)
    assert data["placement"]["trials_spanning_nodes"] == 0
    assert data["placement"]["trials"] == data["cost"]["trials"]
    assert (
        "2 workers per trial, each trial whole on one node (STRICT_PACK)"
        in (study / "branch.md").read_text()
    )
    assert "report: " in err


def test_a_hostile_branch_study_is_reported_and_runs_no_code(branch_study, tmp_path):
    """Issue 34: the branch report reads branch.json and the spec only; --resume refuses a
    study this user did not make before anything else; its payloads never run."""
    import shutil

    from tests.conftest import error_lines, plant_payloads

    study, marker = tmp_path / "b", tmp_path / "payload-ran"
    shutil.copytree(branch_study[0], study)
    plant_payloads(study, marker)
    before = (study / "branch.md").stat().st_mtime_ns
    proc = run_cli("tuner.report", str(study), "--no-tensorboard", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (study / "branch.md").stat().st_mtime_ns > before  # written again
    assert not marker.exists()
    resume = run_cli(
        "tuner.search", "--resume", "--name", "b", "--storage", str(tmp_path), check=False
    )
    assert resume.returncode == 2 and len(error_lines(resume.stderr)) == 1
    assert "--trust-code" in resume.stderr and not marker.exists()
