"""The `ray up` / `ray down` launcher with the `local` provider over SSH on loopback: a cluster
brought up by `ray up`, a smoke study on it, its results fetched, and `ray down` leaving nothing
running. (A file of its own, apart from tests/test_cluster.py's two-node tests: those must run
last, alone, for their trials to overlap; this one need not wait for them; issue 31.)"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_cluster import (
    BIN,
    MARKER,
    ROOT,
    LocalRayCluster,
    _zombie,
    free_ports,
    last_line,
    processes_with,
    run,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def launcher_skip_reason() -> str | None:
    """Why the launcher test cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux namespaces"
    if os.geteuid() != 0:
        return (
            "needs root: sshd runs in private PID and mount namespaces so that the `ray stop` "
            "that `ray up`/`ray down` run over SSH only sees the test's own processes"
        )
    missing = [
        tool
        for tool in ("ssh", "ssh-keygen", "rsync", "nc", "unshare", "mount")
        if shutil.which(tool) is None
    ]
    if not Path(SSHD).exists():
        missing.append("sshd")
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install openssh-server openssh-client "
            f"rsync netcat-openbsd util-linux mount"
        )
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot make PID and mount namespaces here: {last_line(probe.stderr)}"
    return None


class LoopbackSSH:
    """sshd on 127.0.0.1:PORT in private PID + mount namespaces, with a private HOME and /tmp/ray.

    What `ray up` runs over SSH (`ray stop`, `ray start`, rsync into ~) happens inside: `ray stop`
    sees only the namespace's processes, files land in the private HOME bind-mounted on the
    user's home, Ray's default temp dir (where `ray.init()` finds the cluster) is private too,
    and killing the namespace's init process ends everything in it.
    """

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.home = root / "home"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        self.key = root / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
            check=True,
            capture_output=True,
        )
        auth = self.home / ".ssh" / "authorized_keys"
        auth.write_text((root / "id_ed25519.pub").read_text())
        auth.chmod(0o600)
        self.home.chmod(0o700)
        host_key = root / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
            check=True,
            capture_output=True,
        )
        # Sessions get this venv first on PATH, like a node whose set-up installed the project
        # (`ray up` sources ~/.bashrc before every command), and the test's marker. The auth
        # token comes as on a real node: the config's file mount of ~/.ray/auth_token.
        bashrc = [
            f"export PATH={BIN}:$PATH",
            "export RAY_USAGE_STATS_ENABLED=0",
            f"export {MARKER}={env[MARKER]}",
        ]
        (self.home / ".bashrc").write_text("\n".join(bashrc) + "\n")
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {auth}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    f"PidFile {root / 'sshd.pid'}",
                    "StrictModes no",
                    "AcceptEnv no",
                ]
            )
            + "\n"
        )
        user_home = Path(os.path.expanduser("~")).resolve()
        # What the venv needs from the real home (its Python, e.g. ~/.pyenv) stays visible.
        keep = set()
        for needed in (sys.base_prefix, sys.prefix, ROOT):
            needed = Path(needed).resolve()
            if needed.is_relative_to(user_home) and needed != user_home:
                keep.add(needed.relative_to(user_home).parts[0])
        mounts = []
        for name in sorted(keep):
            (self.home / name).mkdir()
            mounts.append(f"mount --bind {user_home / name} {self.home / name}")
        ray_tmp = root / "tmp-ray"
        ray_tmp.mkdir()
        Path("/tmp/ray").mkdir(exist_ok=True)  # the mount point; Ray's default temp dir anyway
        mounts += [f"mount --rbind {self.home} {user_home}", f"mount --bind {ray_tmp} /tmp/ray"]
        script = " && ".join([*mounts, "mkdir -p /run/sshd", f"exec {SSHD} -D -e -f {config}"])
        self.log = open(root / "sshd.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise AssertionError(f"sshd did not start: {(root / 'sshd.log').read_text()}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the namespace's init: takes the rest with it
        self.proc.wait(timeout=10)
        self.log.close()


def local_launcher_config(root: Path, ssh: LoopbackSSH, cluster: LocalRayCluster) -> Path:
    """cluster-local.yaml pointed at this machine: head 127.0.0.1 and no workers (the local
    provider keys nodes by IP), SSH through the test's port, the test's auth token, and the
    shipped head start command with the test's own ports. File mounts, rsync filters and start
    commands are the shipped file's; the set-up only checks the install (this venv, on PATH in
    the sessions: installing PyTorch is minutes of downloads)."""
    config = yaml.safe_load((ROOT / "cluster-local.yaml").read_text())
    config["cluster_name"] = f"bss-test-{secrets.token_hex(4)}"
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": str(ssh.key),
        "ssh_proxy_command": f"nc 127.0.0.1 {ssh.port}",
    }
    config["max_workers"] = 0
    token = root / "auth_token"
    token.write_text(cluster.env["RAY_AUTH_TOKEN"])
    assert "~/.ray/auth_token" in config["file_mounts"]
    config["file_mounts"]["~/.ray/auth_token"] = str(token)
    config["setup_commands"] = [
        "python -c 'import tuner, trainables, ray; print(ray.__version__)'",
        *[c for c in config["setup_commands"] if "auth_token" in c],
    ]
    ports = free_ports(7)
    test_ports = (
        f"--port={cluster.gcs_port} --num-cpus=2 --num-gpus=0 --disable-usage-stats "
        f"--dashboard-port={cluster.dashboard_port} --ray-client-server-port={ports[0]} "
        f"--dashboard-agent-listen-port={ports[1]} --dashboard-agent-grpc-port={ports[2]} "
        f"--runtime-env-agent-port={ports[3]} --metrics-export-port={ports[4]} "
        f"--node-manager-port={ports[5]} --object-manager-port={ports[6]}"
    )
    shipped = config["head_start_ray_commands"]
    assert sum("--port=6379" in c for c in shipped) == 1, shipped
    config["head_start_ray_commands"] = [c.replace("--port=6379", test_ports) for c in shipped]
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(
    launcher_skip_reason() is not None, reason=f"launcher test: {launcher_skip_reason()}"
)
def test_ray_up_smoke_study_ray_down_with_local_provider(tmp_path):
    """`ray up -y` brings a cluster up over SSH, a smoke study runs on it (`ray exec`), the
    results come back (`ray rsync-down`), `ray down -y` takes it down."""
    from tuner.cluster.config import load_cluster_config
    from tuner.store.table import collect_trials

    cluster = LocalRayCluster()  # for its marker, token and ports: the nodes come from ray up
    ssh = LoopbackSSH(cluster.root, cluster.env)
    config = local_launcher_config(cluster.root, ssh, cluster)
    name = yaml.safe_load(config.read_text())["cluster_name"]
    load_cluster_config(config)  # what we launch passes our own check
    ray_cli = [str(BIN / "ray")]
    study = "launched"
    try:
        up = run(
            [*ray_cli, "up", "-y", "--no-config-cache", str(config)],
            cluster.env,
            timeout=300,
            check=False,
        )
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-5000:]}\n{up.stderr[-3000:]}"
        remote = cluster.root / "remote-studies"
        # On the head, `--address auto` joins the cluster that `ray start` recorded there.
        exec_ = run(
            [
                *ray_cli,
                "exec",
                str(config),
                f"cd ~/batch-scaling-study && python -m tuner.search simple_cnn --smoke "
                f"--seeds 0 --max-concurrent 2 --address auto --storage {remote} --name {study}",
            ],
            cluster.env,
            timeout=420,
            check=False,
        )
        assert exec_.returncode == 0, (
            f"study failed:\n{exec_.stdout[-5000:]}\n{exec_.stderr[-2000:]}"
        )
        local = tmp_path / "fetched"
        run(
            [*ray_cli, "rsync-down", str(config), f"{remote}/{study}/", str(local)],
            cluster.env,
            timeout=120,
        )
        table = collect_trials(local)
        assert table["trial_id"].nunique() == 4  # --smoke --seeds 0: 4 search trials
        assert table["node_id"].nunique() == 1  # one node: the head
        assert (local / "trials.csv").exists()
        down = run([*ray_cli, "down", "-y", str(config)], cluster.env, timeout=180, check=False)
        assert down.returncode == 0, (
            f"ray down failed:\n{down.stdout[-3000:]}\n{down.stderr[-3000:]}"
        )
        # `ray down` ran `ray stop` on the head: nothing of the cluster is left running.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [
                p
                for p in processes_with(cluster.marker)
                if not _zombie(p)
                and "sshd" not in _cmdline(p)
                and "unshare" not in _cmdline(p)
                and _cmdline(p) != "sh"
            ]
            if not left:
                break
            time.sleep(1)
        assert not left, [(p, _cmdline(p)) for p in left]
    finally:
        ssh.stop()
        cluster.stop()
        for suffix in ("state", "lock"):  # the local provider's bookkeeping on this side
            Path(f"/tmp/ray/cluster-{name}.{suffix}").unlink(missing_ok=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
