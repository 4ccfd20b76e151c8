"""Real tracking servers for the tests, started here and ended by their pid: an MLflow tracking
server (SQLite backend, a temporary artifact root) and a PostgreSQL (where its binaries are on
this machine: `.ci/run` installs them where it can)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

PASSWORD = "study-pass"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on loopback with its store in `root`; returns it and its URI once its
    health check answers (it takes ~15 s on 2 CPUs: migrations of a fresh database)."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(root / "mlflow.log", "w")  # noqa: SIM115 (the server's, closed with it)
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        + ["--artifacts-destination", str(root / "artifacts")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return server, uri
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise AssertionError(
                f"mlflow server did not start: {(root / 'mlflow.log').read_text()[-2000:]}"
            )
        time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    """End a server and the processes it started (its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's initdb and pg_ctl, where installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def start_postgres() -> tuple[Callable[[], None], str] | str:
    """A PostgreSQL cluster in a fresh directory on a free loopback port, its superuser
    `postgres` with a password (logins are checked); returns (stop, URL of database `studies`),
    or why it cannot run here. PostgreSQL refuses to run as root: as root it runs as the
    `postgres` user, in a directory of its own under /tmp (pytest's are private to root)."""
    bindir = postgres_bin()
    if bindir is None:
        return "PostgreSQL is not installed here (no initdb; .ci/run installs it as root)"
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="bss-postgres-"))
    data, sock = root / "pgdata", root / "pgsock"
    for path in (root, sock):
        path.mkdir(parents=True, exist_ok=True)
        if as_user:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise AssertionError(f"{' '.join(cmd)}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
        "--auth-host=scram-sha-256", "--auth-local=trust")  # fmt: skip
    options = f"-p {port} -k {sock} -h 127.0.0.1"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "pg.log"),
        "-w", "start")  # fmt: skip
    run(str(bindir / "psql") if (bindir / "psql").exists() else "psql", "-h", str(sock), "-p",
        str(port), "-U", "postgres", "-c", "CREATE DATABASE studies")  # fmt: skip

    def stop_postgres() -> None:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)

    return stop_postgres, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/studies"
