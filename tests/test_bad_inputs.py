"""Every bad input is one `error:` line and exit code 2, before Ray starts and before anything is
written: a table of CLI options, their combinations, `--resume` contradictions, and malformed
cluster configs. In-process (fast, no Ray); `test_cli.py` runs a few of them as a user would."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tuner import search
from tuner.cluster import config as cluster_config
from tuner.options import build_parser
from tuner.resolve import build_spec
from tuner.spec import save_spec

# (arguments after the workload, a fragment the one error line must hold)
BAD_OPTIONS = [
    (["--batch-sizes", "0:512"], "--batch-sizes: '0:512': batch sizes must be >= 1"),
    (["--batch-sizes=-8:512"], "batch sizes must be >= 1"),
    (["--batch-sizes", "-8:512"], "argument --batch-sizes: expected one argument"),
    (["--batch-sizes", "8:4"], "'8:4' is an empty range"),
    (["--batch-sizes", "8,8"], "names a batch size twice"),
    (["--batch-sizes", "8,x"], "is not a list of integers"),
    (["--batch-sizes", "1:1000000000000000000000000"], "over 64 batch sizes"),
    (["--trials", "0"], "--trials 0: must be at least 1"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--max-device-batch", "0"], "--max-device-batch 0: must be at least 1"),
    (["--worker-retries", "-1"], "--worker-retries -1: must be at least 0"),
    (["--loader-workers", "0"], "--loader-workers 0: must be at least 1"),
    (["--decode", "nvjpeg"], "argument --decode: invalid choice"),
    (["--decode", "gpu", "--gpus-per-worker", "0"], "--decode gpu needs GPU workers"),
    (["--reduction-factor", "1"], "--reduction-factor 1: must be at least 2"),
    (["--grace-epochs", "0"], "--grace-epochs 0: must be at least 1"),
    (["--seed", "-1"], "--seed -1: must be at least 0 and at most 4294967295"),
    (["--seed", "4294967296"], "--seed 4294967296: must be at least 0"),
    (["--target", "95"], "--target 95 is not an accuracy in (0, 1] (write 0.95, not 95)"),
    (["--target", "0"], "--target 0: must be above 0"),
    (["--name", "../../x"], "--name '../../x': use letters, digits"),
    (["--name", ""], "--name '': use letters"),
    (["--storage", " "], "--storage is empty"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker 0: must be above 0"),
    (["--gpus-per-worker", "2"], "--gpus-per-worker 2: must be at least 0 and at most 1"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker -1: must be at least 0"),
    (
        ["--gpus-per-worker", "0.5", "--workers-per-trial", "2", "--batch-sizes", "8,32"],
        "would put several NCCL ranks of one trial on one GPU",
    ),
    (
        ["--bn-mode", "sync", "--gpus-per-worker", "0", "--workers-per-trial", "2"],
        "--bn-mode sync needs GPU workers",
    ),
    (["--bn-mode", "batch"], "argument --bn-mode: invalid choice: 'batch'"),
    (
        ["--bn-mode", "per_worker", "--ghost-batch", "64"],
        "--ghost-batch only applies with --bn-mode ghost",
    ),
    (["--budget", "weeks:2"], "--budget weeks:2: budget unit 'weeks'"),
    (["--budget", "steps:2.5"], "the amount must be a positive whole number"),
    (["--budget", "300"], "write UNIT:AMOUNT"),
    (["--epochs", "3", "--budget", "steps:10"], "--epochs E is --budget epochs:E"),
    (["--grace", "1"], "--grace 1: ASHA's first rung is a fraction of the budget in (0, 1)"),
    (["--grace", "0.1"], "--grace: ASHA's first rung at 0.1 of the budget falls inside the"),
    (["--grace-epochs", "1", "--epochs", "10"], "--grace-epochs: ASHA's first rung at 0.1 of"),
    (["--grace-epochs", "1", "--budget", "steps:100"], "--grace-epochs needs an epochs budget"),
    (["--rules", "cubic"], "--rules cubic: not in this workload's space"),
    (["--optimizers", "lars"], "--optimizers lars: not in this workload's space"),
    (["--stratify", "seed"], "--stratify seed: use rule, optimizer"),
    (["--lr-range", "0.3,0.001"], "argument --lr-range: '0.3,0.001': need 0 < LOW < HIGH"),
    (["--lr-range", "0.1"], "argument --lr-range: '0.1': write LOW,HIGH"),
    (["--max-steps", "-1"], "--max-steps -1: must be at least 0"),
    (["--speculate", "9"], "--speculate 9: must be at least 0 and at most 8"),
    (["--speculate", "-1"], "--speculate -1: must be at least 0"),
    (["--tolerance", "-1"], "--tolerance -1: must be at least 0"),
    (["--tolerance", "100"], "--tolerance 100: percentage points below 100"),
    (["--seeds", "-1"], "--seeds -1: must be at least 0"),
    (["--eval-every", "0"], "--eval-every 0: must be at least 1"),
    (["--min-steps", "-1"], "--min-steps -1: must be at least 0"),
    (["--max-concurrent", "-1"], "--max-concurrent -1: must be at least 0"),
    (["--max-train-examples", "-5"], "--max-train-examples -5: must be at least 0"),
    (["--divergence-factor", "1"], "--divergence-factor 1: must be above 1"),
    (["--divergence-factor", "nan"], "--divergence-factor nan: must be above 1"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (
        ["--grace-epochs", "5", "--epochs", "3"],
        "--grace-epochs 5 is not before the end of the 3-epoch budget",
    ),
    (
        ["--trials", "2"],
        "2 trials cannot cover the 4 cells of this study (4 batch sizes)",
    ),
    (["--workers-per-trial", "3"], "cannot be split evenly across 3 workers"),
    (["--dataset", "cifar10"], "--dataset cifar10: workload 'simple_cnn' does not run on"),
    (["--batch-sizes", "8,4096"], "exceed the 1438 training examples of digits"),
    (["--workers-per-trial", "512", "--batch-sizes", "512"], "one trial needs 512 workers"),
    (["--address", "http://10.0.0.1:8265"], "--address http://10.0.0.1:8265: that is a URL"),
    (["--address", "head-node"], "expected HOST:PORT"),
    (["--dry-run", "--resume"], "--dry-run plans a new study"),
    (["--trust-code"], "--trust-code goes with --resume"),
    # --method branch (tuner.branch)
    (["--method", "branches"], "argument --method: invalid choice: 'branches'"),
    (["--method", "branch", "--branch-at", "0,0.5"], "a fraction of the budget in (0, 1)"),
    (["--method", "branch", "--branch-at", "0.5,1"], "a fraction of the budget in (0, 1)"),
    (["--method", "branch", "--branch-at", "0.5,0.5"], "names a checkpoint twice"),
    (["--method", "branch", "--branch-at", ","], "is not a list of numbers"),
    (["--method", "branch", "--window", "0"], "--window 0: must be at least 1"),
    (["--method", "branch", "--base-lr", "0"], "--base-lr 0: must be above 0"),
    (["--method", "branch", "--tolerance", "0"], "which must be above 0"),
    (["--method", "branch", "--batch-sizes", "8"], "--method branch needs a largest batch"),
    (["--method", "branch", "--batch-sizes", "8,12"], "at least twice the smallest"),
    (["--method", "branch", "--seeds", "0"], "--seeds 0: a branch study confirms"),
    (["--method", "branch", "--trials", "8"], "--trials is an option of the grid method"),
    (["--method", "branch", "--max-steps", "900"], "--max-steps is an option of the grid"),
    (["--method", "branch", "--stop-at-target"], "an option of the grid method"),
    (["--method", "branch", "--speculate", "1"], "--speculate is an option of the grid method"),
    (["--window", "4096"], "--window only applies with --method branch"),
    (["--branch-at", "0.5", "--verify-schedule"], "--branch-at, --verify-schedule only apply"),
]


@pytest.fixture(autouse=True)
def no_study_starts(monkeypatch):
    """Should an input in the table pass every check, fail at once instead of starting Ray."""
    from tuner.study import session

    def refuse(*args, **kwargs):
        raise AssertionError("the input was accepted: Ray would start now")

    monkeypatch.setattr(session, "prepare", refuse)


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """`python -m tuner.search ARGV` in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exited:
        search.main(argv)
    return exited.value.code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err


def snapshot(directory: Path) -> dict[str, float] | None:
    """Every file under `directory` with its modification time (None: it does not exist)."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


def ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture(autouse=True)
def _no_ray_yet(no_ray_in_this_process) -> None:
    """Each test here checks that a bad input starts no Ray in this process: the shared Ray an
    earlier test left running here (tests/conftest.py: local_ray) is ended first (seen: run
    after test_faults in the same process, every such test failed)."""


@pytest.mark.parametrize("args, fragment", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_and_writes_nothing(args, fragment, tmp_path, capsys):
    storage = tmp_path / "studies"
    argv = ["simple_cnn", *args, "--storage", str(storage), "--name", "s"]
    if "--storage" in args:
        argv = ["simple_cnn", *args, "--name", "s"]
    if "--name" in args:
        argv = ["simple_cnn", *args, "--storage", str(storage)]
    code, err = run_main(argv, capsys)
    assert_one_error_line(code, err, fragment)
    assert snapshot(storage) is None  # not even the storage directory was made
    assert not ray_started()


WORKLOAD_AND_DATA = [
    ([], "name a workload"),
    (["resnet51"], "unknown workload 'resnet51'; known: lstm_lm, mnist1d, resnet50"),
    (["--resume"], "--resume needs --name NAME"),
    (["resnet50", "--data-dir", "/nonexistent/imagenet"], "expected ImageFolder layout"),
    (["lstm_lm", "--dataset", "text", "--data-dir", "/nonexistent"], "text: no folder at"),
    (["transformer_lm", "--dataset", "digits"], "does not run on 'digits'"),
    (["simple_cnn", "--dataset", "mnist5k", "--target", "95"], "not an accuracy in (0, 1]"),
]


@pytest.mark.parametrize("argv, fragment", WORKLOAD_AND_DATA)
def test_missing_or_unknown_workload_and_data(argv, fragment, tmp_path, capsys):
    code, err = run_main([*argv, "--storage", str(tmp_path / "studies")], capsys)
    assert_one_error_line(code, err, fragment)
    assert snapshot(tmp_path / "studies") is None


@pytest.fixture
def saved_study(tmp_path) -> Path:
    """A study directory with a real study.json, as a first run leaves it."""
    args = build_parser().parse_args(
        ["simple_cnn", "--storage", str(tmp_path / "studies"), "--name", "s", "--epochs", "6"]
    )
    spec = build_spec(args, gpus_available=False)
    save_spec(spec)
    return spec.study_dir


RESUME_CONTRADICTIONS = [
    (["--epochs", "9"], "--epochs 9 contradicts its budget epochs:6"),
    (["--batch-sizes", "8,32"], "--batch-sizes 8,32 contradicts its batch_sizes 8,32,128,512"),
    (["mnist1d"], "the workload mnist1d contradicts its workload simple_cnn"),
    (["--seed", "3"], "--seed 3 contradicts its seed 0"),
    (["--smoke"], "--smoke contradicts its budget epochs:6"),
    (["--target", "0.5"], "--target 0.5 contradicts its target 0.95"),
]


@pytest.mark.parametrize("args, fragment", RESUME_CONTRADICTIONS)
def test_resume_refuses_what_contradicts_the_saved_study(args, fragment, saved_study, capsys):
    before = snapshot(saved_study)
    argv = ["--resume", "--storage", str(saved_study.parent), "--name", "s", *args]
    code, err = run_main(argv, capsys)
    assert_one_error_line(code, err, fragment)
    assert snapshot(saved_study) == before
    assert not ray_started()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--branch-at", "0.3"], "--branch-at 0.3 contradicts its branch_at 0.01,0.1,0.25,0.5"),
        (["--method", "grid"], "--method grid contradicts its method branch"),
    ],
)
def test_a_branch_study_resumes_only_as_it_was_saved(args, fragment, tmp_path, capsys):
    argv = ["simple_cnn", "--storage", str(tmp_path / "studies"), "--name", "b"]
    spec = build_spec(build_parser().parse_args([*argv, "--method", "branch"]), False)
    save_spec(spec)
    before = snapshot(spec.study_dir)
    code, err = run_main(
        ["--resume", "--storage", str(tmp_path / "studies"), "--name", "b", *args], capsys
    )
    assert_one_error_line(code, err, fragment)
    assert snapshot(spec.study_dir) == before
    assert not ray_started()


def test_resume_of_a_study_that_does_not_exist(tmp_path, capsys):
    code, err = run_main(["--resume", "--name", "nope", "--storage", str(tmp_path)], capsys)
    assert_one_error_line(code, err, f"no study to resume at {tmp_path / 'nope'}")


def test_a_new_study_never_takes_an_existing_name(saved_study, capsys):
    before = snapshot(saved_study)
    code, err = run_main(
        ["simple_cnn", "--storage", str(saved_study.parent), "--name", "s"], capsys
    )
    assert_one_error_line(code, err, "study s already exists")
    assert snapshot(saved_study) == before


def test_resume_applies_and_says_what_may_change(saved_study, monkeypatch, capsys):
    """Options that may change on resume reach the session; the user is told which."""
    from tuner.study import session

    seen = {}

    def stop(spec, options):
        seen["spec"], seen["options"] = spec, options
        raise SystemExit(0)

    monkeypatch.setattr(session, "prepare", stop)
    argv = ["--resume", "--storage", str(saved_study.parent), "--name", "s"]
    argv += ["--max-concurrent", "3", "--worker-retries", "0", "--epochs", "6", "--no-report"]
    with pytest.raises(SystemExit):
        search.main(argv)
    err = capsys.readouterr().err
    assert "resume: --max-concurrent 3 (was 0) applied" in err
    assert "resume: --worker-retries 0 (was 2) applied" in err
    assert seen["spec"].max_concurrent == 3 and seen["spec"].worker_retries == 0
    assert seen["spec"].budget == "epochs:6"  # given, and the same as saved: no contradiction
    assert seen["options"].resume and not seen["options"].report


# --- malformed cluster configs (python -m tuner.cluster FILE) --------------------------------

CLUSTER = """\
cluster_name: t
provider: {type: local, head_ip: 10.0.0.1, worker_ips: []}
auth: {ssh_user: ubuntu}
"""
BAD_CLUSTER_CONFIGS = [
    ("cluster_name: [unclosed\n", "not valid YAML at line 2, column 1"),
    ("- just\n- a list\n", "expected a mapping of settings"),
    ("cluster_name: t\nauth: {ssh_user: ubuntu}\n", "missing required key 'provider'"),
    (CLUSTER + "max_workers: many\n", "max_workers: expected integer"),
    (CLUSTER + "frobnicate: 1\n", "frobnicate"),
    (
        CLUSTER + "head_start_ray_commands: ['ray start --head --dashboard-host=0.0.0.0']\n",
        "exposes the dashboard beyond the node",
    ),
]


@pytest.mark.parametrize("text, fragment", BAD_CLUSTER_CONFIGS)
def test_a_bad_cluster_config_is_one_line(text, fragment, tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    assert cluster_config.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(2, err, fragment)
    assert err.startswith(f"error: {path}: ")


def test_the_table_covers_at_least_25_inputs():
    tables = (BAD_OPTIONS, WORKLOAD_AND_DATA, RESUME_CONTRADICTIONS, BAD_CLUSTER_CONFIGS)
    total = sum(len(table) for table in tables)
    assert total >= 25


def test_the_report_of_a_branch_study_that_has_not_finished_is_one_line(tmp_path, capsys):
    from tuner.report.cli import main as report_main

    argv = ["simple_cnn", "--storage", str(tmp_path / "studies"), "--name", "b"]
    spec = build_spec(build_parser().parse_args([*argv, "--method", "branch"]), False)
    save_spec(spec)
    before = snapshot(spec.study_dir)
    code = report_main([str(spec.study_dir)])
    err = capsys.readouterr().err
    assert_one_error_line(code, err, "b is a branch study with no branch.json yet")
    assert "--resume --name b" in err
    assert snapshot(spec.study_dir) == before
