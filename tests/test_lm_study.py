"""A real small language-model study on local Ray, offline: byte-level text from the Python
standard library, judged by validation loss (minimised) through Optuna, ASHA, steps-to-target,
the verdict, the report and TensorBoard."""

import json

import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli
from trainables.text import SEQ_LEN
from tuner.store.table import collect_trials

pytestmark = pytest.mark.ray

LM_ARGS = [
    "transformer_lm_tiny",
    "--batch-sizes",
    "8,32",
    "--budget",
    "steps:60",
    # 3 evaluations a trial (an evaluation is ~1.2 CPU-s, 40% of a trial at every 10 steps):
    # ASHA still stops trials at the first (test_asha_stops_the_higher_loss_trials)
    "--eval-every",
    "20",
    "--rules",
    "sqrt",
    "--optimizers",
    "adamw",
    "--trials",
    "8",
    "--seeds",
    "1",
    "--max-train-examples",
    "3000",
    "--target",
    "3.0",
    "--seed",
    "0",
    # no test here reads the checks' runs (more steps, other lrs, the rule test): their
    # behaviour is tested on digits (test_checks_study); here they were half the study's time
    "--no-checks",
    "--name",
    "lm",
]


@pytest.fixture(scope="module")
def lm_study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("lm")
    proc = run_cli("tuner.search", *LM_ARGS, "--storage", str(storage))
    study = storage / "lm"
    (study / "search.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return study, proc


def test_the_search_minimises_validation_loss(lm_study):
    study, _ = lm_study
    assert json.loads((study / "study.json").read_text())["spec"]["metric"] == "loss"
    storage = optuna.storages.RDBStorage(f"sqlite:///{study / 'optuna.db'}")
    for cell in ("b8", "b32"):
        optuna_study = optuna.load_study(study_name=f"lm/{cell}", storage=storage)
        assert optuna_study.direction == optuna.study.StudyDirection.MINIMIZE
        done = [t for t in optuna_study.trials if t.value is not None]
        # Optuna's best is the lowest final validation loss.
        assert optuna_study.best_value == min(t.value for t in done)


def test_asha_stops_the_higher_loss_trials(lm_study):
    study, _ = lm_study
    table = collect_trials(study)
    stopped = table[table["outcome"] == "stopped"]["trial_id"].unique()
    assert len(stopped) >= 1
    # At the step each stopped trial last reported, at least one trial of its cell that went
    # on had a lower loss there: ASHA kept the better (lower-loss) trials.
    for trial_id in stopped:
        rows = table[table["trial_id"] == trial_id]
        last = rows.sort_values("optimizer_steps").iloc[-1]
        peers = table[
            (table["cell"] == last["cell"])
            & (table["optimizer_steps"] == last["optimizer_steps"])
            & (table["phase"] == "search")
            & (table["trial_id"] != trial_id)
        ]
        assert (peers["val_loss"] < last["val_loss"]).any(), trial_id


def test_trials_report_tokens_and_loss_spread(lm_study):
    study, _ = lm_study
    table = collect_trials(study).dropna(subset=["optimizer_steps"])
    assert (table["tokens_per_example"] == SEQ_LEN).all()
    ratio = table["tokens_per_second"] / table["samples_per_second"]
    assert ratio.round(6).eq(SEQ_LEN).all()
    assert (table["val_loss_sd"] > 0).all() and (table["val_loss"] < 5.6).all()  # < ln 256


def test_the_report_speaks_of_loss(lm_study):
    study, proc = lm_study
    report = (study / "report.md").read_text()
    verdict = report.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "validation loss" in verdict and "nats" in verdict and "perplexity" in verdict
    assert "accuracy" not in verdict
    assert f"sequences of {SEQ_LEN} tokens" in report and "tokens/s" in report
    frontier = json.loads((study / "frontier.json").read_text())
    assert frontier["metric"] == {"name": "loss", "key": "val_loss", "mode": "min"}
    assert frontier["tolerance"] == pytest.approx(0.02)
    # The baseline is the smallest batch size's confirmed (mean) loss; "drop" is its rise.
    rows = pd.DataFrame(frontier["frontier"]).set_index("batch_size")
    base = rows.loc[8, "accuracy"]
    assert pd.notna(base) and pd.notna(rows.loc[32, "accuracy"]), rows
    assert rows.loc[32, "drop"] == pytest.approx(rows.loc[32, "accuracy"] - base)
    # Steps to target: the earliest crossing of 3.0 nats, interpolated between evaluations; a
    # batch size without one never got there in any run (batch 8 sees a quarter of batch 32's
    # data in 60 steps).
    table = collect_trials(study)
    assert (rows["steps"].notna() | rows["steps_at_most"].notna()).any(), rows["steps"]
    for batch in rows.index[rows["steps"].isna()]:
        reached = table[(table["batch_size"] == batch) & (table["val_loss"] <= 3.0)]
        if reached.empty:
            continue  # never got there
        # past the target at a run's first evaluation: at most that many steps (issue 36)
        assert rows.loc[batch, "steps_at_most"] == reached["optimizer_steps"].min(), batch
    for batch, steps in rows["steps"].dropna().items():
        reached = table[(table["batch_size"] == batch) & (table["val_loss"] <= 3.0)]
        row = rows.loc[batch]
        assert row["steps_before"] <= steps <= row["steps_first"]
        assert steps <= reached["optimizer_steps"].min()


def test_tensorboard_summary_has_the_loss_map(lm_study):
    study, _ = lm_study
    acc = EventAccumulator(str(study / "summary"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "frontier/val_loss" in tags and "frontier/accuracy" not in tags
    assert "frontier/tokens_per_second" in tags
