"""A worker node removed mid-study: its trials are retried on the head from their last
checkpoint, and the study completes with a report.

A real two-node cluster (the one tests/test_cluster.py builds: `ray start --block` processes with
their own temp dirs, ports and auth token). Each trial's worker asks for 2 CPUs, a whole node, so
two concurrent trials run on two different nodes. Once a trial is running on the second node, every
process of that node (its `ray start` and all of its descendants: GCS client, raylet, agents,
workers) gets SIGKILL. The study, driven from this machine outside the cluster, must go on with the
head's 2 CPUs, one trial at a time, and finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cluster import ROOT, start_two_nodes

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TRIALS = 6
FINAL = {"completed", "stopped", "diverged", "errored"}


def descendants(root: int) -> list[int]:
    """`root` and every live process below it, by parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def kill_node(node: subprocess.Popen) -> list[int]:
    """SIGKILL a node: its `ray start` process group and every descendant of it."""
    pids = descendants(node.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait(timeout=30)
    return pids


def running_on(study_dir: Path, node_id: str) -> set[str]:
    """Running trials whose latest result came from `node_id` in the first half of their budget
    (so that the kill lands well before they end); empty before the study exists."""
    from tuner.store.table import collect_trials

    if not (study_dir / "study.json").exists():
        return set()
    try:
        table = collect_trials(study_dir)
    except Exception:  # noqa: BLE001 (files half written by the running study)
        return set()
    table = table[table["outcome"] == "running"].dropna(subset=["progress"])
    latest = table.sort_values("progress").groupby("trial_id").last()
    return set(latest[(latest["node_id"] == node_id) & (latest["progress"] <= 0.5)].index)


def test_worker_node_killed_mid_study_study_completes_with_report(tmp_path):
    from tuner.store.table import collect_trials

    cluster = start_two_nodes(head_ids=True)  # the head alone first, to tell the nodes apart
    study = None
    try:
        (second_id,) = cluster.node_ids() - cluster.head_ids
        second = cluster.nodes[1]

        storage = tmp_path / "studies"
        study_dir = storage / "node-removal"
        log = open(tmp_path / "study.log", "w")  # noqa: SIM115 (closed below)
        start = time.monotonic()
        study = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuner.search",
                "simple_cnn",
                "--dataset",
                "digits",
                "--batch-sizes",
                "8,64",
                "--rules",
                "linear",
                "--trials",
                str(TRIALS),
                "--seeds",
                "0",
                # A step budget: 120 steps at both batch sizes (epochs:4 gave batch 8 718
                # steps and batch 64 90, and the kill only needs a trial mid-way).
                "--budget",
                "steps:120",
                "--cpus-per-worker",
                "2",
                # ASHA's only rung just before the end: no trial is stopped early, so a trial on
                # node 2 is certainly still running when the node goes.
                "--grace",
                "0.99",
                "--max-concurrent",
                "2",
                "--address",
                cluster.gcs_address,
                "--storage",
                str(storage),
                "--name",
                "node-removal",
            ],
            cwd=ROOT,
            env=cluster.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def study_log() -> str:
            log.flush()
            return (tmp_path / "study.log").read_text()[-8000:]

        # Wait for a trial that has reported from the second node and is still running.
        victims: set[str] = set()
        deadline = time.monotonic() + 300
        while not victims:
            assert study.poll() is None, f"study ended before a trial ran on node 2:\n{study_log()}"
            assert time.monotonic() < deadline, f"no trial on node 2 in 300 s:\n{study_log()}"
            victims = running_on(study_dir, second_id)
            if not victims:
                time.sleep(0.2)
        killed_at = time.monotonic()
        kill_node(second)
        print(f"killed node 2 at {killed_at - start:.1f} s; its running trials: {victims}")

        # Informative only: how long until each victim reports from another node or errors.
        pending = set(victims)
        while pending and study.poll() is None and time.monotonic() < killed_at + 360:
            with contextlib.suppress(Exception):
                table = collect_trials(study_dir)
                for trial_id in list(pending):
                    rows = table[table["trial_id"] == trial_id]
                    moved = set(rows["node_id"].dropna()) - {second_id}
                    if moved or "errored" in set(rows["outcome"]):
                        print(
                            f"trial {trial_id}: outcome {set(rows['outcome'])}, results from "
                            f"other nodes {moved}, {time.monotonic() - killed_at:.1f} s after "
                            "the kill"
                        )
                        pending.discard(trial_id)
            time.sleep(0.5)

        try:
            rc = study.wait(timeout=360)
        except subprocess.TimeoutExpired:
            pytest.fail(f"study still running 6 min after node 2 was killed:\n{study_log()}")
        took = time.monotonic() - start
        print(f"study exited {rc} after {took:.1f} s ({time.monotonic() - killed_at:.1f} s after)")
        log.close()
        text = (tmp_path / "study.log").read_text()
        for line in text.splitlines():
            if "marked dead" in line:
                print("study log:", line[:300])
        assert rc == 0, study_log()
        assert (study_dir / "report.md").exists(), study_log()

        table = collect_trials(study_dir)
        outcomes = table.groupby("trial_id")["outcome"].first()
        print(table[["trial_id", "optimizer_steps", "outcome", "node_id"]].to_string())
        assert len(outcomes) == TRIALS, outcomes
        # No trial errored: the one-worker trials on the removed node were restarted by Tune
        # (--worker-retries, default 2) on the head, from their last checkpoint, not from 0.
        assert set(outcomes) <= FINAL - {"errored"}, outcomes
        for trial in victims:
            rows = table[table["trial_id"] == trial]
            moved = rows[rows["node_id"].isin(cluster.head_ids)]
            assert len(moved) > 0, (trial, rows[["optimizer_steps", "node_id"]])
            # the head first re-reports the checkpoint's evaluations (as they were: resumed at
            # 0; one or more, as far as the checkpoint got), then trains on from there
            resumed = moved[moved["resumed_at_step"] > 0]
            assert len(resumed) > 0, moved[["optimizer_steps", "resumed_at_step"]]
            replayed = moved[moved["resumed_at_step"] == 0]
            start = resumed["resumed_at_step"].min()
            assert (replayed["optimizer_steps"] <= start).all(), moved["resumed_at_step"]
            assert rows["optimizer_steps"].is_monotonic_increasing
        # The report has its verdict, with an estimate at every batch size.
        verdict = (study_dir / "report.md").read_text().split("## Verdict", 1)[1]
        assert "Budget:" in verdict, verdict
        frontier = json.loads((study_dir / "frontier.json").read_text())["frontier"]
        assert sorted(r["batch_size"] for r in frontier) == [8, 64]
        assert all(r["accuracy"] is not None for r in frontier), frontier
    finally:
        if study is not None and study.poll() is None:
            study.kill()
            study.wait(timeout=30)
        cluster.stop()
