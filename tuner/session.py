"""Connect to Ray, run (or resume) the study, then write the trial table and the report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from tuner import storage as store
from tuner.cluster_config import BOOTSTRAP_CONFIG, possible_nodes, workers_that_fit
from tuner.results import write_trial_table
from tuner.spec import SPEC_FILE, StudySpec


def quiet() -> None:
    """Our progress line replaces Tune's tables and banners; Optuna logs warnings only."""
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# Seen here: on a loaded 2-core machine a worker process (Python + torch imports) took more
# than Ray Train's default 60 s to start, and trials failed for it. Infeasible requests are
# rejected up front (`check_fits`), so a long bound only waits for slow starts or autoscaling.
# Ray Train's controller polls its workers every 2 s by default, so every trial idled up to 2 s
# after its last report; measured (bench/throughput.py): 3.5-5.0 s from last report to fit()
# returning at 2 s, 1.1-1.5 s at 0.5 s.
WORKER_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_ray_kwargs(**kwargs: Any) -> dict[str, Any]:
    """`ray.init` arguments for a fresh local Ray that cannot be confused with another one.

    Ray Train's placement-group cleaner asks the State API for its controller without an
    address; with two Ray instances on the machine that call fails ("Found multiple active Ray
    instances"), a finished trial's CPUs are never released, and later trials time out waiting
    for workers (seen here). Pinning the dashboard port and telling every worker process where
    it is (RAY_API_SERVER_ADDRESS) removes the ambiguity.
    """
    port = free_port()
    env = {**WORKER_ENV, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    return {"address": "local", "dashboard_port": port, "runtime_env": {"env_vars": env}, **kwargs}


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a GCS address HOST:PORT, or None if something does.

    `ray.init` retries an unreachable GCS for minutes (20 tries of about 35 s each); a plain TCP
    connect is refused at once, or times out in `timeout` seconds where no route exists.
    Addresses Ray resolves itself ("auto", "local", "ray://...") are not checked here.
    """
    if address in ("auto", "local") or address.startswith("ray://"):
        return None
    if "://" in address:
        return (
            "that is a URL; give the cluster's GCS address HOST:PORT (port 6379 unless "
            "`ray start --port` said otherwise); a dashboard URL is for `ray job submit`"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return "expected HOST:PORT, the cluster's GCS address (e.g. 10.0.0.10:6379)"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None


def connect(address: str | None) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray of our own.

    Plain `ray.init()` joins any Ray instance already running on this machine (Ray scans for
    one): two studies would then share a cluster and the first to exit would take the other's
    trials down. Without an address we always start a fresh instance; `--address auto` joins
    a running one.
    """
    quiet()
    address = address or os.environ.get("RAY_ADDRESS")
    problem = unreachable(address) if address else None
    if problem:
        raise SystemExit(f"error: cannot connect to Ray at {address}: {problem}")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    common = {"log_to_driver": False, "configure_logging": False, "logging_level": "ERROR"}
    try:
        if address in (None, "", "local"):
            ray.init(**local_ray_kwargs(**common))
        else:
            ray.init(address=address, runtime_env={"env_vars": dict(WORKER_ENV)}, **common)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if address not in (None, "", "local") and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray sends its auth token to an explicit address only when told to, and a cluster
            # with token auth (the default since Ray 2.59) then refuses it just like this.
            message += (
                "; if the cluster uses token auth, export RAY_AUTH_MODE=token (the token from "
                "~/.ray/auth_token or RAY_AUTH_TOKEN)"
            )
        raise SystemExit(f"error: cannot connect to Ray at {address}: {message}") from None


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every node the cluster has now or its autoscaler can add.

    On the head of a `ray up` cluster (where `ray job submit` runs the study) the autoscaler's
    config lists the node types with their resources and bounds: GPU workers may not exist yet.
    """
    nodes = [
        {k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")
    ]
    if BOOTSTRAP_CONFIG.exists():
        import yaml

        try:
            can_add = possible_nodes(yaml.safe_load(BOOTSTRAP_CONFIG.read_text()))
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            can_add = []
        # The autoscaler's node types bound what can ever run; the nodes up now are among them.
        if any(n.get("CPU", 0) or n.get("GPU", 0) for n in can_add):
            return can_add
    return nodes


def check_fits(spec: StudySpec, nodes: list[dict[str, float]]) -> None:
    """Fail fast when one trial asks for more than the cluster can ever hold at once: its
    workers, each whole on one node (a worker never spans nodes)."""
    fits = workers_that_fit(nodes, spec.cpus_per_worker, spec.gpus_per_worker)
    if fits < spec.workers_per_trial:
        cpu = sum(n.get("CPU", 0) for n in nodes)
        gpu = sum(n.get("GPU", 0) for n in nodes)
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise SystemExit(
            f"error: one trial needs {spec.workers_per_trial} workers x "
            f"({spec.cpus_per_worker:g} CPU, {spec.gpus_per_worker:g} GPU) on one node each, "
            f"but the cluster holds {fits} such worker(s) ({len(nodes)} node(s), {cpu:g} CPU, "
            f"{gpu:g} GPU; the largest node {largest.get('CPU', 0):g} CPU, "
            f"{largest.get('GPU', 0):g} GPU); lower --workers-per-trial / --cpus-per-worker "
            f"or grow the cluster"
        )


def close_lost_trials(spec: StudySpec) -> int:
    """After Tune has finished, no Optuna trial can still be running: a RUNNING one was
    suggested after Tune's last experiment checkpoint before a crash, and the resumed
    study never heard of it. Record it as failed (outcome `errored`) so storage and Tune agree."""
    import optuna

    from tuner.driver import optuna_storage

    study = optuna.load_study(study_name=spec.name, storage=optuna_storage(spec))
    lost = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    for trial in lost:
        study._storage.set_trial_user_attr(trial._trial_id, "outcome", "errored")
        study._storage.set_trial_user_attr(trial._trial_id, "lost_in_interruption", True)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(lost)


def run_study(
    spec: StudySpec, args: argparse.Namespace, *, resume: bool, save: Callable[[StudySpec], Path]
) -> int:
    from tuner import driver

    connect(args.address)
    nodes = cluster_nodes()
    if not resume and args.gpus_per_worker is None and any(n.get("GPU", 0) > 0 for n in nodes):
        spec = dataclasses.replace(spec, gpus_per_worker=1.0)
    check_fits(spec, nodes)
    if not resume:
        save(spec)
        if spec.remote:  # a resume from anywhere needs the spec, even if this driver dies now
            store.upload_file(spec.study_dir / SPEC_FILE, store.join(spec.study_uri, SPEC_FILE))
    elif spec.remote:
        used = store.pull_optuna_db(spec.study_uri, spec.study_dir)
        print(f"resuming with the Optuna database from {used}", file=sys.stderr)
    print(
        f"study {spec.name}: {spec.workload} on {spec.dataset}, batch sizes "
        f"{list(spec.batch_sizes)}, {spec.trials} trials x {spec.epochs} epochs, "
        f"{spec.workers_per_trial} worker(s)/trial, results in {spec.study_dir}",
        file=sys.stderr,
        flush=True,
    )
    tuner = driver.restore_tuner(spec) if resume else driver.make_tuner(spec)
    results = tuner.fit()
    if spec.remote:  # Tune's results and TensorBoard files, for the trial table and report
        store.download_study(spec.study_uri, spec.study_dir)
    lost = close_lost_trials(spec)
    if lost:
        print(
            f"{lost} trial(s) started just before an interruption were never recorded by Tune; "
            f"marked errored in optuna.db",
            file=sys.stderr,
        )
    table = write_trial_table(spec.study_dir)
    print(f"trial table: {table}", file=sys.stderr)
    if not args.no_report:
        from tuner.report import write_report

        try:
            print(f"report: {write_report(spec.study_dir)}", file=sys.stderr)
        except Exception as error:  # the study is done and saved; say why the report is not
            print(
                f"report failed ({type(error).__name__}: {error}); rerun it with "
                f"python -m tuner.report {spec.study_dir}",
                file=sys.stderr,
            )
    if spec.remote:
        try:
            count = store.upload_study(spec.study_dir, spec.study_uri)
        except store.StorageError as error:
            print(
                f"error: {error}; the finished study is in {spec.study_dir} on this machine",
                file=sys.stderr,
            )
            return 1
        print(f"uploaded {count} files to {spec.study_uri}", file=sys.stderr)
    errors = sum(1 for r in results if r.error)
    print(
        f"done: {len(results)} trials ({errors} errored). The map: tensorboard --logdir "
        f"{spec.study_dir / 'summary'} (every trial's curves: --logdir {spec.study_dir})",
        file=sys.stderr,
    )
    return 0
