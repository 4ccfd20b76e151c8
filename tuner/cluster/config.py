"""Check a `ray up` cluster config (cluster.yaml) offline, before any cluster is launched.

`load_cluster_config(path)` reads the YAML, validates it against Ray's own cluster schema (the
`ray-schema.json` shipped with the installed Ray, plus the checks `ray up` makes after filling in
the provider's defaults) and against this project's rule that a cluster exposes nothing beyond
SSH. Every problem is a `ClusterConfigError` with a one-line message naming the file and the key.

Ray's validation is a private API (`ray.autoscaler._private.util`); `validate_with_ray` is the
only place that calls it, so a Ray upgrade that moves it breaks one function.

    python -m tuner.cluster cluster.yaml cluster-local.yaml
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SSH_PORT = 22


class ClusterConfigError(ValueError):
    """A cluster config that `ray up` would reject or that breaks this project's rules."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(path: Any) -> str:
    """`available_node_types.gpu-4x.min_workers` for a jsonschema error path."""
    return ".".join(str(p) for p in path) or "top level"


def _schema_message(error: Any) -> str:
    where = _where(error.absolute_path)
    if error.validator == "type":
        got = type(error.instance).__name__
        shown = _one_line(repr(error.instance), 60)
        return f"{where}: expected {error.validator_value}, got {got} {shown}"
    if error.validator == "required":
        missing = re.match(r"'([^']+)'", error.message)
        key = missing.group(1) if missing else error.message
        return (
            f"{where}: missing required key {key!r}"
            if where != "top level"
            else f"missing required key {key!r}"
        )
    return f"{where}: {_one_line(error.message)}"


def validate_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    """The one wrapper around Ray's private launcher validation; returns the prepared config.

    First Ray's JSON schema on the config as written (clear messages for missing keys and wrong
    types), then what `ray up` does: `prepare_config` (merge the provider's defaults, set up the
    `local` provider's single node type) and `validate_config` (schema again, head node type,
    min/max workers). Ray's launcher prints its own copy of some errors: that output is swallowed
    here and the error comes back as a `ClusterConfigError`.
    """
    import click
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(config))
    if error is not None:
        raise ClusterConfigError(_schema_message(error))
    ray_logger = logging.getLogger("ray.autoscaler")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as e:  # a default the provider merged in, or ours
        raise ClusterConfigError(_schema_message(e)) from None
    except click.ClickException as e:  # cli_logger.abort, e.g. local provider without head_ip
        raise ClusterConfigError(_one_line(e.message)) from None
    except KeyError as e:
        raise ClusterConfigError(f"missing required key {e.args[0]!r}") from None
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        raise ClusterConfigError(_one_line(str(e) or type(e).__name__)) from None
    finally:
        ray_logger.setLevel(level)
    return prepared


def _dashboard_hosts(command: str) -> list[str]:
    return re.findall(r"--dashboard-host[= ]+['\"]?([^\s'\"]+)", command)


def check_exposure(config: dict[str, Any], written: dict[str, Any] | None = None) -> None:
    """Nothing but SSH reachable from outside: the dashboard binds to loopback (reach it with
    `ray dashboard`), and extra AWS security-group rules open port 22 only.

    `config` is the prepared config; `written` the file as written, to tell the user's own
    commands from the provider's defaults (Ray's AWS defaults bind the dashboard to 0.0.0.0).
    """
    provider = config.get("provider") or {}
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (SSH_PORT, SSH_PORT) or str(rule.get("IpProtocol", "tcp")) != "tcp":
            raise ClusterConfigError(
                f"provider.security_group.IpPermissions: a rule opens {rule.get('IpProtocol')} "
                f"ports {ports[0]}-{ports[1]}; only SSH (tcp 22) may be opened, the dashboard "
                f"and TensorBoard go through SSH port forwarding"
            )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config.get(key) or []:
            for host in _dashboard_hosts(str(command)):
                if host in LOOPBACK:
                    continue
                origin = (
                    ""
                    if written is None or key in written
                    else f" (Ray's default for provider {provider.get('type')}: set {key} yourself)"
                )
                raise ClusterConfigError(
                    f"{key}: --dashboard-host={host} exposes the dashboard beyond the node"
                    f"{origin}; use --dashboard-host=127.0.0.1 and reach it with "
                    f"`ray dashboard CONFIG`"
                )


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read and check a cluster config; return it as `ray up` resolves it (defaults filled in).

    Raises `ClusterConfigError` with a one-line message that starts with the file's name.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ClusterConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or _one_line(str(e))
        raise ClusterConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(
            f"{path}: expected a mapping of settings (cluster_name, "
            f"provider, ...), got {type(config).__name__}"
        )
    try:
        prepared = validate_with_ray(config)
        check_exposure(prepared, config)
    except ClusterConfigError as e:
        raise ClusterConfigError(f"{path}: {e}") from None
    return prepared


def summary(config: dict[str, Any]) -> str:
    provider = config["provider"]
    if provider["type"] == "local" and "head_ip" in provider:
        return (
            f"cluster {config.get('cluster_name')}, provider local, head {provider['head_ip']}"
            f", workers: {', '.join(provider.get('worker_ips') or []) or 'none'} "
            f"(at most {config.get('max_workers', 0)})"
        )
    where = provider.get("region") or ""
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    workers = ", ".join(
        f"{name} {t.get('min_workers', 0)}-{t.get('max_workers', 0)}"
        for name, t in types.items()
        if name != head
    )
    return (
        f"cluster {config.get('cluster_name')}, provider {provider['type']}"
        f"{f' ({where})' if where else ''}, head {head}, workers: {workers or 'none'} "
        f"(at most {config.get('max_workers', 0)})"
    )


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths or any(p in ("-h", "--help") for p in paths):
        print(
            "usage: python -m tuner.cluster CLUSTER_YAML [...]\n"
            "Check cluster configs against Ray's cluster schema without launching anything."
        )
        return 0 if paths else 2
    status = 0
    for path in paths:
        try:
            config = load_cluster_config(path)
        except ClusterConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
        else:
            print(f"ok: {path}: {summary(config)}")
    return status
