"""The study CLI's bad inputs: each a one-line error and exit code 2, before Ray starts."""

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "args, expected",
    [
        (["resnet51"], "unknown workload 'resnet51'; known: mnist1d, resnet50"),
        (["simple_cnn", "--workers-per-trial", "3"], "cannot be split evenly across 3 workers"),
        (
            ["resnet50", "--data-dir", "/nonexistent/imagenet"],
            "expected ImageFolder layout at /nonexistent/imagenet/train",
        ),
        (["simple_cnn", "--trials", "2"], "2 trials cannot cover 4 batch sizes"),
        (["simple_cnn", "--dataset", "cifar10"], "does not run on 'cifar10'"),
        (["simple_cnn", "--batch-sizes", "8,4096"], "exceed the 1438 training examples of digits"),
        (
            ["simple_cnn", "--resume", "--name", "missing", "--storage", "/nonexistent"],
            "no study to resume at /nonexistent/missing",
        ),
    ],
)
def test_bad_input_is_one_clear_line(args, expected):
    proc = run_cli("tuner.search", *args, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_resnet50_without_imagenet_suggests_what_works():
    proc = run_cli("tuner.search", "resnet50", "--data-dir", "/nonexistent", check=False)
    assert "--dataset synthetic" in proc.stderr and "cifar10" in proc.stderr


def test_list_names_every_workload():
    out = run_cli("tuner.search", "--list").stdout
    for name in ("simple_cnn", "mnist1d", "resnet8", "resnet50", "vgg11"):
        assert f"{name}: " in out
    assert "--dataset imagenet (needs files)" in out
