"""A user's own workload (issue 19), without Ray: found by every kind of reference, checked
before anything starts (one `error:` line, exit 2, nothing written), trained by the loop with its
own loss and metric. The real Ray studies are in test_own_workload_study.py."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from tests.test_config import base_config
from trainables import evaluation, loop, trial_data
from trainables.config import TrialConfig
from trainables.workload import Metric, Workload
from trainables.workloads import ENTRY_POINT_GROUP, WorkloadNotFound, by_value, find_workload
from tuner import run_study, search
from tuner.errors import InputError

# A regression of its own: own loss (Huber), own metric (mean absolute error, minimised). The
# factories take what they name; the data are (inputs, targets) tensors.
REGRESSION = """
import torch
from torch import nn
from torch.nn import functional as F

from tuner import Metric, Workload


def data(data_dir, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(600, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.1 * torch.randn(600, generator=g)
    return (x[:480], y[:480]), (x[480:], y[480:])


def model(input_shape):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, 1))


def loss(out, y):
    return F.huber_loss(out.squeeze(-1), y)


def mae(out, y):
    return float((out.squeeze(-1) - y).abs().mean())


workload = Workload(
    name="tiny_regression",
    model=model,
    data=data,
    loss=loss,
    metric=Metric("mae", mae, mode="min", tolerance=0.05),
    batch_sizes=(16, 64),
    budget="steps:60",
    min_steps=0,
    target=0.5,
)


def make():
    return workload
"""

# A classification of its own with every default: accuracy, cross-entropy, DEFAULT_SPACES.
CLASSIFIER = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tuner import Workload


def data(data_dir, seed):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (900,), generator=g)
    x = centres[y] + torch.randn(900, 8, generator=g)
    return TensorDataset(x[:720], y[:720]), TensorDataset(x[720:], y[720:])


def model(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))


workload = Workload(name="blobs", model=model, data=data, batch_sizes=(16, 64), budget="steps:40")
"""


def write_module(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    """A directory outside the repository holding the user's modules, importable by name."""
    directory = tmp_path / "user_code"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return directory


def test_every_kind_of_reference_finds_the_workload(user_dir):
    path = write_module(user_dir, "own_regression_a", REGRESSION)
    by_module = find_workload("own_regression_a:workload")
    assert by_module.name == "tiny_regression"
    assert find_workload("own_regression_a:make") is by_module  # a zero-argument factory
    assert find_workload(f"{path}:workload").name == "tiny_regression"  # a file, by path
    assert find_workload("mnist1d").name == "mnist1d"  # built-in


def test_a_file_reference_on_a_node_without_the_file_imports_the_shipped_module(user_dir):
    """On another node the file's path does not exist; the module came by `py_modules` under
    its file's name."""
    write_module(user_dir, "own_regression_f", REGRESSION)
    workload = find_workload("/nowhere/on/this/node/own_regression_f.py:workload")
    assert workload.name == "tiny_regression"
    with pytest.raises(WorkloadNotFound, match="no such file"):
        find_workload("/nowhere/own_never_shipped.py:workload")


def test_an_installed_package_registers_a_workload_by_name(user_dir, monkeypatch):
    """An entry point in group batch_scaling.workloads, as `pip install` of a package with
    `[project.entry-points."batch_scaling.workloads"]` writes it: found by name and listed."""
    write_module(user_dir, "own_plugin_pkg", CLASSIFIER)
    info = user_dir / "own_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nblobs_plugin = own_plugin_pkg:workload\n"
    )
    assert find_workload("blobs_plugin").name == "blobs"
    listing = search.list_workloads()
    assert "blobs_plugin (from own_plugin_pkg:workload)" in listing
    spec, _ = search.parse_and_check(["blobs_plugin", "--storage", str(user_dir / "s")])
    assert spec.workload == "blobs_plugin" and spec.workload_source == ""  # installed: no ship
    assert spec.batch_sizes == (16, 64) and spec.dataset == "default"


def test_a_module_that_is_not_installed_is_shipped(user_dir):
    write_module(user_dir, "own_regression_b", REGRESSION)
    spec, _ = search.parse_and_check(
        ["own_regression_b:workload", "--storage", str(user_dir / "studies")]
    )
    assert spec.workload_source == str(user_dir / "own_regression_b.py")
    assert spec.workload_name == "tiny_regression" and spec.metric_mode == "min"
    assert spec.own_loss and spec.study_metric.key == "val_metric"
    assert spec.tolerance == 0.05  # the metric's own
    assert spec.reference == 16  # no reference batch declared: the smallest of the grid


# Each bad input: the module's source (None: none written), the reference, what the one line says.
BAD = {
    "no-module": (None, "own_missing_mod:workload", "no module named 'own_missing_mod'"),
    "import-raises": (
        "raise RuntimeError('cannot find the cluster config')\n",
        "own_bad_import:workload",
        "importing own_bad_import failed: RuntimeError: cannot find the cluster config",
    ),
    "no-attribute": ("x = 1\n", "own_no_attr:workload", "has no attribute 'workload'"),
    "wrong-type": ("workload = 42\n", "own_wrong_type:workload", "is a int, not a tuner.Workload"),
    "factory-raises": (
        REGRESSION.replace(
            "g = torch.Generator()", "raise FileNotFoundError('/data/x.csv')\n    g"
        ),
        "own_data_raises:workload",
        "its data factory raised FileNotFoundError: /data/x.csv",
    ),
    "loss-cannot-take-output": (
        REGRESSION.replace("loss=loss,", "loss=None,").replace(
            'metric=Metric("mae", mae, mode="min", tolerance=0.05)', 'metric="loss"'
        ),
        "own_bad_loss:workload",
        "the loss cannot take the model's output (4, 1) with targets (4,)",
    ),
    "too-few-examples": (
        REGRESSION.replace("batch_sizes=(16, 64)", "batch_sizes=(16, 1024)"),
        "own_small_data:workload",
        "--batch-sizes: [1024] exceed the 480 training examples of tiny_regression",
    ),
    "metric-without-direction": (
        REGRESSION.replace('mode="min", ', ""),
        "own_no_direction:workload",
        "metric 'mae' has no direction: give mode='max'",
    ),
    "model-factory-raises": (
        REGRESSION.replace(
            "return nn.Sequential(nn.Linear(input_shape[0], 16)",
            "raise ValueError('depth must be even')\n    return nn.Sequential(nn.Linear(5, 16)",
        ),
        "own_model_raises:workload",
        "its model factory raised ValueError: depth must be even",
    ),
    "loss-not-scalar": (
        REGRESSION.replace("F.huber_loss(out.squeeze(-1), y)", "(out.squeeze(-1) - y).abs()"),
        "own_loss_vector:workload",
        "the loss returns (4,), not a scalar tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_workload_is_one_line_before_anything_starts(case, user_dir, capsys):
    source, ref, said = BAD[case]
    if source is not None:
        write_module(user_dir, ref.split(":")[0], source)
    storage = user_dir / "studies"
    with pytest.raises(SystemExit) as exit_info:
        search.main([ref, "--storage", str(storage), "--name", "s"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert said in err[0], err[0]
    assert not storage.exists()  # nothing written


def test_run_study_refuses_bad_input_before_ray(user_dir):
    write_module(user_dir, "own_regression_c", REGRESSION)
    with pytest.raises(InputError, match="--budget"):
        run_study("own_regression_c:workload", budget="hours:3", storage=str(user_dir / "s"))
    with pytest.raises(TypeError, match="unknown option 'epochz'"):
        run_study("own_regression_c:workload", epochz=3)


def trial_config(ref: str, **overrides) -> TrialConfig:
    values = base_config(
        workload=ref,
        dataset="default",
        batch_size=32,
        budget_unit="steps",
        budget_amount=60,
        eval_every=30,
        reference_batch=32,
        metric="mae",
        metric_mode="min",
        bn_mode="per_worker",
    )
    return TrialConfig.from_dict(values | overrides)


def test_the_loop_trains_with_the_workloads_loss_and_judges_by_its_metric(user_dir):
    write_module(user_dir, "own_regression_d", REGRESSION)
    reports = []
    config = trial_config("own_regression_d:workload", base_lr=0.05)
    loop.train(config, report=lambda m, s: reports.append(m))
    first, last = reports[0], reports[-1]
    assert last["optimizer_steps"] == 60 and not last["diverged"]
    assert last["val_metric"] < first["val_metric"]  # it learns
    assert math.isnan(last["val_acc"])  # float targets: no accuracy
    # val_metric is the metric over every validation example; val_loss is the Huber loss's mean.
    workload = find_workload("own_regression_d:workload")
    splits = trial_data.open_splits(config)
    assert splits.num_classes == 0 and splits.input_shape == (5,)
    torch.manual_seed(0)
    model = workload.build_model(splits.input_shape, 0)
    source = loop.BatchSource(splits, 32, 0, 1, 0, torch.device("cpu"))
    scores = evaluation.evaluate(model, source, 50, torch.device("cpu"), None, workload.loss, None)
    with torch.no_grad():
        out = model(splits.val.x)
    per_example = torch.nn.functional.huber_loss(out.squeeze(-1), splits.val.y, reduction="none")
    assert scores["val_loss"] == pytest.approx(float(per_example.mean()), rel=1e-5)
    # The spread from chunks of 4 estimates the per-example one (within sampling error).
    assert scores["val_loss_sd"] == pytest.approx(float(per_example.std()), rel=0.35)
    cpu = torch.device("cpu")
    scored = evaluation.evaluate(model, source, 50, cpu, None, workload.loss, workload.metric.fn)
    mae = float((out.squeeze(-1) - splits.val.y).abs().mean())
    assert scored["val_metric"] == pytest.approx(mae)


def test_a_test_set_of_its_own_is_scored_at_the_end_only(user_dir):
    """data returning (train, val, test): the run's end is scored on the test set too."""
    source = CLASSIFIER.replace(
        "return TensorDataset(x[:720], y[:720]), TensorDataset(x[720:], y[720:])",
        "return (x[:600], y[:600]), (x[600:750], y[600:750]), (x[750:], y[750:])",
    )
    write_module(user_dir, "own_blobs_test", source)
    config = trial_config("own_blobs_test:workload", metric="accuracy", metric_mode="max")
    splits = trial_data.open_splits(config)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (600, 150, 150)
    reports = []
    loop.train(config, report=lambda m, s: reports.append(m))
    assert all("test_acc" not in r for r in reports[:-1])
    assert reports[-1]["test_examples"] == 150 and 0.5 < reports[-1]["test_acc"] <= 1.0
    assert reports[-1]["val_examples"] == 150


def test_a_run_of_its_own_loss_diverges_cleanly(user_dir):
    """Beyond `divergence_factor` x the first window's loss (no chance level is known)."""
    write_module(user_dir, "own_regression_e", REGRESSION)
    reports = []
    config = trial_config("own_regression_e:workload", base_lr=50.0, optimizer="sgd")
    loop.train(config, report=lambda m, s: reports.append((m, s)))
    metrics, state = reports[-1]
    assert metrics["diverged"] and metrics["optimizer_steps"] < 60
    assert state["finished"]


def test_a_workload_defined_in_a_notebook_travels_by_value(user_dir):
    """No module holds it: the reference carries the object (cloudpickle), and a fresh lookup
    of that reference in another process gets the same workload back."""
    import cloudpickle

    namespace: dict = {}
    exec(textwrap.dedent(REGRESSION), namespace)  # as a notebook cell would define it
    ref = by_value(namespace["workload"])
    assert ref.startswith("value:")
    again = cloudpickle.loads(cloudpickle.dumps(ref))
    from trainables import workloads

    workloads._FOUND.pop(again, None)  # as in a fresh worker process
    assert find_workload(again).name == "tiny_regression"


def test_a_declaration_problem_is_said_in_one_line():
    odd = Workload(name="x", model=torch.nn.Linear, data=None, metric=Metric("r2", len, "up"))
    problems = odd.problems()
    assert "data is missing: give data=FACTORY returning (train, val)" in problems
    assert any("has no direction" in p for p in problems)
    with pytest.raises(WorkloadNotFound, match="MODULE:ATTRIBUTE"):
        find_workload("no.such:thing:")
