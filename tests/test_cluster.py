"""The cluster path, end to end on this machine: a real multi-node Ray cluster made of `ray start`
processes, a study submitted to it with `ray job submit`, the CLI on an existing cluster through
RAY_ADDRESS / --address, and bad inputs that must fail fast in one line (the `ray up` / `ray down`
launcher: tests/test_cluster_launcher.py).

Every cluster here is isolated from other Ray instances on the machine (a test suite running
`ray.init` next to it, a user's `ray start`): its own temp dirs, ports and auth token. It is torn
down by killing exactly the processes it started, found by a marker in their environment (Ray's
processes inherit it, whatever their process group or title): never `ray stop`, which kills every
Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tuner.cluster.placement import ACCELERATOR_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "BSS_TEST_CLUSTER"
# Drop anything that would point Ray at another cluster or another token.
SCRUB = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `ray`, `python`: this venv's
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds `marker`."""
    needle = marker.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_marked(marker: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process carrying `marker`; returns those still alive."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = processes_with(marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.5)
            pids = [p for p in processes_with(marker) if not _zombie(p)]
        if not pids:
            return []
    return [p for p in processes_with(marker) if not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def run(
    cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


class NodeStartFailed(AssertionError):
    """A `ray start` process exited while its node was starting."""


class LocalRayCluster:
    """A head and worker nodes, each a `ray start --block` process with its own temp dir and
    ports, sharing a fresh auth token (token auth on, as Ray >= 2.59 does by default)."""

    def __init__(self) -> None:
        # Short: Ray's socket paths live under it and must stay below 107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="bss-", dir="/tmp"))
        self.marker = f"{MARKER}={secrets.token_hex(8)}"
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.env = clean_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            # Ray's State API, called inside the cluster without an address (Ray Train's
            # placement-group cleaner does), looks for $RAY_ADDRESS, then the default temp
            # dir's `ray_current_cluster`, then for GCS processes on the machine: with another
            # Ray instance running here it finds several, gives up, and a finished trial's
            # workers are never freed. Name this cluster's dashboard explicitly.
            RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{self.dashboard_port}",
            **dict([self.marker.split("=", 1)]),
        )
        self.nodes: list[subprocess.Popen] = []
        self._names: list[str] = []
        self.cpus = 0
        self.head_ids: set[str] = set()

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], num_cpus: int) -> None:
        ports = free_ports(7)
        temp_dir = self.root / name
        temp_dir.mkdir()
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--temp-dir",
            str(temp_dir),
            "--disable-usage-stats",
            "--dashboard-agent-listen-port",
            str(ports[0]),
            "--dashboard-agent-grpc-port",
            str(ports[1]),
            "--runtime-env-agent-port",
            str(ports[2]),
            "--metrics-export-port",
            str(ports[3]),
            "--node-manager-port",
            str(ports[4]),
            "--object-manager-port",
            str(ports[5]),
            *args,
        ]
        self._names.append(name)
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.nodes.append(
            subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        self.cpus += num_cpus

    def start_head(self, num_cpus: int) -> None:
        ports = free_ports(1)
        self._start(
            "head",
            [
                "--head",
                "--port",
                str(self.gcs_port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(ports[0]),
            ],
            num_cpus,
        )

    def add_node(self, num_cpus: int, resources: dict[str, float] | None = None) -> None:
        extra = ["--resources", json.dumps(resources)] if resources else []
        self._start(f"node{len(self.nodes)}", ["--address", self.gcs_address, *extra], num_cpus)

    def wait_started(self, timeout: float = 180) -> None:
        """Until the last node's `ray start` prints that its runtime started. Reading its log
        costs nothing, where polling `ray status` starts a Python process each time."""
        node, log = self.nodes[-1], self.root / f"{self._names[-1]}.log"
        deadline = time.monotonic() + timeout
        while "Ray runtime started." not in log.read_text():
            if node.poll() is not None:
                raise NodeStartFailed(
                    f"a ray start process exited {node.returncode}: {self.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"a node did not start in {timeout} s: {self.logs()}")
            time.sleep(0.5)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until every node has joined (total CPUs) and the job server answers."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    raise NodeStartFailed(
                        f"a ray start process exited {node.returncode}: {self.logs()}"
                    )
            proc = run(
                [str(BIN / "ray"), "status", "--address", self.gcs_address],
                self.env,
                timeout=60,
                check=False,
            )
            status = proc.stdout + proc.stderr
            total = re.search(r"[\d.]+/([\d.]+) CPU", status)
            if total and float(total.group(1)) == self.cpus:
                jobs = run(
                    [str(BIN / "ray"), "job", "list", "--address", self.dashboard_url],
                    self.env,
                    timeout=60,
                    check=False,
                )
                if jobs.returncode == 0:
                    return
            time.sleep(2)
        raise AssertionError(
            f"cluster not ready in {timeout} s; last status:\n{status}\n{self.logs()}"
        )

    def node_ids(self) -> set[str]:
        return set(self.node_resources())

    def node_resources(self) -> dict[str, dict[str, float]]:
        """Every live node's id with its total resources."""
        proc = run(
            [
                str(BIN / "ray"),
                "list",
                "nodes",
                "--address",
                self.dashboard_url,
                "--format",
                "json",
                "--detail",
                "--filter",
                "state=ALIVE",
            ],
            self.env,
            timeout=60,
        )
        return {node["node_id"]: node["resources_total"] for node in json.loads(proc.stdout)}

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}:\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        left = kill_marked(self.marker)
        for node in self.nodes:
            if node.poll() is None:
                node.kill()
            node.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"processes of the test cluster survived SIGKILL: {left}"


def start_two_nodes(
    head_ids: bool = False, worker_resources: dict[str, float] | None = None
) -> LocalRayCluster:
    """A head and a worker node of 2 CPUs each, started one after the other: started together
    on 2 cores they compete for the CPU while Ray gives a raylet a hard-coded 30 s to register
    with the GCS (ray/_private/node.py), and CI once saw the head's `ray start` give up ("The
    current node timed out during startup"). Where a `ray start` still dies that way, the whole
    cluster is started once more, on fresh ports: that is Ray's start-up under load, not the
    behaviour under test, and the retry is printed. `head_ids`: the head's node ids are kept
    (`cluster.head_ids`), read before the second node joins, to tell the two apart;
    `worker_resources`: custom resources of the second node."""
    for attempt in (1, 2):
        cluster = LocalRayCluster()
        try:
            cluster.start_head(num_cpus=2)
            cluster.wait_started()
            if head_ids:
                cluster.wait_ready()
                cluster.head_ids = cluster.node_ids()
            cluster.add_node(num_cpus=2, resources=worker_resources)
            cluster.wait_started()
            cluster.wait_ready()
            return cluster
        except NodeStartFailed as e:
            cluster.stop()
            if attempt == 2:
                raise
            print(f"test cluster: a ray start died during start-up, starting again:\n{e}")
        except BaseException:
            cluster.stop()
            raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def two_nodes():
    """A real two-node cluster on this machine: a head and a worker node of 2 CPUs each; the
    worker node declares the accelerator type T1 (as Ray declares a GPU node's type)."""
    cluster = start_two_nodes(worker_resources={ACCELERATOR_PREFIX + "T1": 1})
    try:
        yield cluster
    finally:
        cluster.stop()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, and the error is one `error: ...` line at the end of stderr, no traceback."""
    assert proc.returncode != 0, f"exited 0:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    line = last_line(proc.stderr)
    assert line.startswith("error: "), f"last stderr line is no error line:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")] == [line]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def search_cli(
    *args: str, env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = run([sys.executable, "-m", "tuner.search", *args], env, timeout=timeout, check=False)
    return proc, time.monotonic() - start


# --- (a) a real two-node cluster -----------------------------------------------------------------


def test_study_through_ray_job_submit_uses_both_nodes(two_nodes, tmp_path):
    """`ray job submit` a smoke study; trials that run at the same time run on both nodes.

    Each worker asks for 2 CPUs, a whole node, so two trials running at once can only be on
    two different nodes. Whether two ever run at once is the machine's: a smoke trial lasts
    about a second, and where the second node's actor takes longer to start (Python and torch
    on a busy machine), Tune gives the next trial the first node's finished actor instead
    (seen once in CI: all four trials on one node, one after another). So the rule is checked
    on the trials' own clocks (`trial_began`, `reported_at`): any two whose runs overlapped
    were on different nodes. The storage is a local path: both "nodes" are this machine.
    """
    from tuner.store.table import collect_trials

    storage = tmp_path / "studies"
    proc = run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            two_nodes.dashboard_url,
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "-m",
            "tuner.search",
            "simple_cnn",
            "--smoke",
            "--seeds",
            "0",  # the 4 search trials show the spread over nodes; confirmations add time only
            "--max-concurrent",
            "2",
            "--cpus-per-worker",
            "2",
            "--storage",
            str(storage),
            "--name",
            "two-nodes",
        ],
        two_nodes.env,
        timeout=420,
        check=False,
    )
    assert proc.returncode == 0, f"job failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "succeeded" in proc.stdout + proc.stderr

    table = collect_trials(storage / "two-nodes")
    trials = table.groupby("trial_id")
    assert trials.ngroups == 4  # --smoke --seeds 0: 4 search trials
    assert set(table["outcome"]) <= {"completed", "stopped"}, table[["trial_id", "outcome"]]
    used = set(table["node_id"].dropna())
    assert used <= two_nodes.node_ids(), (used, two_nodes.node_ids())
    # One node per trial (its rank-0 worker), the same for every epoch of it.
    assert (trials["node_id"].nunique() == 1).all()
    runs = trials.agg(
        {"node_id": "first", "started": "min", "trial_began": "min", "reported_at": "max"}
    )
    # (a process's first trial says when the process started: no earlier than handed out)
    runs["trial_began"] = runs[["started", "trial_began"]].max(axis=1)
    runs = runs.to_dict("index")
    together = [
        (a, b)
        for a in runs
        for b in runs
        if a < b
        and runs[a]["trial_began"] < runs[b]["reported_at"]
        and runs[b]["trial_began"] < runs[a]["reported_at"]
    ]
    for a, b in together:  # running at once: a whole node each
        assert runs[a]["node_id"] != runs[b]["node_id"], (a, b, runs)
    if together:
        assert used == two_nodes.node_ids()
    print(f"{len(together)} pair(s) of trials ran at once; nodes used: {len(used)}")


def test_multi_worker_trials_run_whole_on_one_node_of_the_asked_accelerator_type(
    two_nodes, tmp_path
):
    """`--accelerator-type T1` with two workers per trial: every trial runs on the one node that
    declares T1 (the head is as large: without the type, trials run there too), its two
    workers together there (STRICT_PACK: a node holds a whole trial), and the report says
    so; a type no node has is refused in one line before anything is written."""
    from tuner.store.table import collect_trials

    env = {**two_nodes.env, "RAY_ADDRESS": two_nodes.gcs_address}
    storage = tmp_path / "studies"
    common = ["simple_cnn", "--smoke", "--seeds", "0", "--trials", "2", "--storage", str(storage)]
    proc, _ = search_cli(*common, "--accelerator-type", "Z9", "--name", "z9", env=env, timeout=120)
    assert_one_line_error(proc, "--accelerator-type Z9", "T1")
    assert not (storage / "z9").exists()

    proc, _ = search_cli(
        *common,
        "--workers-per-trial",
        "2",
        "--accelerator-type",
        "T1",
        "--name",
        "typed",
        env=env,
        timeout=420,
    )
    assert proc.returncode == 0, f"study failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    typed = {n for n, res in two_nodes.node_resources().items() if ACCELERATOR_PREFIX + "T1" in res}
    assert len(typed) == 1, two_nodes.node_resources()
    table = collect_trials(storage / "typed")
    assert table["trial_id"].nunique() == 2
    assert set(table["node_id"]) == typed, table[["trial_id", "node_id"]]
    assert set(table["nodes"]) == {1}, table[["trial_id", "nodes"]]  # both workers on one node
    assert set(table["workers"]) == {2}
    assert set(table["device_name"]) == {"cpu"}
    spec = json.loads((storage / "typed" / "study.json").read_text())["spec"]
    assert (spec["placement_strategy"], spec["accelerator_type"]) == ("STRICT_PACK", "T1")
    report = (storage / "typed" / "report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("- placement: "))
    assert "each trial whole on one node (STRICT_PACK) on T1 only" in line, line
    assert "2 trials ran on 1 node(s) (cpu), each whole on one node" in line, line
    placement = json.loads((storage / "typed" / "frontier.json").read_text())["placement"]
    assert placement["trials_spanning_nodes"] == 0 and placement["nodes_used"] == 1


def test_cli_joins_existing_cluster_with_address_and_rejects_infeasible_trials(two_nodes, tmp_path):
    """`--address` / RAY_ADDRESS reach the cluster; a trial the cluster can never hold fails in
    one line, fast, before any trial is started."""
    storage = str(tmp_path / "studies")
    # More workers than the whole cluster has CPUs (4): through RAY_ADDRESS.
    env = {**two_nodes.env, "RAY_ADDRESS": two_nodes.gcs_address}
    proc, took = search_cli(
        "simple_cnn",
        "--smoke",
        "--batch-sizes",
        "64,128",
        "--workers-per-trial",
        "64",
        "--storage",
        storage,
        "--name",
        "wide",
        env=env,
        timeout=120,
    )
    assert_one_line_error(proc, "64 workers", "4 CPU")
    assert took < 60, took
    assert not (tmp_path / "studies" / "wide" / "study.json").exists()
    # GPUs on a CPU-only cluster: through --address.
    proc, took = search_cli(
        "simple_cnn",
        "--smoke",
        "--gpus-per-worker",
        "1",
        "--address",
        two_nodes.gcs_address,
        "--storage",
        storage,
        "--name",
        "gpu",
        env=two_nodes.env,
        timeout=120,
    )
    assert_one_line_error(proc, "GPU")
    assert took < 60, took


def test_worker_larger_than_any_node_fails_fast(two_nodes, tmp_path):
    """3 CPUs per worker: the cluster has 4 in total, but no node has more than 2, so no worker
    can ever be placed. That is infeasible too and must not wait for a worker-group timeout."""
    env = {**two_nodes.env, "RAY_ADDRESS": two_nodes.gcs_address}
    proc, took = search_cli(
        "simple_cnn",
        "--smoke",
        "--cpus-per-worker",
        "3",
        "--storage",
        str(tmp_path / "studies"),
        "--name",
        "fat",
        env=env,
        timeout=180,
    )
    assert_one_line_error(proc, "3")
    assert took < 60, took


def test_token_cluster_without_the_token_fails_in_one_line(two_nodes, tmp_path):
    """The cluster runs with token auth; a CLI told its address but not RAY_AUTH_MODE=token
    (Ray sends the token to an explicit address only when told to) must say what to set."""
    env = clean_env(RAY_ADDRESS=two_nodes.gcs_address)
    proc, took = search_cli(
        "simple_cnn", "--smoke", "--storage", str(tmp_path), "--name", "x", env=env, timeout=120
    )
    assert_one_line_error(proc, two_nodes.gcs_address, "RAY_AUTH_MODE=token")
    assert took < 60, took
    assert not (tmp_path / "x").exists()


# --- (b) bad inputs without a cluster ------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "option"])
def test_unreachable_address_fails_fast_in_one_line(how, tmp_path):
    env = clean_env(RAY_ADDRESS="127.0.0.1:1") if how == "env" else clean_env()
    extra = ["--address", "127.0.0.1:1"] if how == "option" else []
    proc, took = search_cli(
        "simple_cnn",
        "--smoke",
        "--storage",
        str(tmp_path),
        "--name",
        "x",
        *extra,
        env=env,
        timeout=90,
    )
    assert_one_line_error(proc, "127.0.0.1:1")
    assert took < 30, f"took {took:.0f} s to give up on an unreachable address"
    assert not (tmp_path / "x").exists()


# A trial wider than local Ray (--workers-per-trial 512) is one of tests/test_bad_inputs.py's
# table (refused before Ray starts, nothing written): not repeated here in a subprocess.
