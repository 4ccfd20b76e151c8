"""Tune's side of the search, driven directly (no Ray cluster): the searcher adapter, its
checkpoints across machines, and ASHA per cell with rungs at fractions of the budget."""

import json
import os
import pickle
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from tuner.options import build_parser
from tuner.resolve import build_spec
from tuner.spec import save_spec
from tuner.store.table import collect_trials
from tuner.study.experiment import make_searcher
from tuner.study.scheduler import PerCellASHA


def study_spec(*args: str):
    cli = ["simple_cnn", "--storage", "s3://bucket/studies", "--rules", "linear", *args]
    return build_spec(build_parser().parse_args(cli), gpus_available=False)


def test_the_searcher_hands_out_configs_and_reports_outcomes(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    spec = study_spec("--trials", "4", "--seeds", "1")
    searcher = make_searcher(spec)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["cell"] for c in configs] == ["b8", "b32", "b128", "b512"]
    assert {c["phase"] for c in configs} == {"search"} and {c["seed"] for c in configs} == {0}
    for i, _c in enumerate(configs):
        result = {"val_acc": 0.9, "optimizer_steps": 100, "progress": 1.0}
        searcher.on_trial_result(f"t{i}", {"val_acc": 0.5, "optimizer_steps": 50})
        searcher.on_trial_complete(f"t{i}", result if i else {**result, "progress": 0.33})
    confirm = searcher.suggest("c0")
    assert confirm["phase"] == "confirm" and confirm["seed"] == 1 and confirm["cell"] == "b32"
    storage = optuna.storages.RDBStorage(f"sqlite:///{spec.study_dir / 'optuna.db'}")
    b8 = optuna.load_study(study_name=f"{spec.name}/b8", storage=storage).trials[0]
    assert b8.state == optuna.trial.TrialState.PRUNED and b8.user_attrs["outcome"] == "stopped"
    for i in range(1, 3):
        searcher.suggest(f"c{i}")
    assert searcher.suggest("c8") is None  # confirmations running: their values may call
    done = {"val_acc": 0.9, "optimizer_steps": 100, "progress": 1.0, "budget_steps": 100}
    for i in range(3):  # for checks (b8, the smallest batch, has no confirmed baseline)
        searcher.on_trial_complete(f"c{i}", done)
    assert searcher.suggest("c9") == Searcher.FINISHED


def test_a_restored_searcher_reopens_its_database_where_the_study_is_now(tmp_path, monkeypatch):
    """Resume on another machine: the checkpoint names no path, the study's spec finds the
    working copy there, the snapshot saved with the checkpoint is the database, and the
    restored searcher goes on with the same trials, round robin and samplers."""
    spec = study_spec()
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path / "here"))
    searcher = make_searcher(spec)
    for i in range(3):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5 + i / 10, "progress": 1.0})
    searcher.suggest("t3")  # running at the checkpoint
    staging = tmp_path / "staging"
    staging.mkdir()
    searcher.save(str(staging / "searcher-state.pkl"))
    assert (spec.study_dir / "optuna.db").is_file()

    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path / "there"))
    spec.study_dir.mkdir(parents=True)
    (staging / "optuna-snapshot.db").rename(spec.study_dir / "optuna.db")
    moved = make_searcher(spec)
    moved.restore(str(staging / "searcher-state.pkl"))

    assert str(tmp_path / "there") in moved.search.storage_url
    moved.on_trial_complete("t3", {"val_acc": 0.9, "progress": 1.0})
    assert moved.suggest("t4")["cell"] == "b8"  # 4 assigned before; t4 starts the next round
    storage = optuna.storages.RDBStorage(moved.search.storage_url)
    b512 = optuna.load_study(study_name=f"{spec.name}/b512", storage=storage).trials
    assert [t.state for t in b512] == [optuna.trial.TrialState.COMPLETE]
    assert b512[0].value == 0.9


def test_a_searcher_pickles_without_its_database(tmp_path, monkeypatch):
    """tuner.pkl pickles the searcher (cloudpickle): it must carry no live storage."""
    import ray.cloudpickle as cloudpickle

    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    searcher = make_searcher(study_spec())
    searcher.suggest("t0")
    data = cloudpickle.dumps(searcher)
    assert b"sqlite" not in data
    copy = cloudpickle.loads(data)
    assert copy.search.trials == searcher.search.trials


def trial(tid, cell, phase="search"):
    return SimpleNamespace(trial_id=tid, config={"cell": cell, "phase": phase})


def test_the_searcher_itself_limits_trials_at_once(tmp_path, monkeypatch):
    """No Tune ConcurrencyLimiter between Tune and the searcher (it dropped the end of a trial
    its own, separately saved record lacked, and a resumed study waited forever): the
    searcher counts its running trials, the record a resume reconciles."""
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    monkeypatch.delenv("BATCH_SCALING_SET_PENDING", raising=False)
    from tuner.study.experiment import make_tuner

    cli = ["simple_cnn", "--rules", "linear", "--trials", "4", "--seeds", "1"]
    cli += ["--max-concurrent", "2", "--storage", str(tmp_path / "studies")]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=False)

    tuner = make_tuner(spec)
    config = tuner._local_tuner._tune_config
    assert config.max_concurrent_trials is None and config.search_alg.max_concurrent == 2
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "2"  # Tune queues two, not one
    searcher = config.search_alg
    assert searcher.suggest("t0") and searcher.suggest("t1")
    assert searcher.suggest("t2") is None  # two running
    searcher.on_trial_complete("t0", {"val_acc": 0.5, "optimizer_steps": 10, "progress": 1.0})
    assert searcher.suggest("t2")["cell"]


def test_asha_compares_a_trial_only_within_its_cell_at_equal_progress():
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    small = [trial(f"s{i}", "b8") for i in range(2)]
    large = trial("l0", "b512")
    for t in (*small, large):
        scheduler.on_trial_add(None, t)
    # Small batches reach 0.9 at their first rung; the large batch only 0.3.
    for t in small:
        scheduler.on_trial_result(None, t, {"progress": 1 / 9, "val_acc": 0.9})
    action = scheduler.on_trial_result(None, large, {"progress": 1 / 9, "val_acc": 0.3})
    assert action == TrialScheduler.CONTINUE  # first of its cell: no peers to lose to
    weaker = trial("l1", "b512")
    scheduler.on_trial_add(None, weaker)
    # Before the rung nothing is decided, however poor the trial looks.
    assert scheduler.on_trial_result(None, weaker, {"progress": 0.1, "val_acc": 0.1}) == "CONTINUE"
    action = scheduler.on_trial_result(None, weaker, {"progress": 0.12, "val_acc": 0.2})
    assert action == TrialScheduler.STOP  # worse than its peer at the same rung
    assert scheduler.stopped == {"b8": 0, "b512": 1}


def test_a_trial_resumed_after_its_stop_is_stopped_again_and_a_kept_one_kept():
    """A study killed between ASHA's stop and Tune saving the trial as ended resumes the trial,
    which reports its checkpoint (the rung's step) again: it stops there again, as in the
    uninterrupted study; a trial ASHA kept at the rung is kept again."""
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    best, kept, weak = trial("s0", "b8"), trial("s1", "b8"), trial("s2", "b8")
    for t, acc in ((best, 0.9), (kept, 0.95), (weak, 0.2)):
        scheduler.on_trial_add(None, t)
        scheduler.on_trial_result(None, t, {"progress": 0.25, "val_acc": acc})
    assert scheduler.stopped == {"b8": 1}
    restored = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    restored.load_state(pickle.loads(pickle.dumps(scheduler.state())))
    assert restored.on_trial_result(None, weak, {"progress": 0.25, "val_acc": 0.2}) == "STOP"
    assert restored.on_trial_result(None, kept, {"progress": 0.25, "val_acc": 0.95}) == "CONTINUE"
    assert restored.stopped == {"b8": 1}  # the same trial is not counted twice


def rungs(scheduler: PerCellASHA) -> dict:
    """Every group's rungs: cell -> [(milestone, {trial: value})]."""
    return {
        cell: [(m, dict(r)) for m, r in group._brackets[0]._rungs]
        for cell, group in scheduler._groups.items()
    }


def test_a_resumed_scheduler_takes_in_what_happened_after_its_state_was_saved():
    """Saved while s0 ran: s0 then passed two rungs and ended, s1 started, passed a rung and
    was stopped at the next. Taking in their result rows (as a resume reads them from the
    trials' files) gives the rungs and stops of the scheduler that saw it all live; taken in
    twice, nothing changes. Without it the resumed rungs lack them, and s1, resumed from its
    checkpoint, would run on where the live study stopped it."""
    live = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    s0, s1, s2 = trial("s0", "b8"), trial("s1", "b8"), trial("s2", "b8")
    rows = {
        "s0": [{"progress": p, "val_acc": a} for p, a in ((0.12, 0.6), (0.34, 0.7), (1.0, 0.9))],
        "s1": [{"progress": p, "val_acc": a} for p, a in ((0.12, 0.65), (0.34, 0.1))],
    }
    live.on_trial_add(None, s2)
    live.on_trial_result(None, s2, {"progress": 0.12, "val_acc": 0.55})
    live.on_trial_add(None, s0)
    saved = pickle.loads(pickle.dumps(live.state()))
    for t in (s0, s1):
        if t is s1:
            live.on_trial_add(None, s1)
        actions = [live.on_trial_result(None, t, r) for r in rows[t.trial_id]]
    live.on_trial_complete(None, s0, rows["s0"][-1])
    assert actions[-1] == TrialScheduler.STOP  # s1 at its second rung
    restored = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    restored.load_state(saved)
    assert rungs(restored) != rungs(live)
    for _ in range(2):
        restored.take_in("s0", "b8", rows["s0"])
        restored.take_in("s1", "b8", rows["s1"], stopped_at=rows["s1"][-1])
        assert rungs(restored) == rungs(live)
        assert restored.stop_result("s1") == live.stop_result("s1") == rows["s1"][-1]
    assert restored.on_trial_result(None, s1, rows["s1"][-1]) == TrialScheduler.STOP
    assert restored.stopped == live.stopped == {"b8": 1}


def test_a_trial_stopped_then_resumed_past_its_stop_ends_where_it_was_stopped(
    tmp_path, monkeypatch
):
    """A Ray Train trial's workers train on while Tune's stop travels to them: killed then, the
    study resumes the trial from a checkpoint later than its stop, which it re-reports before
    being stopped again. Its Optuna record and its rows in the trial table end at the
    evaluation that stopped it, as in an uninterrupted study."""
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    spec = study_spec("--trials", "8", "--seeds", "1")
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    searcher = make_searcher(spec, scheduler)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(5)}
    assert configs["t0"]["cell"] == configs["t4"]["cell"] == "b8"

    def result(step, acc):
        return {"optimizer_steps": step, "progress": step / 90, "val_acc": acc}

    rung = result(15, 0.2)
    for tid, acc in (("t0", 0.9), ("t4", 0.2)):
        scheduler.on_trial_add(None, trial(tid, "b8"))
        for step in (5, 10):
            searcher.on_trial_result(tid, result(step, acc))
    scheduler.on_trial_result(None, trial("t0", "b8"), result(15, 0.9))
    assert scheduler.on_trial_result(None, trial("t4", "b8"), rung) == "STOP"
    # killed here; resumed, t4 re-reports its checkpoint at step 45 and is stopped again
    restored = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    restored.load_state(pickle.loads(pickle.dumps(scheduler.state())))
    searcher._scheduler = restored
    assert restored.on_trial_result(None, trial("t4", "b8"), result(45, 0.95)) == "STOP"
    searcher.on_trial_complete("t4", {**result(45, 0.95), "done": True})
    assert restored.stopped == {"b8": 1}

    storage = optuna.storages.RDBStorage(f"sqlite:///{spec.study_dir / 'optuna.db'}")
    b8 = optuna.load_study(study_name=f"{spec.name}/b8", storage=storage).trials
    stopped = next(t for t in b8 if t.user_attrs["tune_trial_id"] == "t4")
    assert stopped.user_attrs["outcome"] == "stopped"
    assert stopped.intermediate_values == {5: 0.2, 10: 0.2, 15: 0.2}

    # Tune's result file holds the re-reported step 45: the table leaves it out
    save_spec(spec)
    trial_dir = spec.study_dir / "trial_t4"
    trial_dir.mkdir()
    rows = [result(s, 0.2) for s in (5, 10, 15)] + [result(45, 0.95)]
    lines = [json.dumps({**r, "trial_id": "t4"}) for r in rows]
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    table = collect_trials(spec.study_dir)
    mine = table[table["trial_id"] == "t4"]
    assert mine["optimizer_steps"].tolist() == [5, 10, 15]
    assert (mine["outcome"] == "stopped").all()


def test_a_stopped_trial_of_a_study_saved_before_stop_steps_were_kept_still_counts():
    """Scheduler state of an older study (counts per cell, a set of ids) loads and counts."""
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    old = {"groups": {}, "stopped": {"b8": 2}, "told_stop": {"s1", "s2"}}
    scheduler.load_state(old)
    assert scheduler.stopped == {"b8": 2} and scheduler.stop_result("s1") is None
    assert scheduler.on_trial_result(None, trial("s1", "b8"), {"progress": 0.5}) == "STOP"


def test_confirmation_runs_are_never_stopped():
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    best = trial("s", "b8")
    scheduler.on_trial_add(None, best)
    scheduler.on_trial_result(None, best, {"progress": 1 / 9, "val_acc": 0.99})
    confirm = trial("c", "b8", phase="confirm")
    scheduler.on_trial_add(None, confirm)
    for progress in (1 / 9, 1 / 3, 0.9):
        assert scheduler.on_trial_result(None, confirm, {"progress": progress, "val_acc": 0.01})
    assert scheduler.stopped == {"b8": 0}


def test_rungs_are_real_fractions_of_every_batch_sizes_budget():
    spec = study_spec()
    # the first rung after the longest warmup the search tries (issue 32), else 1/9
    warmup_max = spec.search_ranges["warmup_fraction"][1]
    assert warmup_max > 1 / 9 and spec.rungs() == pytest.approx([warmup_max, 3 * warmup_max])
    # digits: 2 epochs with at least 150 steps: the first rung is 30+ steps at every batch size
    budget = spec.budget_spec()
    for batch in spec.batch_sizes:
        assert spec.rungs()[0] * budget.steps(1438, batch) >= 30


def test_trials_start_no_dataset_manager_actor_without_datasets(tmp_path):
    """Ray Train's datasets callback starts a DatasetManager actor (a process that imports Ray
    Train) on every run, datasets or not; a trial of ours passes none, so it is dropped."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from tuner.study.trial import CAN_REUSE_DRIVERS, StoppableTorchTrainer

    def kinds(trainer_class) -> set[type]:
        trainer = trainer_class(
            lambda config: None,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="t", storage_path=str(tmp_path)),
        )
        return {type(c) for c in trainer._create_default_callbacks()}

    assert CAN_REUSE_DRIVERS
    assert DatasetsCallback in kinds(TorchTrainer)
    assert DatasetsCallback not in kinds(StoppableTorchTrainer)


def test_a_one_worker_trial_holds_its_workers_resources_and_a_driver_holds_a_token():
    """A one-worker trial trains in its Tune actor, which asks for the worker's CPUs and
    (fractional) GPUs; a multi-worker trial's driver holds no CPU (its workers have theirs)."""
    from tuner.study.trial import DRIVER_RESOURCES, reuses_actors, trainable

    one = build_spec(
        build_parser().parse_args(["simple_cnn", "--gpus-per-worker", "0.25"]), gpus_available=True
    )
    assert trainable(one)._resources.bundles == [{"CPU": 1.0, "GPU": 0.25}]
    assert reuses_actors(one)
    two = build_spec(
        build_parser().parse_args(["simple_cnn", "--workers-per-trial", "2"]), gpus_available=False
    )
    # Tune drops the request's zero CPU: a token of memory is left
    assert trainable(two)._resources.bundles == [{"memory": float(DRIVER_RESOURCES["memory"])}]


def test_trials_are_placed_on_the_studys_accelerator_type_and_whole_on_one_node(tmp_path):
    """A one-worker trial's actor asks for a sliver of its node's accelerator type; a Ray Train
    trial's worker group is STRICT_PACK (or PACK where no node holds it) on that type."""
    import dataclasses

    from tuner.study.trial import scaling_config, trainable

    one = build_spec(
        build_parser().parse_args(["simple_cnn", "--accelerator-type", "A10G"]),
        gpus_available=True,
    )
    assert one.accelerator_type == "A10G"
    assert trainable(one)._resources.bundles == [
        {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A10G": 0.001}
    ]
    two = build_spec(
        build_parser().parse_args(["simple_cnn", "--workers-per-trial", "2"]), gpus_available=False
    )
    assert (two.placement_strategy, two.accelerator_type) == ("PACK", "")  # until prepare()
    placed = dataclasses.replace(
        two, placement_strategy="STRICT_PACK", accelerator_type="T1", storage=str(tmp_path)
    )
    scaling = scaling_config(placed)
    assert (scaling.placement_strategy, scaling.accelerator_type) == ("STRICT_PACK", "T1")
    assert scaling.num_workers == 2


def test_a_trials_searched_momentum_and_beta2_reach_its_config_else_the_workloads():
    from trainables.config import TrialConfig

    spec = build_spec(build_parser().parse_args(["simple_cnn"]), gpus_available=False)
    params = {
        "batch_size": 32,
        "scaling_rule": "sqrt",
        "optimizer": "sgd",
        "base_lr": 0.1,
        "weight_decay": 1e-4,
        "warmup_fraction": 0.05,
    }
    fixed = TrialConfig.from_dict(spec.trial_config(params))
    assert (fixed.momentum, fixed.beta2) == (0.9, 0.999)  # the workload's
    searched = TrialConfig.from_dict(spec.trial_config({**params, "momentum": 0.97, "beta2": 0.9}))
    assert (searched.momentum, searched.beta2) == (0.97, 0.9)
    with pytest.raises(Exception, match="momentum must be in"):
        TrialConfig.from_dict(spec.trial_config({**params, "momentum": 1.2}))


def test_a_run_started_ahead_that_no_check_can_use_is_stopped(tmp_path, monkeypatch):
    """The scheduler asks the searcher (its search's `unneeded`, tests/test_speculation.py)
    about every check run's result: one no check can use any more is stopped, the others run
    to their end; the hook survives the pickling Tune does of the whole Tuner."""
    import ray.cloudpickle as cloudpickle

    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path))
    scheduler = PerCellASHA(metric="val_acc", mode="max", grace=1 / 9, reduction_factor=3)
    searcher = make_searcher(study_spec(), scheduler)
    del scheduler.unneeded  # as a Tuner pickled before the hook: the searcher sets it again
    searcher, scheduler = cloudpickle.loads(cloudpickle.dumps((searcher, scheduler)))
    searcher.search.unwanted = {(800, 0)}
    searcher.search.unneeded = lambda key: key == "ahead"  # the seam: the rule is tested there
    for key, expected in (("ahead", TrialScheduler.STOP), ("needed", TrialScheduler.CONTINUE)):
        run = trial(key, "b8", phase="extend")
        scheduler.on_trial_add(None, run)
        assert scheduler.on_trial_result(None, run, {"progress": 0.1, "val_acc": 0.5}) == expected
    assert scheduler.stopped == {}  # not one of ASHA's stops
