"""The plain-PyTorch loop: it learns, accumulation is exact, divergence ends a trial cleanly,
resuming from a checkpoint replays the same run, and batch order splits across workers."""

import copy
import math

import pytest
import torch
from torch import nn

from tests.test_config import base_config
from trainables.config import TrialConfig
from trainables.data import TensorSplit, worker_batches
from trainables.datasets import load_synthetic
from trainables.loop import train


def run(overrides=None, splits=None, resume_state=None):
    config = TrialConfig.from_dict(base_config(**(overrides or {})))
    reports, states = [], []

    def report(metrics, state):
        reports.append(metrics)
        states.append(copy.deepcopy(state))  # state_dict tensors are live references

    train(config, report=report, splits=splits, resume_state=resume_state)
    return reports, states


def test_learns_digits_and_reports_every_metric():
    reports, _ = run(
        {"budget_unit": "steps", "budget_amount": 135, "eval_every": 45, "batch_size": 32}
        | {"base_lr": 0.05}
    )
    assert [r["optimizer_steps"] for r in reports] == [45, 90, 135]
    assert reports[-1]["val_acc"] > 0.9
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    required = {
        "optimizer_steps",
        "examples_seen",
        "epoch",
        "progress",
        "budget_steps",
        "warmup_steps",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_examples",
        "lr",
        "samples_per_second",
        "diverged",
        "reached_target",
        "global_batch",
        "per_worker_batch",
        "accumulation_steps",
        "bn_mode",
        "bn_batch",
    }
    assert required <= set(reports[0])
    first = reports[0]
    assert first["examples_seen"] == 45 * 32 and first["epoch"] == pytest.approx(45 * 32 / 1438)
    assert first["progress"] == pytest.approx(1 / 3) and reports[-1]["progress"] == 1.0
    assert first["val_examples"] == 359 and first["budget_steps"] == 135


def test_about_twenty_evaluations_by_default_at_every_batch_size():
    for batch in (8, 512):
        config = {"batch_size": batch, "budget_unit": "steps", "budget_amount": 60}
        reports, _ = run(config | {"scaling_rule": "none", "base_lr": 0.05})
        steps = [r["optimizer_steps"] for r in reports]
        assert steps == list(range(3, 61, 3)), batch  # every 3 steps: 20 evaluations


def test_an_epoch_budget_with_a_floor_gives_large_batches_their_steps():
    reports, _ = run(
        {"batch_size": 512, "budget_amount": 2, "min_steps": 30, "eval_every": 10}
        | {"base_lr": 0.1, "scaling_rule": "none"}
    )
    assert reports[-1]["optimizer_steps"] == 30  # 2 epochs alone would be 4 steps
    assert reports[-1]["epoch"] == pytest.approx(30 * 512 / 1438)


def test_warmup_is_a_fraction_of_the_budget_and_the_peak_is_reached():
    reports, _ = run(
        {"batch_size": 128, "base_lr": 0.05, "warmup_fraction": 0.2, "schedule": "constant"}
        | {"budget_unit": "steps", "budget_amount": 40, "eval_every": 4}
    )
    assert reports[0]["warmup_steps"] == 8
    peak = 0.05 * 128 / 32
    assert reports[0]["lr"] < peak and reports[-1]["lr"] == pytest.approx(peak)


def test_stop_at_target_ends_a_trial_at_its_first_evaluation_there():
    reports, states = run(
        {"budget_unit": "steps", "budget_amount": 400, "eval_every": 10, "base_lr": 0.05}
        | {"stop_at_target": 0.8}
    )
    assert reports[-1]["reached_target"] is True and reports[-1]["val_acc"] >= 0.8
    assert all(r["val_acc"] < 0.8 for r in reports[:-1])
    assert reports[-1]["optimizer_steps"] < 400 and states[-1]["finished"]


def test_overfits_one_batch():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    splits = load_synthetic((1, 8, 8))
    splits.train, splits.val = TensorSplit(x, y), TensorSplit(x, y)
    reports, _ = run(
        {
            "batch_size": 16,
            "budget_unit": "steps",
            "budget_amount": 60,
            "base_lr": 0.05,
            "warmup_fraction": 0,
            "schedule": "constant",
            "weight_decay": 0.0,
            "reference_batch": 16,
        },
        splits=splits,
    )
    assert reports[-1]["val_acc"] == 1.0
    assert reports[-1]["train_loss"] < 0.05


def test_accumulation_gives_the_full_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    criterion = nn.CrossEntropyLoss()
    criterion(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for xm, ym in zip(x.split(8), y.split(8), strict=True):  # what the loop does
        (criterion(model(xm), ym) / 4).backward()
    for g_full, p in zip(full, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g_full, rtol=1e-5, atol=1e-6)


def test_loop_with_accumulation_matches_loop_without():
    # A stable lr: at lr 0.2 the last-bit differences of 4 small matmuls vs 1 big one are
    # amplified chaotically within one epoch (measured 3.5% apart), at 0.01 they agree to 1e-8.
    common = {"batch_size": 64, "budget_amount": 1, "base_lr": 0.01, "eval_every": 100}
    no_accum, _ = run({**common, "max_device_batch": 64})
    accum, _ = run({**common, "max_device_batch": 16})
    assert accum[0]["accumulation_steps"] == 4 and no_accum[0]["accumulation_steps"] == 1
    assert accum[-1]["val_loss"] == pytest.approx(no_accum[-1]["val_loss"], rel=1e-6)


def test_divergence_ends_the_trial_cleanly():
    reports, states = run(
        {"budget_unit": "steps", "budget_amount": 200, "eval_every": 100, "base_lr": 1e4}
        | {"warmup_fraction": 0}
    )
    assert len(reports) == 1  # stopped at the first divergence check, not raised
    assert reports[0]["diverged"] is True and reports[0]["optimizer_steps"] == 16
    assert math.isfinite(reports[0]["val_acc"]) and states[0]["finished"]


def test_resume_in_the_middle_of_an_epoch_replays_the_same_run():
    # Batch 32 on digits: 44 steps per epoch; evaluations (and checkpoints) every 30 steps, so
    # the run resumes at step 30, 14 steps before the end of its first epoch.
    config = {"budget_unit": "steps", "budget_amount": 90, "eval_every": 30}
    full, states = run(config)
    resumed, _ = run(config, resume_state=states[0])
    # the checkpoint's evaluation is reported again as it was, then training goes on
    assert [r["optimizer_steps"] for r in resumed] == [30, 60, 90]
    assert resumed[0] == full[0]
    assert {r["resumed_at_step"] for r in full} == {0}
    assert {r["resumed_at_step"] for r in resumed[1:]} == {30}
    for a, b in zip(resumed, full, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_resume_replays_augmentation_exactly():
    splits = load_synthetic((3, 16, 16), n_train=640, n_val=64)
    splits.augment = "crop_flip"
    config = {"workload": "resnet8", "dataset": "synthetic"}
    config |= {"batch_size": 32, "budget_unit": "steps", "budget_amount": 30, "eval_every": 10}
    config |= {"reference_batch": 128, "max_train_examples": 0}
    full, states = run(config, splits=copy.deepcopy(splits))
    resumed, _ = run(config, splits=copy.deepcopy(splits), resume_state=states[0])
    for a, b in zip(resumed, full, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_worker_slices_compose_the_global_batch():
    one = list(worker_batches(100, 32, seed=3, epoch=2, rank=0, world=1))
    two = [list(worker_batches(100, 32, seed=3, epoch=2, rank=r, world=2)) for r in range(2)]
    assert len(one) == 3  # 100 // 32, the partial batch dropped
    for step, batch in enumerate(one):
        assert torch.equal(torch.cat([two[0][step], two[1][step]]), batch)
    other_epoch = list(worker_batches(100, 32, seed=3, epoch=3, rank=0, world=1))
    assert not torch.equal(other_epoch[0], one[0])


def test_resuming_a_finished_run_reports_its_evaluations_again_without_training():
    full, states = run({"budget_unit": "steps", "budget_amount": 20, "eval_every": 10})
    again, _ = run({"budget_unit": "steps", "budget_amount": 20}, resume_state=states[-1])
    assert again == full


def test_a_resumed_run_reports_every_evaluation_up_to_its_checkpoint_first():
    """A scheduler that saw none of them (a Ray Train run's workers ran ahead of their reports
    when the study was killed) judges the trial at each, in order, as it would have."""
    config = {"budget_unit": "steps", "budget_amount": 90, "eval_every": 30}
    full, states = run(config)
    resumed, _ = run(config, resume_state=states[1])
    assert [r["optimizer_steps"] for r in resumed] == [30, 60, 90]
    assert resumed[:2] == full[:2]
    assert "val_per_example" not in states[1]["history"][0]  # kept for the run's end only


def test_ghost_batchnorm_normalises_each_group_on_its_own():
    from trainables.batchnorm import GhostBatchNorm2d, apply_bn_mode

    model = apply_bn_mode(nn.Sequential(nn.BatchNorm2d(3)), "ghost", ghost_batch=4, world=1)
    assert type(model[0]) is GhostBatchNorm2d
    x = (torch.randn(8, 3, 5, 5) * 3 + 1).requires_grad_()
    out = model.train()(x)
    groups = [nn.BatchNorm2d(3).train() for _ in range(2)]
    expected = torch.cat([g(c) for g, c in zip(groups, x.split(4), strict=True)])
    torch.testing.assert_close(out, expected)
    # One update of the running statistics per forward, by the mean of the groups' statistics.
    for name in ("running_mean", "running_var"):
        mean = torch.stack([getattr(g, name) for g in groups]).mean(0)
        torch.testing.assert_close(getattr(model[0], name), mean)
    assert not torch.allclose(out, nn.BatchNorm2d(3).train()(x))  # differs from full-batch BN
    ragged = apply_bn_mode(nn.Sequential(nn.BatchNorm2d(3)), "ghost", ghost_batch=3, world=1)
    assert ragged.train()(x).shape == x.shape  # 8 = 3 + 3 + 2: group by group


def test_the_bn_batch_is_the_same_at_every_batch_size_with_ghost_batchnorm():
    splits = load_synthetic((3, 16, 16), n_train=512, n_val=64)
    seen = {}
    for batch in (64, 256):
        config = {"workload": "resnet8", "dataset": "synthetic"}
        config |= {"batch_size": batch, "budget_unit": "steps", "budget_amount": 1}
        config |= {"bn_mode": "ghost", "ghost_batch": 32, "reference_batch": 128}
        reports, _ = run(config, splits=copy.deepcopy(splits))
        seen[batch] = (reports[0]["bn_mode"], reports[0]["bn_batch"])
    assert seen == {64: ("ghost32", 32), 256: ("ghost32", 32)}
    reports, _ = run({"budget_unit": "steps", "budget_amount": 1})  # Simple CNN: no BN
    assert (reports[0]["bn_mode"], reports[0]["bn_batch"]) == ("none", 0)
