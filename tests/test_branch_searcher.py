"""The branch study's searcher driven directly (no Ray cluster): its jobs appear as their inputs
exist, and every way a job can fail ends the study with a finding, never a hang or a crash."""

import json
import math

import pytest
from ray.tune.search import Searcher

from tuner.branch import plan as planning
from tuner.branch import write
from tuner.branch.run import BranchSearcher
from tuner.options import build_parser
from tuner.resolve import build_spec


def searcher(tmp_path, *args):
    cli = ["simple_cnn", "--dataset", "digits", "--method", "branch", "--rules", "sqrt"]
    cli += ["--storage", str(tmp_path), "--name", "b", "--branch-at", "0.1,0.5", *args]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=False)
    return BranchSearcher(spec, planning.make_plan(spec, 1437))


def record(value, **more):
    return json.dumps({"value": value, "diverged": False, **more})


def run_jobs(s):
    """Hand out every queued job: {trial id: payload}."""
    jobs = {}
    while (payload := s.suggest(f"t{len(s.jobs)}-{len(jobs)}")) not in (None, Searcher.FINISHED):
        jobs[next(j.trial_id for j in s.jobs if j.payload is payload)] = payload
    return jobs


def rung_runs(payload, value):
    about = {"checkpoint": payload["checkpoint"], "multiplier": payload["multiplier"]}
    runs = [
        {**about, "candidate": label, "lr": lr, "seed": 7, "phase": "search", "value": value}
        for label, lr in payload["candidates"]
    ]
    label, lr = payload["candidates"][0]
    runs += [
        {**about, "candidate": label, "lr": lr, "seed": s, "phase": "confirm", "value": value}
        for s in payload["confirm_seeds"]
    ]
    return [{**r, "val_examples": 0, "val_loss_sd": math.nan, "per_example": None} for r in runs]


def test_probes_that_all_diverge_end_the_study_with_a_finding(tmp_path):
    s = searcher(tmp_path)
    jobs = run_jobs(s)
    assert [p["kind"] for p in jobs.values()] == ["probe"] * 4
    for trial_id in jobs:
        s.on_trial_complete(trial_id, {"record": record(math.nan, base_lr=1.0)})
    assert s.suggest("next") == Searcher.FINISHED
    assert "every lr of the short search diverged" in s.failure


def test_a_diverged_base_run_ends_the_study_with_a_finding(tmp_path):
    s = searcher(tmp_path, "--base-lr", "0.05")
    ((trial_id, payload),) = run_jobs(s).items()
    assert payload["kind"] == "base" and payload["keep_steps"] == [36, 179]
    s.on_trial_complete(trial_id, {"record": json.dumps({"value": 0.1, "diverged": True})})
    assert s.suggest("next") == Searcher.FINISHED and "base run failed or diverged" in s.failure


def test_ladders_climb_while_they_hold_and_a_failed_k1_ends_its_own(tmp_path):
    s = searcher(tmp_path, "--base-lr", "0.05")
    ((base_id, _),) = run_jobs(s).items()
    history = [{"step": 36, "value": 0.70}, {"step": 179, "value": 0.90}]
    s.on_trial_complete(base_id, {"record": record(0.99), "history": json.dumps(history)})
    rungs = run_jobs(s)
    assert sorted((p["checkpoint"], p["multiplier"]) for p in rungs.values()) == [
        (0.1, 1),
        (0.1, 2),
        (0.5, 1),
        (0.5, 2),
    ]
    for trial_id, p in rungs.items():
        if p["checkpoint"] == 0.5 and p["multiplier"] == 1:
            s.on_trial_complete(trial_id, None, error=True)  # k=1 errored at 50%
        else:  # at 10%, k=1 and k=2 both end at 0.8: k=2 holds, the ladder goes on
            s.on_trial_complete(trial_id, {"runs": json.dumps(rung_runs(p, 0.8))})
    ((next_id, next_rung),) = run_jobs(s).items()
    assert (next_rung["checkpoint"], next_rung["multiplier"]) == (0.1, 4)
    s.on_trial_complete(next_id, {"runs": json.dumps(rung_runs(next_rung, 0.5))})
    assert s.suggest("next") == Searcher.FINISHED  # 4 fell 30 pt behind: shown degraded
    first, second = s.measured()
    assert first.batch == 16 and first.tolerance == pytest.approx(0.05)  # half of 10 pt
    assert second.note == "k=1 (batch 8) errored: not measured" and second.batch == 8
    data = write.findings(s.spec, s.plan, s)  # the report is written, not a traceback
    assert [p["note"] for p in data["points"]] == ["", "k=1 (batch 8) errored: not measured"]


def tune_state(directory, trials: dict[str, tuple[str, dict | None]]) -> None:
    """Tune's experiment state as `tuner.study.searcher.tune_trials` reads it: each trial's
    status and last result."""
    data = [
        [
            json.dumps({"trial_id": t, "status": status, "config": {}}),
            json.dumps({"last_result": r}),
        ]
        for t, (status, r) in trials.items()
    ]
    (directory / "experiment_state-2026-12-05_12-00-00.json").write_text(
        json.dumps({"trial_data": data})
    )


def test_a_restored_searcher_ends_what_tune_ended_and_runs_the_rest_again(tmp_path):
    """Saved with one probe ended and three running: Tune had since ended one (its result in
    Tune's state), runs one again (cut short: a cost row of its own) and never saved the last
    (back to the queue). Nothing that ended runs again; the study goes on to the base run."""
    s = searcher(tmp_path, "--rules", "sqrt")
    probes = list(run_jobs(s))
    s.on_trial_complete(probes[0], {"record": record(0.5, base_lr=0.01)})
    state = tmp_path / "searcher-state.pkl"
    s.save(str(state))
    ended_at = s.saved_at + 5
    tune_state(
        tmp_path,
        {
            probes[0]: ("TERMINATED", {"record": record(0.5, base_lr=0.01)}),
            probes[1]: ("TERMINATED", {"record": record(0.6, base_lr=0.02), "timestamp": ended_at}),
            probes[2]: ("RUNNING", None),
        },
    )
    restored = searcher(tmp_path, "--rules", "sqrt")
    restored.max_concurrent = 3
    restored.restore(str(state))
    assert restored.max_concurrent == 3  # this run's, not the saved one's
    by_id = {j.trial_id: j for j in restored.jobs}
    assert by_id[probes[1]].ended == ended_at and "record" in by_id[probes[1]].result
    assert list(restored.running) == [probes[2]]
    requeued = [j for j in restored.queue if j.kind == "probe"]
    assert len(requeued) == 1 and not requeued[0].trial_id  # Tune never saved it
    (cut,) = restored.interrupted
    assert cut.trial_id == f"{probes[2]}-cut0" and cut.ended == restored.saved_at
    costs = restored.cost_table()
    assert len(costs) == 4 and costs["trial_id"].is_unique
    # cut again: another row of its own, another interval down
    restored.save(str(state))
    again = searcher(tmp_path, "--rules", "sqrt")
    again.restore(str(state))
    assert [c.trial_id for c in again.interrupted] == [f"{probes[2]}-cut{i}" for i in (0, 1)]
    assert len(again.down) == 2 and again.cost_table()["trial_id"].is_unique
    # the rest of the study: the requeued probe and the resumed one end, the base run follows
    (again_id, again), *_ = run_jobs(restored).items()
    assert again["kind"] == "probe"
    restored.on_trial_complete(again_id, {"record": record(0.4, base_lr=0.04)})
    restored.on_trial_complete(probes[2], {"record": record(0.7, base_lr=0.03)})
    assert restored.base_lr == 0.03
    assert [p["kind"] for p in run_jobs(restored).values()] == ["base"]


def test_a_job_runs_with_the_data_options_of_the_run_that_resumes_it(tmp_path):
    """--data-dir and --loader-workers may change on resume: a job planned before the
    interruption reads its data where this run says, in every config it holds."""
    import dataclasses

    from tuner.branch.trial import with_run_options

    s = searcher(tmp_path, "--base-lr", "0.05")
    ((base_id, base),) = run_jobs(s).items()
    s.on_trial_complete(base_id, {"record": record(0.99), "history": "[]"})
    rung = next(iter(run_jobs(s).values()))
    moved = dataclasses.replace(s.spec, data_dir="/elsewhere", loader_workers=3)
    for job, configs in [
        (base, lambda j: [j["config"]]),
        (rung, lambda j: list(j["configs"].values())),
    ]:
        now = with_run_options(job, moved)
        assert configs(now) and all(c["data_dir"] == "/elsewhere" for c in configs(now))
        assert all(c["loader_workers"] == 3 for c in configs(now))
        assert all(c["data_dir"] != "/elsewhere" for c in configs(job))  # the plan as saved
