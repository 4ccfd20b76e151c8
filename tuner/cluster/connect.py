"""Join a Ray cluster, or start a local Ray of our own, and ask it what it holds.

With `tuner.study` and `trainables/ray_worker.py`, one of the few places that import Ray.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from tuner.cluster.address import unreachable
from tuner.cluster.capacity import BOOTSTRAP_CONFIG, possible_nodes
from tuner.errors import InputError


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
# returning at 2 s, 1.1-1.5 s at 0.5 s. At 0.25 s (bench/trial_startup.py, a 1-worker trial):
# report to end 1.1-1.2 s, against 2.0-2.2 s at 0.5 s; a poll that outlasts the interval is
# carried over, not failed (a hung worker is judged by its own 10-minute timeout).
WORKER_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # A reused trial driver waits this long for the stopped trial's Train run to end (its
    # controller is killed at once; tuner/study/trial.py); Tune's default is 2 s.
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "30",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ports a local Ray takes by default for its other components: the dashboard agent's HTTP port
# (52365) lies in Linux's ephemeral range, and a dashboard given it fails to start ("Ray
# component dashboard_agent_http is trying to use a port number 52365 that is used by other
# components": seen once in bench/cluster_scale.py).
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


def dashboard_port() -> int:
    """A free port for a local Ray's dashboard that none of Ray's default ports collides with."""
    while (port := free_port()) in RAY_DEFAULT_PORTS:
        continue
    return port


def local_ray_kwargs(dashboard: bool = True, **kwargs: Any) -> dict[str, Any]:
    """`ray.init` arguments for a fresh local Ray that cannot be confused with another one.

    `dashboard`: start the dashboard (and with it the State API). Ray Train trials need it
    (below); a study of one-worker trials does not, and without it a local study costs about
    9 CPU-s less (35 -> 26 CPU-s and 25 -> 20 s for a 6-trial study on 2 CPUs, measured).

    Ray Train's placement-group cleaner asks the State API for its controller without an
    address; with two Ray instances on the machine that call fails ("Found multiple active Ray
    instances"), a finished trial's CPUs are never released, and later trials time out waiting
    for workers (seen here). Pinning the dashboard port and telling every worker process where
    it is (RAY_API_SERVER_ADDRESS) removes the ambiguity.
    """
    port = dashboard_port()
    env = {
        **WORKER_ENV,
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        # One machine is never drained for preemption; the watcher is one more actor process
        # per trial (clusters keep it: spot instances are).
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    }
    return {
        "address": "local",
        "include_dashboard": dashboard,
        "dashboard_port": port,
        "runtime_env": {"env_vars": env},
        **kwargs,
    }


def connect(address: str | None, code: str = "", dashboard: bool = True) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray of our own.

    Plain `ray.init()` joins any Ray instance already running on this machine (Ray scans for
    one): two studies would then share a cluster and the first to exit would take the other's
    trials down. Without an address we always start a fresh instance; `--address auto` joins
    a running one. `code`: a user's workload module to ship to every worker (tuner.shipping).
    `dashboard`: whether a local Ray starts its dashboard (`local_ray_kwargs`); a cluster
    keeps its own.
    """
    quiet()
    if ray.is_initialized():
        # A notebook that called ray.init() itself: its workers lack the study's settings
        # (WORKER_ENV) and its shipped code, so the study does not run inside it.
        raise InputError(
            "Ray is already initialised in this process: call ray.shutdown() first (a study "
            "starts its own local Ray, or joins a cluster named by address / RAY_ADDRESS)"
        )
    address = address or os.environ.get("RAY_ADDRESS")
    problem = unreachable(address) if address else None
    if problem:
        raise InputError(f"cannot connect to Ray at {address}: {problem}")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    common = {"log_to_driver": False, "configure_logging": False, "logging_level": "ERROR"}
    local = address in (None, "", "local")
    try:
        if local:
            kwargs = local_ray_kwargs(dashboard, **common)
        else:
            kwargs = {"address": address, "runtime_env": {"env_vars": dict(WORKER_ENV)}, **common}
        if code:
            kwargs["runtime_env"]["py_modules"] = [code]
        _init(kwargs, local)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not local and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray sends its auth token to an explicit address only when told to, and a cluster
            # with token auth (the default since Ray 2.59) then refuses it just like this.
            message += (
                "; if the cluster uses token auth, export RAY_AUTH_MODE=token (the token from "
                "~/.ray/auth_token or RAY_AUTH_TOKEN)"
            )
        where = "start a local Ray" if local else f"connect to Ray at {address}"
        raise InputError(f"cannot {where}: {message}") from None


# Ray waits a fixed 30 s for a new local node's raylet to register with its GCS; on a machine
# whose CPUs are all busy that can take longer (seen once in CI: "The current node timed out
# during startup", three test files on 2 CPUs). A local Ray of our own is started again, once.
STARTUP_TIMEOUT = "The current node timed out during startup"
LOCAL_START_TRIES = 2


def _init(kwargs: dict, local: bool) -> None:
    """`ray.init(**kwargs)`; a local node that timed out starting is shut down and started
    again (`LOCAL_START_TRIES` in all); the last failure is a RuntimeError."""
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as error:  # Ray raises a bare Exception for this one
            if not local or STARTUP_TIMEOUT not in str(error):
                raise
            ray.shutdown()  # ends the processes the failed start left
            if attempt == LOCAL_START_TRIES:
                raise RuntimeError(
                    f"{STARTUP_TIMEOUT} {LOCAL_START_TRIES} times (the machine's CPUs may be "
                    f"too busy for Ray's raylet to register within 30 s)"
                ) from None


def disconnect() -> None:
    """Leave the cluster (a local Ray of our own ends)."""
    ray.shutdown()


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
