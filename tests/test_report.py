"""The report: hand-built studies (fast) and one real study read back through TensorBoard (ray)."""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.request
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.test_analysis import (
    confirmations,
    degradation_table,
    synthetic_scaling_table,
    table,
    trial,
)
from tuner.analysis.steps import measured_runs
from tuner.options import build_parser
from tuner.report import write as report_module
from tuner.report.cli import main
from tuner.report.figures import FIGURE_TITLES
from tuner.report.write import write_report
from tuner.resolve import build_spec
from tuner.spec import load_spec, save_spec
from tuner.store.table import COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_study(storage: Path, batch_sizes: str, name: str = "hand", *extra: str) -> Path:
    """A study directory with a real study.json (no trials run)."""
    args = build_parser().parse_args(
        [
            "simple_cnn",
            "--dataset",
            "digits",
            "--batch-sizes",
            batch_sizes,
            "--storage",
            str(storage),
            "--name",
            name,
            "--target",
            "0.9",
            *extra,
        ]
    )
    spec = build_spec(args, gpus_available=False)
    save_spec(spec)
    return spec.study_dir


def report_on(study_dir: Path, trials: pd.DataFrame, monkeypatch, **kwargs) -> str:
    """Write the report of `study_dir` as if its files held `trials`; return report.md."""
    monkeypatch.setattr(report_module, "collect_trials", lambda _: trials)
    path = write_report(study_dir, n_boot=200, **kwargs)
    assert path == study_dir / "report.md"
    return path.read_text()


def verdict_of(text: str) -> str:
    return text.split("## Verdict", 1)[1].split("\n## ", 1)[0]


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def assert_all_outputs(study_dir: Path) -> None:
    for name in ("report.md", "frontier.csv", "frontier.json", "trials.csv"):
        assert (study_dir / name).is_file(), name
    for stem in FIGURE_TITLES:
        assert_valid_png(study_dir / "figures" / f"{stem}.png")
    assert list((study_dir / "summary").glob("events.out.tfevents.*"))


# --- hand-built studies (no Ray) ------------------------------------------------------------


def test_verdict_on_known_degradation(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128,512")
    text = report_on(study, degradation_table(), monkeypatch)
    verdict = verdict_of(text)
    assert (
        "accuracy holds within 1.0 pt of the batch-8 baseline (98.0% (3 seed(s), sd 0.5 pt)) "
        "up to batch 32: 98.0% (3 seed(s), sd 0.2 pt) with linear scaling" in verdict
    )
    assert (
        "Degraded at batch 512: 93.7% (3 seed(s), sd 0.4 pt) at 200 steps (2x its budget; "
        "against the baseline at its own budget: it was not run with more steps), drop 4.3 pt"
        in verdict
    )  # a study that ended before the baseline had twice its steps: said, not hidden
    assert (
        "a plateau at 200 steps: neither half nor twice the lr gained more than 1 pt, nor did "
        "twice the steps at any of the three" in verdict
    )
    assert "Unresolved at batch 128: the drop's bounds straddle the 1.0 pt tolerance" in verdict
    assert_all_outputs(study)
    frontier = pd.read_csv(study / "frontier.csv")
    assert frontier["batch_size"].tolist() == [8, 32, 128, 512]
    assert frontier["status"].tolist() == ["baseline", "holds", "unresolved", "degraded"]
    assert frontier["accuracy"].round(4).tolist() == [0.98, 0.98, 0.97, 0.937]
    data = json.loads((study / "frontier.json").read_text())
    assert data["holds_up_to"] == 32
    assert data["baseline"] == {
        "batch_size": 8,
        "accuracy": pytest.approx(0.98),
        "runs": 3,
        "source": "confirmed",
        "val_examples": 10000,
    }


def test_the_baselines_runs_started_ahead_and_stopped_are_counted_and_judge_nothing(
    tmp_path, monkeypatch
):
    """--speculate: the baseline at 4x its budget started ahead of batch 512's check, which
    stopped at 2x, and was stopped unused. The report counts them among the checks and says
    so; batch 512 is still judged against the baseline at 2x, as without them."""
    from tests.test_analysis import extensions

    study = make_study(tmp_path, "8,32,128,512")
    base_longer = extensions(8, [0.985, 0.990, 0.995], 200, val_examples=10000)
    ahead = extensions(8, [0.99, 0.99, 0.99], 400, val_examples=10000, outcome="stopped")
    plain = report_on(study, pd.concat(
        [degradation_table(), table(*base_longer)], ignore_index=True
    ), monkeypatch, tensorboard=False)  # fmt: skip
    frontier = pd.read_csv(study / "frontier.csv")
    text = report_on(study, pd.concat(
        [degradation_table(), table(*base_longer, *ahead)], ignore_index=True
    ), monkeypatch, tensorboard=False)  # fmt: skip
    assert (
        "run(s) with another lr or more steps (3 of them the baseline's, started ahead of the "
        "checks and stopped once none could use them: --speculate)" in verdict_of(text)
    )
    assert "started ahead" not in plain
    pd.testing.assert_frame_equal(pd.read_csv(study / "frontier.csv"), frontier)
    assert "against the baseline given 2x its steps too: 99.0%" in verdict_of(text)


def test_the_verdict_gives_both_answers_and_what_data_each_compared(tmp_path, monkeypatch):
    """Equal steps, 1000 training examples: "holds up to 32" is said to be given 4x the
    baseline's data, and the equal-data answer (batch 32 run for the baseline's 800 examples,
    25 steps) stands beside it, in the verdict, its own table and frontier.json."""
    from tests.test_analysis import extensions

    study = make_study(tmp_path, "8,32,128,512")
    at_equal_data = extensions(32, [0.900, 0.910, 0.905], 25, val_examples=10000)
    # batch 512 was judged at twice its steps: the baseline ran twice its own too
    base_longer = extensions(8, [0.985, 0.990, 0.995], 200, val_examples=10000)
    trials = pd.concat(
        [degradation_table(), table(*at_equal_data, *base_longer)], ignore_index=True
    )
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    verdict = verdict_of(text)
    assert (
        "The answer above is given more data: each batch size was judged at the data its "
        "budget and checks gave it, against the baseline's 100 steps, 0.8 epochs: batch 32 at "
        "100 steps, 3.2 epochs, 4x; 128 at 100 steps, 13 epochs, 16x; 512 at 200 steps, 102 "
        "epochs, 128x the baseline's examples; the checks gave batch 512 more steps than its "
        "budget, and the baseline the same multiple of its own before they were compared."
        in verdict
    )
    assert (
        "Degraded at batch 512: 93.7% (3 seed(s), sd 0.4 pt) at 200 steps (2x its budget; "
        "against the baseline given 2x its steps too: 99.0%), drop 5.3 pt" in verdict
    )
    assert (
        "At equal data (each batch size's confirmed configuration run again with the "
        "confirmation seeds for the baseline's 100 steps, 0.8 epochs, at half and twice its lr "
        "while one gained more than 1.0 pt, as the baseline's lr was checked, and where that "
        "moved its lr, the lr it chose run again with fresh seeds), accuracy is not "
        "shown to hold within 1.0 pt beyond batch 8; degraded at batch 32: 90.5% at 25 steps, "
        "drop 7.5 pt; not measured at batch 128, 512." in verdict
    )
    assert "## Two answers: given more data, and at equal data" in text
    assert "| 32 | 100 | 3.2 | 4x | holds | 25 | 90.5% | 7.5 pt | degraded |" in text
    data = json.loads((study / "frontier.json").read_text())
    assert data["holds_up_to"] == 32 and data["holds_up_to_equal_data"] == 8
    rows = {r["batch_size"]: r for r in data["frontier"]}
    assert rows[512]["data_ratio"] == 128 and rows[512]["epochs_judged"] == pytest.approx(102.4)
    assert rows[32]["steps_judged"] == 100 and rows[32]["equal_data_status"] == "degraded"
    assert rows[512]["baseline_multiple"] == 2
    assert rows[512]["baseline_accuracy"] == pytest.approx(0.99)
    assert rows[512]["drop"] == pytest.approx(0.99 - rows[512]["accuracy"])
    assert rows[32]["baseline_multiple"] == 1 and rows[32]["baseline_accuracy"] == 0.98


def test_the_report_says_whether_the_study_was_adequate(tmp_path, monkeypatch):
    """Per batch size: search trials and the share diverged, the best on a range edge, the
    judged runs and their spread over seeds."""
    study = make_study(tmp_path, "8,32,128,512")
    blown = trial("s512d", 512, [(50, 0.1)], outcome="diverged", diverged_last=True)
    edge = trial("s32e", 32, [(50, 0.9), (100, 0.995)], base_lr=0.29, val_examples=10000)
    trials = pd.concat([degradation_table(), table(blown, edge)], ignore_index=True)
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    section = text.split("## Study adequacy", 1)[1].split("\n## ", 1)[0]
    assert "| 8 | 2 | 0% | 0 | none | 3 | 0 | 0.5 pt |" in section
    assert "| 512 | 3 | 33% | 0 | none | 3 | 0 | 0.4 pt |" in section  # its 200 steps
    assert "| 32 | 3 | 0% | 0 | base_lr (upper) | 3 | 0 | 0.2 pt |" in section


def cell_of(batch: int, search: float, confirmed: list[float], **kwargs) -> list:
    """A cell: one search trial that ran its budget and its confirmation runs (10000-example
    validation set, so a 1 pt tolerance can be resolved)."""
    first = trial(f"s{batch}", batch, [(50, search - 0.1), (100, search)], val_examples=10000)
    return [first, *confirmations(batch, confirmed, val_examples=10000, **kwargs)]


def test_a_larger_batch_that_beats_the_baseline_is_said_and_why(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    trials = table(*cell_of(8, 0.95, [0.949, 0.950, 0.951]), *cell_of(32, 0.99, [0.985] * 3))
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    assert (
        "Batch 32 beat the batch-8 baseline by more than 1.0 pt at 95% confidence: the baseline "
        "may be short of steps or of tuning; check its curves." in verdict
    )


def test_a_baseline_nothing_is_shown_to_hold_with_is_said(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128")
    trials = table(
        *cell_of(8, 0.99, [0.980, 0.981, 0.982]),
        *cell_of(32, 0.99, [0.965, 0.975, 0.985]),  # spread: unresolved
        *cell_of(128, 0.99, [0.979, 0.980, 0.981]),  # holds, but after an unresolved one
    )
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    assert "accuracy is not shown to hold within 1.0 pt of the batch-8 baseline" in verdict
    assert "beyond batch 8." in verdict
    data = json.loads((study / "frontier.json").read_text())
    statuses = {r["batch_size"]: r["status"] for r in data["frontier"]}
    assert statuses == {8: "baseline", 32: "unresolved", 128: "holds"}
    assert data["holds_up_to"] == 8  # an unresolved batch size ends "holds up to"


def test_a_batch_size_with_no_estimate_ends_holds_up_to_and_is_named(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128")
    trials = table(
        *cell_of(8, 0.99, [0.980, 0.981, 0.982]),
        trial("s32", 32, [(50, 0.5)], outcome="errored"),  # nothing ended its budget
        trial("r32", 32, [(50, 0.6)], outcome="running", budget_steps=100),
        *cell_of(128, 0.99, [0.979, 0.980, 0.981]),  # holds, but beyond a gap
    )
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    data = json.loads((study / "frontier.json").read_text())
    assert {r["batch_size"]: r["status"] for r in data["frontier"]}[128] == "holds"
    assert data["holds_up_to"] == 8  # not 128: batch 32 was never measured
    assert (
        "No accuracy at batch 32: none of its runs ended its budget (1 errored, 1 running), "
        "so nothing is said of it and the accuracy is not said to hold beyond it." in verdict
    )


def test_a_diverged_seed_makes_a_batch_size_unstable_and_counts(tmp_path, monkeypatch):
    """Issue 32: a diverged confirmation seed is a result, not a gap: it counts at its last
    evaluation (10%), the batch size is `unstable` (never holds, though its other two seeds
    match the baseline), and with every seed diverged it never falls back to a search trial."""
    study = make_study(tmp_path, "8,32,128")
    blown = [
        trial(f"c{b}x{i}", b, [(50, 0.1)], phase="confirm", seed=9 + i, outcome="diverged",
              diverged_last=True)
        for b, i in ((32, 0), (128, 0), (128, 1), (128, 2))
    ]  # fmt: skip
    trials = table(
        *cell_of(8, 0.99, [0.980, 0.981, 0.982]),
        *cell_of(32, 0.99, [0.980, 0.981]),
        *cell_of(128, 0.99, []),
        *blown,
    )
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    frontier = pd.read_csv(study / "frontier.csv").set_index("batch_size")
    assert frontier.loc[32, "status"] == "unstable" and frontier.loc[128, "status"] == "unstable"
    assert frontier.loc[32, "accuracy_runs"] == 3
    assert frontier.loc[32, "accuracy"] == pytest.approx((0.980 + 0.981 + 0.1) / 3)
    assert frontier.loc[128, "accuracy_source"] == "confirmed"  # no fallback to the search
    assert frontier.loc[128, "accuracy"] == pytest.approx(0.1)
    assert json.loads((study / "frontier.json").read_text())["holds_up_to"] == 8
    assert (
        "Unstable at batch 32: 1 of its 3 judged runs diverged, so its configuration does not "
        "train reliably there and its accuracy is not said to hold" in verdict
    )
    assert "Unstable at batch 128: 3 of its 3 judged runs diverged" in verdict


def test_the_confirmed_runs_are_reported_on_the_test_set_too(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    trials = table(*cell_of(8, 0.99, [0.980, 0.981, 0.982]), *cell_of(32, 0.99, [0.97] * 3))
    confirm = trials["phase"] == "confirm"
    last = confirm & (
        trials["optimizer_steps"] == trials.groupby("trial_id")["optimizer_steps"].transform("max")
    )
    trials.loc[last, "test_acc"] = trials.loc[last, "val_acc"] - 0.02
    trials.loc[last, "test_examples"] = 1000
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    assert (
        "On the official test set (1000 examples; the search selected and the verdict judged "
        "on a validation split held out from the training data), the runs each batch size is "
        "judged by (its confirmation runs, or the checks' where they took it further) score "
        "8: 96.1%, 32: 95.0%." in verdict_of(text)
    )
    data = json.loads((study / "frontier.json").read_text())
    assert [round(r["test_mean"], 4) for r in data["frontier"]] == [0.961, 0.95]
    assert "| test accuracy |" in text


def test_the_lr_growth_and_stop_at_target_are_said(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128,512", "hand", "--stop-at-target")
    verdict = verdict_of(report_on(study, degradation_table(), monkeypatch, tensorboard=False))
    # every best trial has base lr 0.01 under the linear rule: the peak lr grows with batch
    assert (
        "The best peak lr grows x64 from batch 8 to 512 (linear rule predicts x64, square "
        "root x8)." in verdict
    )
    assert "Trials ended once they reached the target (--stop-at-target)" in verdict


def test_tolerance_in_points_on_the_command_line(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128,512")
    monkeypatch.setattr(report_module, "collect_trials", lambda _: degradation_table())
    assert main([str(study), "--tolerance", "10", "--no-tensorboard"]) == 0
    data = json.loads((study / "frontier.json").read_text())
    assert data["tolerance"] == pytest.approx(0.10)
    assert data["holds_up_to"] == 512


def test_a_validation_set_too_small_for_the_tolerance_is_said(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    trials = table(
        trial("a", 8, [(100, 0.99)], val_examples=359),
        *confirmations(8, [0.98, 0.985, 0.98], val_examples=359),
        trial("b", 32, [(100, 0.99)], val_examples=359),
        *confirmations(32, [0.975, 0.98, 0.98], val_examples=359),
    )
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    assert (
        "The validation set is too small to resolve the 1.0 pt tolerance: 359 examples" in verdict
    )
    assert "Unresolved at batch 32" in verdict


def test_critical_batch_in_report(tmp_path, monkeypatch):
    study = make_study(tmp_path, "16:4096")
    text = report_on(study, synthetic_scaling_table(), monkeypatch)
    critical = json.loads((study / "frontier.json").read_text())["critical_batch"]
    assert critical["status"] == "fit" and critical["points"] == 9
    assert critical["ci_low"] < 512 < critical["ci_high"]
    assert len(critical["log_residuals"]) == 9
    assert f"Critical batch size about {critical['b_crit']:.3g}" in verdict_of(text)
    assert "R^2 1, largest residual x1" in verdict_of(text)
    frontier = pd.read_csv(study / "frontier.csv").set_index("batch_size")
    assert frontier.loc[16, "regime"] == "perfect scaling"
    assert frontier.loc[4096, "regime"] == "maximal data parallelism"
    assert frontier.loc[512, "regime"] == "diminishing returns"


def test_a_batch_size_short_of_the_target_is_censored_in_the_report(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128,512")
    trials = table(
        trial("a", 8, [(200, 0.5), (400, 0.91)]),
        trial("b", 32, [(50, 0.5), (100, 0.92)]),
        trial("c", 128, [(25, 0.6), (50, 0.93)]),
        trial("d", 512, [(20, 0.6), (40, 0.8)]),
    )
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    assert "Never reached the target, entered in the fit as lower bounds: batch 512 (> 40" in text
    assert "| > 40 |" in text
    critical = json.loads((study / "frontier.json").read_text())["critical_batch"]
    assert critical["censored_points"] == 1


def test_per_rule_verdict_needs_evidence(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,512", "hand", "--stratify", "rule")
    parts = []
    for rule in ("linear", "sqrt"):
        parts.append(trial(f"{rule}8", 8, [(100, 0.99)], rule=rule, val_examples=10000))
        parts += confirmations(8, [0.975, 0.98, 0.985], rule=rule, val_examples=10000)
    parts.append(trial("linear512", 512, [(100, 0.99)], val_examples=10000))
    parts += confirmations(512, [0.978, 0.98, 0.982], val_examples=10000)
    parts.append(trial("sqrt512", 512, [(100, 0.99)], rule="sqrt", val_examples=10000))
    text = report_on(study, table(*parts), monkeypatch, tensorboard=False)
    assert "linear holds up to batch 512" in verdict_of(text)
    assert "sqrt holds up to batch 8, not enough evidence at 512" in verdict_of(text)


def test_empty_study(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    text = report_on(study, pd.DataFrame(columns=list(COLUMNS)), monkeypatch)
    assert "No trial has run its whole budget yet" in verdict_of(text)
    assert "No trial has started yet" in text
    assert_all_outputs(study)
    assert pd.read_csv(study / "frontier.csv")["trials"].tolist() == [0, 0]


def test_running_study_without_target_reached(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32,128")
    trials = table(
        trial("a", 8, [(64, 0.8), (128, 0.85)]),
        trial("b", 32, [(16, 0.7)], outcome="running", budget_steps=100),
        trial("c", 128, [], outcome="errored"),
    )
    text = report_on(study, trials, monkeypatch)
    assert "Only batch 8 has trials that ran their whole budget" in verdict_of(text)
    assert "batch 8 (> 128 steps), batch 32 (> 16 steps)" in verdict_of(text)
    assert "1 trial(s) have not finished" in text
    assert "No run of the whole budget at batch 32 (1 running); 128 (1 errored)" in text
    assert "1 trial(s) errored" in text
    assert_all_outputs(study)


def test_single_batch_size_study(tmp_path, monkeypatch):
    study = make_study(tmp_path, "32")
    trials = table(trial("a", 32, [(10, 0.8), (20, 0.95)]), trial("b", 32, [(10, 0.9)]))
    text = report_on(study, trials, monkeypatch)
    assert "single batch size" in text
    assert "The critical batch size needs at least 2 batch sizes" in verdict_of(text)
    assert_all_outputs(study)


def test_boundary_warning_reaches_the_report(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    trials = table(trial("a", 8, [(10, 0.9)], base_lr=0.29), trial("b", 32, [(10, 0.9)]))
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    assert "1 best-trial value(s) sit on the edge of the search range (batch 8)" in text
    assert "batch 8: best base_lr 0.29 is at the upper edge" in text


def test_the_study_section_states_budget_rungs_and_bn(tmp_path, monkeypatch):
    study = make_study(tmp_path, "8,32")
    trials = table(
        trial("a", 8, [(179, 0.9), (358, 0.95)]), trial("b", 32, [(75, 0.9), (150, 0.95)])
    )
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    assert (
        "- budget: 2 epochs per trial: equal data only where that is at least 150 steps; where "
        "it is fewer (the larger batch sizes) a trial runs 150 steps, more data than the "
        "baseline" in text
    )
    assert (
        # the first rung at the end of the longest warmup searched (0.2 here), then x3
        "ASHA rungs at 20%, 60% of the budget, in steps by batch size: 8: 72, 215; 32: 30" in text
    )
    assert "- BatchNorm statistics batch: 8: none, 32: none" in text


def test_rerun_replaces_the_tensorboard_run(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing import event_accumulator as ea

    study = make_study(tmp_path, "8,32,128,512")
    report_on(study, degradation_table(), monkeypatch)
    report_on(study, degradation_table(), monkeypatch)
    assert len(list((study / "summary").glob("events.out.tfevents.*"))) == 1
    acc = ea.EventAccumulator(str(study / "summary"), size_guidance={ea.IMAGES: 0, ea.SCALARS: 0})
    acc.Reload()
    assert len(acc.Images("map/accuracy_vs_batch")) == 1
    assert [e.step for e in acc.Scalars("frontier/accuracy")] == [8, 32, 128, 512]
    assert [e.value for e in acc.Scalars("frontier/degraded")] == [0.0, 0.0, 0.5, 1.0]
    assert not list(study.glob(".summary*"))


def test_hparams_sessions_carry_status_and_plain_metrics(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins.hparams import metadata

    study = make_study(tmp_path, "8,32")
    trials = table(
        trial("ok", 8, [(10, 0.8), (20, 0.95)]),
        trial("boom", 32, [(5, 0.2)], outcome="diverged", diverged_last=True, budget_steps=20),
        trial("dead", 32, [], outcome="errored"),
        trial("busy", 32, [(5, 0.5)], outcome="running", budget_steps=20),
    )
    report_on(study, trials, monkeypatch)
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(study / "summary"))
    mux.Reload()
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    status = {}
    for run, tags in content.items():
        end = tags.get(metadata.SESSION_END_INFO_TAG)
        status[run.split("/")[-1]] = (
            metadata.parse_session_end_info_plugin_data(end).status if end else None
        )
    assert status == {"ok": 1, "boom": 2, "dead": 2, "busy": None}  # SUCCESS, FAILURE, running
    acc = ea.EventAccumulator(str(study / "summary" / "hparams" / "ok"))
    acc.Reload()
    # interpolated between step 10 (0.80) and 20 (0.95): 0.90 at 16.7
    assert acc.Scalars("target/steps")[0].value == pytest.approx(10 + 10 * 0.1 / 0.15, rel=1e-6)
    assert acc.Scalars("final/val_acc")[0].value == pytest.approx(0.95)
    assert acc.Scalars("final/diverged")[0].value == 0


def test_not_a_study_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a study directory" in err and "\n" not in err


def test_target_given_in_percent_is_refused(tmp_path, capsys):
    study = make_study(tmp_path, "8,32")
    assert main([str(study), "--target", "95"]) == 2
    assert "0.95, not 95" in capsys.readouterr().err


def test_cli_exit_code_as_a_user_sees_it(tmp_path):
    proc = run_cli("tuner.report", str(tmp_path / "nothing"), check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a study directory" in proc.stderr
    assert "PERCENTAGE POINTS" in run_cli("tuner.report", "--help", timeout=120).stdout


# --- a real study -----------------------------------------------------------------------------


def final_rows(trials_csv: pd.DataFrame) -> pd.DataFrame:
    """Last evaluation of every trial, computed independently of tuner.analysis."""
    reported = trials_csv[trials_csv["optimizer_steps"].notna()]
    return reported.sort_values("optimizer_steps").groupby("trial_id").tail(1)


def live_rows(trials_csv: pd.DataFrame) -> pd.DataFrame:
    """Rows of trials that never diverged (Shallue et al. leave diverged trials out)."""
    diverged = diverged_rows(trials_csv)
    return trials_csv[~trials_csv["trial_id"].isin(trials_csv[diverged]["trial_id"])]


def expected_accuracy(trials_csv: pd.DataFrame, frontier: pd.DataFrame) -> dict[int, float]:
    """Per batch size, by the rule the report documents (tuner.analysis.frontier), computed
    here from the trial table: the cell of its best search trial that ran its whole budget
    (ties: the earliest trial), judged at the level its checks took it to (`judged_steps`,
    `judged_lr_factor`; the baseline at its own lr check's `baseline_lr_factor`): the mean final
    value of that level's completed runs and its diverged ones, each of those at its last
    evaluation (issue 32; a non-finite one at the worst value of the level's runs): the
    confirmation runs at the cell's own budget and lr, else that level's runs with fresh seeds
    (phase judge) where it ran again, else the check runs at that budget and lr x factor."""
    finals = final_rows(trials_csv)
    done = finals[finals["outcome"].isin(["completed", "target"]) & ~diverged_rows(finals)]
    search = done[done["phase"] == "search"]
    expected = {}
    for batch, group in search.groupby("batch_size"):
        ordered = group.sort_values(["val_acc", "optuna_number"], ascending=[False, True])
        best = ordered.iloc[0]
        cell, row = best["cell"], frontier.loc[int(batch)]
        assert row["best_cell"] == cell, (batch, row["best_cell"], cell)
        confirm = finals[(finals["cell"] == cell) & (finals["phase"] == "confirm")]
        if confirm.empty:
            continue
        own, lr = int(confirm["budget_steps"].max()), float(confirm["base_lr"].iloc[0])
        steps = row["judged_steps"] if pd.notna(row["judged_steps"]) else own
        factor = next(
            (f for f in (row["judged_lr_factor"], row.get("baseline_lr_factor")) if pd.notna(f)),
            1.0,
        )
        if (int(steps), float(factor)) == (own, 1.0):
            runs = confirm
        else:
            level = (
                (finals["cell"] == cell)
                & (finals["budget_steps"] == steps)
                & np.isclose(finals["base_lr"], lr * factor)
            )
            runs = finals[level & (finals["phase"] == "judge")]
            if runs.empty:
                runs = finals[level & (finals["phase"] == "extend")]
            assert len(runs), (batch, steps, factor)  # the level judged at ran
        blown = runs[diverged_rows(runs)]
        runs = runs[runs["trial_id"].isin(done["trial_id"])]
        values = [*runs["val_acc"], *blown["val_acc"]]
        if blown["val_acc"].isna().any():  # not finite where it diverged: the worst value
            continue  # (the analysis's own tests check that case)
        expected[int(batch)] = float(np.mean(values)) if values else best["val_acc"]
    return expected


def diverged_rows(rows: pd.DataFrame) -> pd.Series:
    return rows["diverged"].astype(str).eq("True") | rows["outcome"].eq("diverged")


@pytest.fixture(scope="module")
def real_report(small_study, tmp_path_factory) -> tuple[Path, float]:
    """A copy of the shared real study, re-reported from the command line."""
    study = tmp_path_factory.mktemp("real") / "e2e"
    shutil.copytree(small_study, study)
    target = load_spec(study).target
    proc = run_cli("tuner.report", str(study), "--target", f"{target:.2f}", timeout=300)
    assert "report:" in proc.stdout and "accuracy" in proc.stdout
    return study, target


@pytest.mark.ray
def test_search_writes_the_report_itself(small_study):
    assert_all_outputs(small_study)
    assert "## Verdict" in (small_study / "report.md").read_text()


@pytest.mark.ray
def test_real_frontier_matches_the_trial_table(real_report):
    study, target = real_report
    trials = pd.read_csv(study / "trials.csv")
    frontier = pd.read_csv(study / "frontier.csv").set_index("batch_size")
    spec = load_spec(study)
    assert frontier.index.tolist() == list(spec.batch_sizes)
    search = trials[trials["phase"] == "search"]
    assert frontier["trials"].sum() == search["trial_id"].nunique() == spec.trials
    expected = expected_accuracy(trials, frontier)
    assert expected and set(expected) == set(frontier["accuracy"].dropna().index)
    for batch, accuracy in expected.items():
        assert frontier.loc[batch, "accuracy"] == pytest.approx(accuracy), batch
    # the runs steps to target are read from: a study's budget-free runs at the lrs where every
    # seed reached the target, where it has them (tuner.analysis.steps), else all of them
    live = live_rows(measured_runs(trials)[0])
    for batch, group in live[live["val_acc"].notna()].groupby("batch_size"):
        reached = group[group["val_acc"] >= target]
        row = frontier.loc[batch]
        first_eval = group.groupby("trial_id")["optimizer_steps"].transform("min")
        at_once = reached[reached["optimizer_steps"] == first_eval.loc[reached.index]]
        if len(at_once):
            # a run past the target at its first evaluation: the earliest crossing is only
            # bounded above, by the earliest evaluation at the target (issue 36)
            assert np.isnan(row["steps"]) and row["steps_before"] == 0
            assert (
                row["steps_at_most"] == reached.groupby("trial_id")["optimizer_steps"].min().min()
            )
        elif len(reached):
            # the earliest crossing (interpolated between the evaluations around it) of any run:
            # no later than the earliest evaluation at the target
            assert row["steps_before"] <= row["steps"] <= row["steps_first"]
            assert row["steps"] <= reached["optimizer_steps"].min()
            assert row["examples"] == pytest.approx(row["steps"] * batch)
        else:
            assert frontier.loc[batch, "censored_at"] == group["optimizer_steps"].max()
    data = json.loads((study / "frontier.json").read_text())
    assert data["target"] == pytest.approx(target)
    assert_all_outputs(study)


@pytest.mark.ray
def test_real_tensorboard_run_through_tensorboards_reader(real_report):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins.hparams import metadata

    study, _ = real_report
    acc = ea.EventAccumulator(
        str(study / "summary"), size_guidance={ea.IMAGES: 0, ea.SCALARS: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == sorted(f"map/{stem}" for stem in FIGURE_TITLES)
    for tag in acc.Tags()["images"]:
        image = acc.Images(tag)[0]
        assert image.encoded_image_string[:8] == PNG_SIGNATURE and image.width > 100
    frontier = pd.read_csv(study / "frontier.csv").dropna(subset=["accuracy"])
    scalars = acc.Scalars("frontier/accuracy")
    assert [e.step for e in scalars] == frontier["batch_size"].tolist()
    assert [e.value for e in scalars] == pytest.approx(frontier["accuracy"].tolist())

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(study / "summary"))
    mux.Reload()
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    sessions = {
        run.split("/")[-1]: tags
        for run, tags in content.items()
        if metadata.SESSION_START_INFO_TAG in tags
    }
    trials = pd.read_csv(study / "trials.csv")
    assert set(sessions) == set(trials["trial_id"])
    first = trials.groupby("trial_id").first()
    for trial_id, tags in sessions.items():
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["batch_size"].number_value == first.loc[trial_id, "batch_size"]
        assert start.hparams["cell"].string_value == first.loc[trial_id, "cell"]
        assert start.hparams["phase"].string_value == first.loc[trial_id, "phase"]
        assert start.hparams["outcome"].string_value == first.loc[trial_id, "outcome"]


def _post(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


@pytest.mark.ray
def test_real_tensorboard_server_serves_the_map(real_report):
    """A TensorBoard server on STUDY_DIR/summary serves the map through its HTTP API.

    (On STUDY_DIR itself TensorBoard also finds Tune's per-trial hparams sessions and takes the
    experiment description of whichever run it reads first, so that view is not deterministic.)
    """
    from tensorboard import program

    study, _ = real_report
    server = program.TensorBoard()
    server.configure(
        argv=[
            None,
            "--logdir",
            str(study / "summary"),
            "--port",
            "0",
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ]
    )
    url = server.launch().rstrip("/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "." not in _post(f"{url}/data/runs"):
        time.sleep(0.5)
    images = _post(f"{url}/data/plugin/images/tags")["."]
    assert set(images) == {f"map/{stem}" for stem in FIGURE_TITLES}
    blob = _post(f"{url}/data/plugin/images/images?run=.&tag=map/throughput")
    with urllib.request.urlopen(
        f"{url}/data/plugin/images/individualImage?{blob[0]['query']}", timeout=30
    ) as response:
        assert response.read()[:8] == PNG_SIGNATURE
    steps = _post(f"{url}/data/plugin/scalars/scalars?run=.&tag=frontier/accuracy")
    frontier = pd.read_csv(study / "frontier.csv").dropna(subset=["accuracy"])
    assert [s[1] for s in steps] == frontier["batch_size"].tolist()

    experiment = _post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {
        "final/val_acc",
        "best/val_acc",
        "target/steps",
    }
    assert {h["name"] for h in experiment["hparamInfos"]} >= {
        "batch_size",
        "scaling_rule",
        "base_lr",
        "peak_lr",
        "warmup_fraction",
        "weight_decay",
    }
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 1000,
    }
    groups = _post(f"{url}/data/plugin/hparams/session_groups", request)["sessionGroups"]
    sessions = {g["name"].split("/")[-1]: g for g in groups}
    trials = pd.read_csv(study / "trials.csv")
    assert set(sessions) == set(trials["trial_id"])
    finals = final_rows(trials).set_index("trial_id")
    failed = set(
        trials[
            trials["outcome"].isin(["diverged", "errored"])
            | trials["diverged"].astype(str).eq("True")
        ]["trial_id"]
    )
    for trial_id, group in sessions.items():
        expected = "STATUS_FAILURE" if trial_id in failed else "STATUS_SUCCESS"
        assert group["sessions"][0]["status"] == expected
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        if trial_id in finals.index:
            assert metrics["final/val_acc"] == pytest.approx(
                finals.loc[trial_id, "val_acc"], rel=1e-6
            )
        assert group["hparams"]["batch_size"] in load_spec(study).batch_sizes


def test_a_batch_size_never_checked_is_under_trained_not_degraded(tmp_path, monkeypatch):
    """Batch 512 short of the baseline before its checks ran: the verdict says under-trained,
    why, and what may still save it, and never 'degraded'."""
    study = make_study(tmp_path, "8,32,128,512")
    verdict = verdict_of(report_on(study, degradation_table(checked=False), monkeypatch))
    assert (
        "Under-trained at batch 512, not shown degraded: 93.5% (3 seed(s), sd 0.5 pt), drop "
        in verdict
    )
    # the check the search would queue next: half and twice the lr at its budget
    assert (
        "; being checked (100 steps, lr x0.5, 100 steps, lr x2): more steps may still save it "
        "(--max-data-multiple, --max-steps)." in verdict
    )
    assert "Degraded at" not in verdict


def issue_36_table(crossings: dict[int, list[float]], first: dict[int, float]) -> pd.DataFrame:
    """Trials evaluated every `first[batch]` steps (20 evaluations): accuracy rising 0.6 -> 0.8
    towards each given step, 0.9 (the target) from the first evaluation at or past it."""
    parts = []
    for batch, steps in crossings.items():
        every = first[batch]
        for number, crossing in enumerate(steps):
            curve = [
                (k * every, 0.6 + 0.2 * min(k * every / crossing, 1.0) if k * every < crossing
                 else 0.9)
                for k in range(1, 21)
            ]  # fmt: skip
            parts.append(trial(f"b{batch}-{number}", batch, curve, number=number))
    return table(*parts)


def test_a_crossing_before_the_first_evaluation_is_an_upper_bound_beyond_the_grid(
    tmp_path, monkeypatch
):
    """Issue 36's study, by hand: perfect scaling at batch 32-512 (S = 20000 / B + 1) and
    batch 2048 past the target at its first evaluation (step 30). The report marks 2048 as an
    upper bound ("before step 30"), the interval holds its own estimate, and where even its
    low end lies past 2048 the critical batch is "beyond the grid: at least" that."""
    study = make_study(tmp_path, "32,128,512,2048")
    trials = issue_36_table(
        {32: [626, 700, 660], 128: [157, 170, 180], 512: [40, 44, 47], 2048: [11, 12]},
        {32: 50, 128: 20, 512: 6, 2048: 30},
    )
    text = report_on(study, trials, monkeypatch, tensorboard=False)
    verdict = verdict_of(text)
    assert "2048: before step 30" in verdict
    assert "Past the target at their first evaluation" in verdict and "upper bounds" in verdict
    assert "| <= 30 |" in text  # the frontier table
    data = json.loads((study / "frontier.json").read_text())["critical_batch"]
    assert data["upper_bound_points"] == 1 and data["points"] == 3
    low, high = data["ci_low"], data["ci_high"]
    high = math.inf if high is None else high
    assert low <= data["b_crit"] <= high  # the interval holds its estimate
    assert data["beyond_grid_at_least"] == pytest.approx(low) and low > 2048
    assert f"Critical batch size beyond the grid: at least {low:.3g}" in verdict
    frontier = pd.read_csv(study / "frontier.csv").set_index("batch_size")
    assert math.isnan(frontier.loc[2048, "steps"]) and frontier.loc[2048, "steps_at_most"] == 30
    # regimes from the least B_crit the data allow
    assert frontier.loc[32, "regime"] == "perfect scaling"


@pytest.mark.ray
def test_a_hostile_study_is_reported_and_runs_no_code_unless_trusted(small_study, tmp_path):
    """Issue 34: a study whose workload (pickled and as a module), state files and checkpoints
    all carry a payload is reported from its data alone; explain and --resume refuse it in
    one line; only --trust-code runs its code."""
    import sys

    from tests.conftest import assert_refused_untrusted, plant_payloads

    study, marker = tmp_path / "e2e", tmp_path / "payload-ran"
    shutil.copytree(small_study, study)
    plant_payloads(study, marker)
    before = (study / "report.md").stat().st_mtime_ns
    proc = run_cli("tuner.report", str(study), "--no-tensorboard", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (study / "report.md").stat().st_mtime_ns > before and "## Verdict" in (
        study / "report.md"
    ).read_text()
    assert not marker.exists()
    # from its data: every trial (a report that failed to read them would still be written)
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    original = pd.read_csv(small_study / "trials.csv", dtype={"trial_id": str})
    assert len(trials) and set(trials["trial_id"]) == set(original["trial_id"])
    path = list(sys.path)
    write_report(study, tensorboard=False, n_boot=50)  # in this process: sys.path untouched
    assert sys.path == path and not marker.exists()

    explain = run_cli("tuner.explain", str(study), check=False)
    assert_refused_untrusted(explain, marker)
    saved = (study / "study.json").read_bytes()
    resume = run_cli(
        "tuner.search", "--resume", "--name", "e2e", "--storage", str(tmp_path), check=False
    )
    assert_refused_untrusted(resume, marker)
    assert (study / "study.json").read_bytes() == saved  # nothing written
    # the gate is what kept it out: trusted, the same study runs its code
    run_cli("tuner.explain", str(study), "--trust-code", check=False)
    assert marker.exists()


def test_one_run_on_a_side_gives_no_interval_and_no_verdict(tmp_path, monkeypatch):
    """Issue 32: one confirmation seed per batch size (`--seeds 1`): the report gives each
    value and difference but claims no confidence, and calls nothing holding or degraded, not
    even a 5 pt drop."""
    study = make_study(tmp_path, "8,32,512")
    parts = []
    for batch, value in ((8, 0.98), (32, 0.978), (512, 0.93)):
        parts.append(trial(f"s{batch}", batch, [(50, 0.9), (100, 0.99)], val_examples=10000))
        parts += confirmations(batch, [value], val_examples=10000)
    verdict = verdict_of(report_on(study, table(*parts), monkeypatch))
    frontier = pd.read_csv(study / "frontier.csv")
    assert frontier["status"].tolist() == ["baseline", "no interval", "no interval"]
    assert frontier[["drop_low", "drop_high"]].iloc[1:].isna().all().all()
    assert json.loads((study / "frontier.json").read_text())["holds_up_to"] == 8
    assert "No interval at batch 32" in verdict and "the baseline has one run" in verdict
    assert "no confidence is claimed" in verdict and "drop 0.2 pt" in verdict
    assert "Degraded at" not in verdict and "95% bounds" not in verdict


def test_a_level_the_checks_chose_is_judged_by_fresh_seeds_on_both_sides(tmp_path, monkeypatch):
    """Batch 512 was judged at twice its steps, the baseline at twice its own; both levels ran
    again with fresh seeds (4-6, `search_spaces.runs.JUDGE`): the verdict compares those, and
    says so; the decision to stop there (a plateau) stays the check's, on the runs it had."""
    from tests.test_analysis import extensions

    def fresh(batch: int, accuracies: list[float], steps: int) -> list[list[dict]]:
        return extensions(batch, accuracies, steps, phase="judge", first_seed=4, val_examples=10000)

    study = make_study(tmp_path, "8,32,128,512")
    base_longer = extensions(8, [0.985, 0.990, 0.995], 200, val_examples=10000)
    runs = [*base_longer, *fresh(512, [0.95, 0.951, 0.952], 200), *fresh(8, [0.98] * 3, 200)]
    trials = pd.concat([degradation_table(), table(*runs)], ignore_index=True)
    verdict = verdict_of(report_on(study, trials, monkeypatch, tensorboard=False))
    assert (
        "Degraded at batch 512: 95.1% (3 seed(s), sd 0.1 pt) at 200 steps (2x its budget; "
        "against the baseline given 2x its steps too: 98.0%; measured again with fresh seeds), "
        "drop 2.9 pt" in verdict
    )
    assert "a plateau at 200 steps" in verdict  # decided on the checks' own runs (93.7%)
    rows = {
        r["batch_size"]: r for r in json.loads((study / "frontier.json").read_text())["frontier"]
    }
    assert rows[512]["judged_fresh"] is True and rows[32]["judged_fresh"] is False
    assert rows[512]["accuracy"] == pytest.approx(0.951)
    assert rows[512]["baseline_accuracy"] == pytest.approx(0.98)
    assert (
        "3 with fresh seeds at the levels the checks chose" in verdict or "6 with fresh" in verdict
    )
