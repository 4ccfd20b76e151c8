"""Cluster configs against Ray's own cluster schema, offline (fast: nothing is launched)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tuner.cluster.capacity import possible_nodes, workers_that_fit
from tuner.cluster.config import ClusterConfigError, load_cluster_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster-local.yaml"


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ClusterConfigError) as caught:
        load_cluster_config(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def aws_with(tmp_path: Path, change) -> Path:
    """The shipped AWS config with one change applied."""
    config = yaml.safe_load(AWS.read_text())
    change(config)
    return write(tmp_path, yaml.safe_dump(config))


# --- the shipped configs ---------------------------------------------------------------------


def test_aws_config_validates_with_cpu_head_and_gpu_workers():
    config = load_cluster_config(AWS)
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] and config["provider"]["availability_zone"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"] and head["node_config"]["InstanceType"].startswith("m")
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert {t["node_config"]["InstanceType"] for t in workers.values()} == {
        "g5.12xlarge",
        "p4d.24xlarge",
    }  # 4 and 8 GPUs
    for node_type in workers.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"] <= config["max_workers"]
    # The project is installed on every node, the token copied, the dashboard on loopback.
    assert any("pip install" in c and "batch-scaling-study" in c for c in config["setup_commands"])
    assert config["file_mounts"]["~/batch-scaling-study"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert ".venv" in config["rsync_exclude"]


def test_local_config_validates_with_head_and_worker_ips():
    config = load_cluster_config(LOCAL)
    provider = config["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    written = yaml.safe_load(LOCAL.read_text())
    assert "available_node_types" not in written  # the local provider makes its own
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert any("pip install" in c for c in config["setup_commands"])


def test_cli_prints_ok_for_both_and_fails_in_one_line(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "tuner.cluster", str(AWS), str(LOCAL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ok: ") for line in lines), ok.stdout
    assert "provider aws" in lines[0] and "provider local" in lines[1]
    assert ok.stderr == ""  # Ray's launcher chatter is swallowed

    bad = write(tmp_path, "cluster_name: x\nprovider: aws\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.cluster", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: provider: expected object, got str 'aws'"
    ]


# --- malformed configs: one clear line each ----------------------------------------------------


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = write(
        tmp_path,
        """\
        cluster_name: x
        provider:
          type: aws
           region: us-west-2
        """,
    )
    message = error_of(path)
    assert "not valid YAML at line 4" in message, message


def test_missing_required_key(tmp_path):
    message = error_of(write(tmp_path, "cluster_name: x\nmax_workers: 2\n"))
    assert message.endswith("missing required key 'provider'"), message


def test_missing_required_key_of_a_node_type(tmp_path):
    def drop(config):
        del config["available_node_types"]["gpu-4x"]["node_config"]

    message = error_of(aws_with(tmp_path, drop))
    assert "available_node_types.gpu-4x: missing required key 'node_config'" in message, message


def test_wrong_type(tmp_path):
    message = error_of(aws_with(tmp_path, lambda c: c.update(max_workers="six")))
    assert message.endswith("max_workers: expected integer, got str 'six'"), message


def test_wrong_type_deep_in_a_node_type(tmp_path):
    def fractional(config):
        config["available_node_types"]["gpu-4x"]["resources"] = {"GPU": 0.5}

    message = error_of(aws_with(tmp_path, fractional))
    assert "available_node_types.gpu-4x.resources.GPU: expected integer, got float 0.5" in message


def test_unknown_key(tmp_path):
    message = error_of(aws_with(tmp_path, lambda c: c["auth"].update(ssh_port=2222)))
    assert "auth:" in message and "'ssh_port' was unexpected" in message, message


def test_head_node_type_must_be_a_node_type(tmp_path):
    message = error_of(aws_with(tmp_path, lambda c: c.update(head_node_type="nope")))
    assert "head_node_type" in message and "available_node_types" in message, message


def test_min_workers_above_global_max(tmp_path):
    def too_many(config):
        config["available_node_types"]["gpu-4x"]["min_workers"] = 7

    message = error_of(aws_with(tmp_path, too_many))
    assert "max_workers" in message and "min_workers" in message, message


def test_local_provider_without_head_ip(tmp_path):
    config = yaml.safe_load(LOCAL.read_text())
    del config["provider"]["head_ip"]
    message = error_of(write(tmp_path, yaml.safe_dump(config)))
    assert "head_ip" in message, message


def test_not_a_mapping_and_not_a_file(tmp_path):
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n"))
    assert "cannot read it" in error_of(tmp_path / "absent.yaml")


# --- nothing exposed beyond SSH ----------------------------------------------------------------


def test_dashboard_on_all_interfaces_is_refused(tmp_path):
    def expose(config):
        config["head_start_ray_commands"] = [
            "ray stop",
            "ray start --head --dashboard-host=0.0.0.0",
        ]

    message = error_of(aws_with(tmp_path, expose))
    assert "--dashboard-host=0.0.0.0" in message and "ray dashboard" in message, message


def test_rays_aws_default_start_commands_expose_the_dashboard(tmp_path):
    """Leaving head_start_ray_commands out gets Ray's AWS default, which binds 0.0.0.0."""

    def default(config):
        del config["head_start_ray_commands"]

    message = error_of(aws_with(tmp_path, default))
    assert "Ray's default for provider aws" in message, message


def test_security_group_may_open_ssh_only(tmp_path):
    def open_dashboard(config):
        config["provider"]["security_group"] = {
            "GroupName": "g",
            "IpPermissions": [
                {
                    "FromPort": 8265,
                    "ToPort": 8265,
                    "IpProtocol": "tcp",
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
            ],
        }

    message = error_of(aws_with(tmp_path, open_dashboard))
    assert "8265" in message and "SSH" in message, message

    def open_ssh(config):
        config["provider"]["security_group"] = {
            "GroupName": "g",
            "IpPermissions": [
                {
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpProtocol": "tcp",
                    "IpRanges": [{"CidrIp": "203.0.113.0/24"}],
                }
            ],
        }

    load_cluster_config(aws_with(tmp_path, open_ssh))


# --- what a cluster can hold -------------------------------------------------------------------


def test_possible_nodes_head_plus_every_type_at_its_max():
    config = load_cluster_config(AWS)
    # As `ray up` leaves it on the head: resources filled in from the instance types.
    types = config["available_node_types"]
    types["gpu-4x"]["resources"] = {"CPU": 48, "GPU": 4}
    types["gpu-8x"]["resources"] = {"CPU": 96, "GPU": 8}
    nodes = possible_nodes(config)
    assert nodes.count({"CPU": 96.0, "GPU": 8.0}) == 2
    assert nodes.count({"CPU": 48.0, "GPU": 4.0}) == 4
    assert nodes[0] == {"CPU": 0.0}  # the head holds no trial worker
    assert len(nodes) == 1 + config["max_workers"]


def test_possible_nodes_respects_the_global_worker_budget():
    config = {
        "max_workers": 3,
        "head_node_type": "h",
        "available_node_types": {
            "h": {"resources": {"CPU": 4}},
            "small": {"resources": {"CPU": 8}, "max_workers": 5},
            "big": {"resources": {"CPU": 64}, "max_workers": 2},
        },
    }
    nodes = possible_nodes(config)
    assert nodes == [{"CPU": 4.0}, {"CPU": 64.0}, {"CPU": 64.0}, {"CPU": 8.0}]


def test_workers_that_fit_never_splits_a_worker_across_nodes():
    two_by_two = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert workers_that_fit(two_by_two, 1, 0) == 4
    assert workers_that_fit(two_by_two, 2, 0) == 2
    assert workers_that_fit(two_by_two, 3, 0) == 0  # 4 CPUs in total, but no node has 3
    gpu = [{"CPU": 0.0}, {"CPU": 48.0, "GPU": 4.0}, {"CPU": 96.0, "GPU": 8.0}]
    assert workers_that_fit(gpu, 1, 1) == 12
    assert workers_that_fit(gpu, 8, 1) == 4 + 8  # CPUs bind: 48 // 8 = 6 > 4 GPUs
    assert workers_that_fit(gpu, 13, 1) == 3 + 7
    assert workers_that_fit([{"CPU": 2.0}], 1, 1) == 0  # no GPU anywhere
