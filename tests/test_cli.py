"""The study CLI as a user runs it: a few bad inputs (each one `error:` line, exit 2, no traceback;
the full table is tests/test_bad_inputs.py), the listing, and a suggestion where data is missing."""

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "args, expected",
    [
        # Each once looped forever, traced back after writing study.json, or wrote elsewhere.
        (["simple_cnn", "--batch-sizes=0:512"], "batch sizes must be >= 1"),
        (["simple_cnn", "--seed", "4294967296"], "--seed 4294967296: must be at least 0"),
        (["simple_cnn", "--name", "../../x"], "--name '../../x': use letters"),
        (["resnet51"], "unknown workload 'resnet51'; known: lstm_lm, mnist1d, resnet50"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    proc = run_cli(
        "tuner.search", *args, "--storage", str(tmp_path / "s"), timeout=120, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "s").exists()


def test_resnet50_without_imagenet_suggests_what_works(tmp_path):
    proc = run_cli(
        "tuner.search", "resnet50", "--data-dir", "/nonexistent", "--storage",
        str(tmp_path / "s"), check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--dataset synthetic" in proc.stderr and "cifar10" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_list_names_every_workload():
    out = run_cli("tuner.search", "--list").stdout
    for name in (
        "simple_cnn",
        "mnist1d",
        "resnet8",
        "resnet50",
        "vgg11",
        "transformer_lm",
        "lstm_lm",
    ):
        assert f"{name}: " in out
    assert "--dataset imagenet (needs files)" in out
