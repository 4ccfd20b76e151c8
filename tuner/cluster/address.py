"""Where a Ray cluster answers: a plain TCP check of its GCS address, before Ray is touched."""

from __future__ import annotations

import socket

# Addresses Ray resolves itself: no TCP check is possible or needed for these.
RAY_RESOLVED = ("auto", "local")


def address_problem(address: str) -> str | None:
    """Why `address` is not a form `ray.init` takes (HOST:PORT, auto, local, ray://...), or None."""
    if address in RAY_RESOLVED or address.startswith("ray://"):
        return None
    if "://" in address:
        return (
            "that is a URL; give the cluster's GCS address HOST:PORT (port 6379 unless "
            "`ray start --port` said otherwise); a dashboard URL is for `ray job submit`"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT, the cluster's GCS address (e.g. 10.0.0.10:6379)"
    return None


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a GCS address HOST:PORT, or None if something does.

    `ray.init` retries an unreachable GCS for minutes (20 tries of about 35 s each); a plain TCP
    connect is refused at once, or times out in `timeout` seconds where no route exists.
    Addresses Ray resolves itself ("auto", "local", "ray://...") are not checked here.
    """
    problem = address_problem(address)
    if problem or address in RAY_RESOLVED or address.startswith("ray://"):
        return problem
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None
