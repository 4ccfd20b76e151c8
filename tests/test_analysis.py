"""The degradation map's analysis on hand-built trial tables with known answers (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tuner import analysis
from tuner.results import COLUMNS

RANGES = {
    "base_lr": [1e-3, 0.3],
    "weight_decay": [1e-6, 1e-2],
    "warmup_epochs": [0.0, 2.0],
    "scaling_rule": ["none", "linear", "sqrt"],
    "optimizer": ["sgd"],
}


def trial(
    trial_id: str,
    batch: int,
    curve: list[tuple[float, float]],
    *,
    outcome: str = "completed",
    rule: str = "linear",
    base_lr: float = 0.01,
    weight_decay: float = 1e-4,
    warmup: float = 1.0,
    diverged_last: bool = False,
    samples_per_second: float = 1000.0,
    number: int | None = None,
) -> list[dict]:
    """Rows of one trial: `curve` is [(optimizer steps, val_acc), ...], one per epoch."""
    if not curve:  # errored before its first report: one row of empty metrics
        curve_rows = [
            dict.fromkeys(
                (
                    "epoch",
                    "optimizer_steps",
                    "examples_seen",
                    "val_acc",
                    "samples_per_second",
                    "workers",
                    "diverged",
                ),
                math.nan,
            )
        ]
    else:
        curve_rows = [
            {
                "epoch": e + 1,
                "optimizer_steps": s,
                "examples_seen": s * batch,
                "val_acc": a,
                "samples_per_second": samples_per_second,
                "workers": 1,
                "diverged": diverged_last and e == len(curve) - 1,
            }
            for e, (s, a) in enumerate(curve)
        ]
    rows = []
    for row in curve_rows:
        rows.append(
            {
                **dict.fromkeys(COLUMNS, math.nan),
                "trial_id": trial_id,
                "optuna_number": number if number is not None else abs(hash(trial_id)) % 997,
                "outcome": outcome,
                "batch_size": batch,
                "scaling_rule": rule,
                "optimizer": "sgd",
                "base_lr": base_lr,
                "weight_decay": weight_decay,
                "warmup_epochs": warmup,
                "actual_lr": base_lr * batch / 32,
                "train_loss": 1.0,
                "val_loss": 1.0,
                "epoch_time_s": 1.0,
                "global_batch": batch,
                **row,
            }
        )
    return rows


def table(*trials: list[dict]) -> pd.DataFrame:
    rows = [row for t in trials for row in t]
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))


def synthetic_scaling_table(
    s_min: float = 1000.0,
    b_crit: float = 512.0,
    batches: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    trials_per_batch: int = 4,
    seed: int = 1,
) -> pd.DataFrame:
    """Trials whose first crossing of 0.9 lies a few percent above S(B) = s_min(1 + b_crit/B)."""
    rng = np.random.default_rng(seed)
    parts, number = [], 0
    for batch in batches:
        steps = s_min * (1 + b_crit / batch)
        for i in range(trials_per_batch):
            first = round(steps * (1 + rng.uniform(0.0, 0.08)))
            curve = [(first // 2, 0.6), (first, 0.9 + rng.uniform(0, 0.02)), (2 * first, 0.95)]
            parts.append(trial(f"b{batch}t{i}", batch, curve, number=number))
            number += 1
    return table(*parts)


# --- critical batch size --------------------------------------------------------------------


def test_fit_recovers_exact_critical_batch():
    batches = np.array([16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    fit = analysis.fit_critical_batch(batches, 1000 * (1 + 512 / batches))
    assert fit.b_crit == pytest.approx(512, rel=1e-6)
    assert fit.s_min == pytest.approx(1000, rel=1e-6)
    assert fit.e_min == pytest.approx(512_000, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)


def test_critical_batch_from_noisy_trials_lies_in_its_interval():
    m = analysis.degradation_map(synthetic_scaling_table(), target=0.9, tolerance=0.01, n_boot=500)
    assert m.fit is not None and m.fit.points == 9
    assert m.fit.b_crit == pytest.approx(512, rel=0.15)
    low, high = m.b_crit_ci
    assert low < 512 < high
    assert low < m.fit.b_crit < high
    assert m.b_crit_replicates == 500


def test_bootstrap_is_seeded():
    t = synthetic_scaling_table(trials_per_batch=3)
    crossings = analysis.first_crossings(t, 0.9)
    first = analysis.bootstrap_critical_batch(crossings, n_boot=200, seed=3)
    assert first == analysis.bootstrap_critical_batch(crossings, n_boot=200, seed=3)
    assert first != analysis.bootstrap_critical_batch(crossings, n_boot=200, seed=4)


def test_perfect_scaling_throughout_has_unbounded_critical_batch():
    batches = np.array([8, 16, 32, 64])
    fit = analysis.fit_critical_batch(batches, 1e5 / batches)
    assert math.isinf(fit.b_crit)
    assert analysis.regime(4096, fit.b_crit) == "perfect scaling"


def test_flat_steps_mean_maximal_data_parallelism():
    fit = analysis.fit_critical_batch([8, 16, 32, 64], [500, 500, 500, 500])
    assert fit.b_crit == pytest.approx(0, abs=1e-9)
    assert analysis.regime(8, fit.b_crit) == "maximal data parallelism"


def test_fit_needs_two_batch_sizes():
    assert analysis.fit_critical_batch([32], [100]) is None
    assert analysis.fit_critical_batch([32, 32], [100, 120]) is None
    assert analysis.fit_critical_batch([32, 64], [100, math.nan]) is None


@pytest.mark.parametrize(
    ("batch", "label"),
    [
        (32, "perfect scaling"),
        (128, "perfect scaling"),
        (129, "diminishing returns"),
        (512, "diminishing returns"),
        (2047, "diminishing returns"),
        (2048, "maximal data parallelism"),
        (65536, "maximal data parallelism"),
    ],
)
def test_regime_thresholds(batch, label):
    assert analysis.regime(batch, 512.0) == label


def test_regime_without_fit_is_unknown():
    assert analysis.regime(64, None) is None
    assert analysis.regime(64, math.nan) is None


# --- steps to target --------------------------------------------------------------------------


def pooled_table() -> pd.DataFrame:
    return table(
        # reaches 0.9 at step 300 only; its best accuracy is the highest of the live trials
        trial("slow", 32, [(100, 0.5), (200, 0.8), (300, 0.91), (400, 0.97)], number=0),
        # touches exactly 0.9 at step 200, dips, ends lower: the first crossing is what counts
        trial(
            "early", 32, [(100, 0.85), (200, 0.90), (300, 0.86), (400, 0.93)], rule="sqrt", number=1
        ),
        # would cross first (step 100), but diverged: infeasible, left out and counted
        trial(
            "blowup",
            32,
            [(100, 0.95), (200, 0.1)],
            outcome="diverged",
            diverged_last=True,
            number=2,
        ),
        # a still-running trial whose last report diverged is also left out
        trial("running_blowup", 32, [(50, 0.99)], outcome="running", diverged_last=True, number=3),
        trial("big", 128, [(25, 0.7), (50, 0.88), (75, 0.92), (100, 0.94)], number=4),
        trial("never", 128, [(25, 0.5), (50, 0.6)], outcome="stopped", number=5),
        trial("crashed", 128, [], outcome="errored", number=6),
    )


def test_pooled_steps_to_target_picks_first_crossing_of_any_trial():
    t = pooled_table()
    trials = analysis.trial_summary(t)
    steps = analysis.steps_to_target(analysis.first_crossings(t, 0.9), trials)
    row32 = steps[steps["batch_size"] == 32].iloc[0]
    assert row32["steps"] == 200 and row32["examples"] == 200 * 32
    assert row32["target_trial"] == "early" and row32["target_epoch"] == 2
    assert row32["reached"] == 2 and row32["candidates"] == 2
    assert row32["diverged_excluded"] == 2
    row128 = steps[steps["batch_size"] == 128].iloc[0]
    assert (row128["steps"], row128["examples"], row128["target_trial"]) == (75, 75 * 128, "big")
    assert row128["reached"] == 1 and row128["candidates"] == 2  # 'never' counts, 'crashed' not


def test_steps_to_target_per_rule():
    t = pooled_table()
    trials = analysis.trial_summary(t)
    steps = analysis.steps_to_target(
        analysis.first_crossings(t, 0.9), trials, ("batch_size", "scaling_rule")
    )
    linear32 = steps[(steps["batch_size"] == 32) & (steps["scaling_rule"] == "linear")].iloc[0]
    assert linear32["steps"] == 300 and linear32["target_trial"] == "slow"


def test_no_trial_reaching_target_leaves_steps_empty():
    m = analysis.degradation_map(pooled_table(), target=0.999, tolerance=0.01, n_boot=50)
    assert m.frontier["steps"].isna().all()
    assert m.fit is None and math.isnan(m.b_crit_ci[0])
    assert m.frontier["regime"].isna().all()


def test_diverged_trials_are_counted_not_scored():
    m = analysis.degradation_map(pooled_table(), target=0.9, tolerance=0.01, n_boot=50)
    row32 = m.frontier[m.frontier["batch_size"] == 32].iloc[0]
    assert row32["trials"] == 4 and row32["diverged"] == 2 and row32["running"] == 0
    assert row32["completed"] == 2 and row32["scored"] == 2
    # 'blowup' and 'running_blowup' reported higher accuracies but are infeasible
    assert row32["best_val_acc"] == pytest.approx(0.97) and row32["best_trial"] == "slow"
    row128 = m.frontier[m.frontier["batch_size"] == 128].iloc[0]
    assert (row128["completed"], row128["stopped"], row128["errored"]) == (1, 1, 1)
    assert row128["best_val_acc"] == pytest.approx(0.94)


# --- best accuracy and degradation ------------------------------------------------------------


def test_bootstrap_best_of_k():
    low, high = analysis.bootstrap_best_of_k([0.5, 0.6, 0.7, 0.9], n_boot=4000, seed=0)
    assert high == pytest.approx(0.9)
    # P(best of 4 <= 0.5) = (1/4)^4 ~ 0.4% < 2.5% < P(best <= 0.6) = (2/4)^4 ~ 6%
    assert low == pytest.approx(0.6)
    assert analysis.bootstrap_best_of_k([0.7], seed=0) == (0.7, 0.7)
    assert all(math.isnan(v) for v in analysis.bootstrap_best_of_k([math.nan]))
    # best of 1 draw: the interval spans the whole sample
    assert analysis.bootstrap_best_of_k([0.5, 0.6, 0.9], k=1, n_boot=4000) == (0.5, 0.9)


def tolerance_table() -> pd.DataFrame:
    best = {8: 0.95, 16: 0.945, 32: 0.94, 64: 0.93, 128: 0.945}
    parts = []
    for i, (batch, accuracy) in enumerate(best.items()):
        parts.append(
            trial(f"lin{batch}", batch, [(10, accuracy - 0.1), (20, accuracy)], number=2 * i)
        )
        # rule 'none' is a point worse everywhere, and worse still from batch 16
        none = accuracy - (0.005 if batch == 8 else 0.03)
        parts.append(
            trial(
                f"none{batch}", batch, [(10, none - 0.1), (20, none)], rule="none", number=2 * i + 1
            )
        )
    return table(*parts)


def test_tolerance_picks_largest_contiguous_batch_within():
    m = analysis.degradation_map(tolerance_table(), target=0.9, tolerance=0.01, n_boot=50)
    assert m.baseline == (8, pytest.approx(0.95))
    degraded = m.frontier.set_index("batch_size")["degraded"].to_dict()
    # batch 32 is exactly 1 pt down (within); 64 is 2 pt down; 128 recovers but the run ended
    assert degraded == {8: False, 16: False, 32: False, 64: True, 128: False}
    assert m.largest_within == 32
    assert m.largest_within_by_rule == {"linear": 32, "none": 8}


def test_wider_tolerance_moves_the_frontier():
    m = analysis.degradation_map(tolerance_table(), target=0.9, tolerance=0.02, n_boot=50)
    assert m.largest_within == 128
    assert m.largest_within_by_rule["none"] == 8  # none at 16 is 3.5 pt below


def test_rule_degraded_at_its_smallest_batch_has_no_frontier():
    t = table(
        trial("a", 8, [(10, 0.95)]),
        trial("b", 32, [(10, 0.90)], rule="sqrt"),
        trial("c", 32, [(10, 0.95)]),
    )
    m = analysis.degradation_map(t, target=0.9, tolerance=0.01, n_boot=50)
    assert m.largest_within_by_rule == {"linear": 32, "sqrt": None}


# --- best hyperparameters and boundary warnings ---------------------------------------------


def test_best_hyperparameters_and_lr_predictions():
    t = table(
        trial("a", 8, [(10, 0.9)], base_lr=0.04),
        trial("b", 8, [(10, 0.8)], base_lr=0.1),
        trial("c", 32, [(10, 0.9)], base_lr=0.08, rule="sqrt"),
        trial("d", 128, [(10, 0.9)], outcome="stopped", base_lr=0.1),
    )
    best = analysis.best_hyperparameters(analysis.trial_summary(t)).set_index("batch_size")
    assert best.loc[8, "trial_id"] == "a" and best.loc[8, "actual_lr"] == pytest.approx(0.01)
    assert best.loc[32, "lr_linear"] == pytest.approx(0.04)
    assert best.loc[32, "lr_sqrt"] == pytest.approx(0.02)
    assert best.loc[128, "lr_linear"] == pytest.approx(0.16)
    assert best.loc[128, "lr_sqrt"] == pytest.approx(0.04)
    assert best.loc[32, "scaling_rule"] == "sqrt" and best.loc[32, "optimizer"] == "sgd"


def test_boundary_warnings_fire_on_edges_in_the_right_space():
    t = table(
        trial("hi_lr", 8, [(10, 0.9)], base_lr=0.28),  # log position 0.99: upper edge
        # 5e-4 would be at 5% of the linear width, but sits mid-range on the log scale
        trial("mid", 32, [(10, 0.9)], base_lr=0.02, weight_decay=5e-4, warmup=1.96),
        trial("lo_wd", 128, [(10, 0.9)], base_lr=0.02, weight_decay=1.2e-6, warmup=0.02),
    )
    best = analysis.best_hyperparameters(analysis.trial_summary(t))
    warnings = analysis.boundary_warnings(best, RANGES)
    found = {(w["batch_size"], w["param"], w["side"]) for w in warnings}
    assert found == {
        (8, "base_lr", "upper"),
        (32, "warmup_epochs", "upper"),
        (128, "weight_decay", "lower"),
    }
    # warmup 0.02 is near the 0 bound, which cannot be widened: no warning for it
    message = next(w["message"] for w in warnings if w["param"] == "base_lr")
    assert "batch 8" in message and "upper edge" in message and "widen" in message


def test_no_boundary_warning_mid_range():
    t = table(trial("a", 8, [(10, 0.9)], base_lr=0.02, weight_decay=1e-4, warmup=1.0))
    best = analysis.best_hyperparameters(analysis.trial_summary(t))
    assert analysis.boundary_warnings(best, RANGES) == []


def test_range_position_log_and_linear():
    assert analysis.range_position(0.01, 1e-3, 0.1, log=True) == pytest.approx(0.5)
    assert analysis.range_position(1.0, 0.0, 2.0, log=False) == pytest.approx(0.5)


# --- throughput and odd tables ----------------------------------------------------------------


def test_throughput_median_per_batch_and_workers():
    t = table(
        trial("a", 8, [(10, 0.5), (20, 0.6), (30, 0.7)], samples_per_second=100.0),
        trial("b", 8, [(10, 0.5)], samples_per_second=400.0),
        trial("c", 64, [(10, 0.5)], samples_per_second=900.0),
    )
    speed = analysis.throughput(t).set_index("batch_size")
    assert speed.loc[8, "samples_per_second"] == pytest.approx(100.0)  # median of 100,100,100,400
    assert speed.loc[8, "trials"] == 2 and speed.loc[8, "epochs"] == 4
    assert speed.loc[64, "samples_per_second"] == pytest.approx(900.0)


def test_empty_table_gives_an_empty_map():
    empty = pd.DataFrame(columns=list(COLUMNS))
    m = analysis.degradation_map(empty, target=0.9, tolerance=0.01, batch_sizes=(8, 32))
    assert m.frontier["batch_size"].tolist() == [8, 32]
    assert (m.frontier["trials"] == 0).all() and m.frontier["best_val_acc"].isna().all()
    assert m.baseline is None and m.largest_within is None and m.fit is None
    assert m.best_hparams.empty and m.throughput.empty and m.warnings == []


def test_only_errored_and_running_trials():
    t = table(trial("x", 8, [], outcome="errored"), trial("y", 32, [(10, 0.95)], outcome="running"))
    m = analysis.degradation_map(t, target=0.9, tolerance=0.01, batch_sizes=(8, 32))
    frontier = m.frontier.set_index("batch_size")
    assert frontier.loc[8, "errored"] == 1 and frontier.loc[32, "running"] == 1
    assert m.baseline is None  # a running trial has no final accuracy yet
    # ... but its evaluation points are real measurements of steps to target
    assert frontier.loc[32, "steps"] == 10
