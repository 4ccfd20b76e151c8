"""The balanced Optuna searcher and per-batch-size ASHA, driven directly (no Ray cluster)."""

from collections import Counter
from functools import partial
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from search_spaces import define_by_run, get_space
from tuner.scheduler import PerBatchSizeASHA
from tuner.searcher import BalancedOptunaSearch

GRID = [8, 32, 128, 512]


def sqlite_storage(path):
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def make_searcher(path):
    return BalancedOptunaSearch(
        space=partial(define_by_run, space=get_space("simple_cnn"), batch_sizes=GRID),
        metric="val_acc",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0),
        storage_factory=partial(sqlite_storage, path),
        study_name="t",
        batch_sizes=GRID,
        max_epochs=4,
    )


def test_every_batch_size_gets_its_share_even_when_tpe_prefers_one(tmp_path):
    searcher = make_searcher(tmp_path / "o.db")
    for i in range(20):
        params = searcher.suggest(f"t{i}")
        # Reward only batch 8, as a sampler that learned freely would then crowd it.
        score = 0.99 if params["batch_size"] == 8 else 0.1
        searcher.on_trial_result(f"t{i}", {"val_acc": score, "epoch": 4})
        searcher.on_trial_complete(f"t{i}", {"val_acc": score, "epoch": 4})
    counts = Counter(t.params["batch_size"] for t in searcher._ot_study.trials)
    assert counts == {8: 5, 32: 5, 128: 5, 512: 5}


def test_outcomes_reach_optuna_honestly(tmp_path):
    storage = sqlite_storage(tmp_path / "o.db")
    searcher = make_searcher(tmp_path / "o.db")
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_result("t0", {"val_acc": 0.9, "epoch": 1})
    searcher.on_trial_result("t0", {"val_acc": 0.95, "epoch": 4})
    searcher.on_trial_complete("t0", {"val_acc": 0.95, "epoch": 4})  # full budget
    # Stopped by ASHA at its first rung: Tune passes that result to on_trial_complete only.
    searcher.on_trial_complete("t1", {"val_acc": 0.5, "epoch": 1})
    searcher.on_trial_result("t2", {"val_acc": 0.1, "epoch": 1, "diverged": True})
    searcher.on_trial_complete("t2", {"val_acc": 0.1, "epoch": 1, "diverged": True})
    searcher.on_trial_complete("t3", None, error=True)
    trials = optuna.load_study(study_name="t", storage=storage).trials
    states = [(t.state, t.user_attrs["outcome"]) for t in trials]
    assert states == [
        (TrialState.COMPLETE, "completed"),
        (TrialState.PRUNED, "stopped"),
        (TrialState.PRUNED, "diverged"),
        (TrialState.FAIL, "errored"),
    ]
    assert trials[0].value == 0.95 and trials[1].intermediate_values == {1: 0.5}
    assert [t.user_attrs["tune_trial_id"] for t in trials] == ["t0", "t1", "t2", "t3"]


def test_a_restored_searcher_reopens_its_database_where_the_study_is_now(tmp_path, monkeypatch):
    """Resume on another machine: the checkpoint names no path, the study's spec finds the
    working copy there, the snapshot saved with the checkpoint is the database, and the
    restored searcher goes on with the same trials, round robin and sampler."""
    from tuner.driver import make_searcher as study_searcher
    from tuner.search import build_parser, build_spec

    args = build_parser().parse_args(["simple_cnn", "--storage", "s3://bucket/studies"])
    spec = build_spec(args, has_gpus=False)
    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path / "here"))
    searcher = study_searcher(spec, get_space("simple_cnn"))
    for i in range(3):
        searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_acc": 0.5 + i / 10, "epoch": spec.epochs})
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5 + i / 10, "epoch": spec.epochs})
    searcher.suggest("t3")  # running at the checkpoint
    staging = tmp_path / "staging"
    staging.mkdir()
    searcher.save(str(staging / "searcher-state.pkl"))
    assert (spec.study_dir / "optuna.db").is_file()

    monkeypatch.setenv("BATCH_SCALING_CACHE", str(tmp_path / "there"))
    spec.study_dir.mkdir(parents=True)
    (staging / "optuna-snapshot.db").rename(spec.study_dir / "optuna.db")
    moved = study_searcher(spec, get_space("simple_cnn"))
    moved.restore(str(staging / "searcher-state.pkl"))

    assert str(tmp_path / "there") in moved._storage.url
    moved.on_trial_result("t3", {"val_acc": 0.9, "epoch": spec.epochs})
    moved.on_trial_complete("t3", {"val_acc": 0.9, "epoch": spec.epochs})
    next_batch = moved.suggest("t4")["batch_size"]
    assert next_batch == spec.batch_sizes[0]  # 4 assigned before; t4 starts the next round
    trials = optuna.load_study(study_name=spec.name, storage=moved._storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.RUNNING]
    assert trials[3].value == 0.9 and trials[4].params["batch_size"] == next_batch


def test_a_searcher_pickles_without_its_database_path(tmp_path):
    """tuner.pkl pickles the searcher (cloudpickle): it must carry no live storage."""
    import ray.cloudpickle as cloudpickle

    searcher = make_searcher(tmp_path / "o.db")
    searcher.suggest("t0")
    copy = cloudpickle.loads(cloudpickle.dumps(searcher))
    assert copy._ot_trials["t0"]._trial_id == searcher._ot_trials["t0"]._trial_id
    assert not {"_storage", "_ot_study"} & set(searcher.__getstate__())


def trial(tid, batch):
    return SimpleNamespace(trial_id=tid, config={"batch_size": batch})


def test_asha_compares_a_trial_only_with_its_own_batch_size():
    scheduler = PerBatchSizeASHA(
        metric="val_acc", mode="max", max_t=9, grace_period=1, reduction_factor=2
    )
    small = [trial(f"s{i}", 8) for i in range(2)]
    large = trial("l0", 512)
    for t in (*small, large):
        scheduler.on_trial_add(None, t)
    # Small batches reach 0.9 at epoch 1; the large batch only 0.3 (fewer steps so far).
    for t in small:
        scheduler.on_trial_result(None, t, {"epoch": 1, "val_acc": 0.9})
    action = scheduler.on_trial_result(None, large, {"epoch": 1, "val_acc": 0.3})
    assert action == TrialScheduler.CONTINUE  # first of its batch size: no peers to lose to
    weaker_large = trial("l1", 512)
    scheduler.on_trial_add(None, weaker_large)
    action = scheduler.on_trial_result(None, weaker_large, {"epoch": 1, "val_acc": 0.2})
    assert action == TrialScheduler.STOP  # worse than its peer at the same batch size
    assert scheduler.stopped == {8: 0, 512: 1}
