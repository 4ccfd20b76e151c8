"""What a study cost (issue 21 item 1, in part): device time per trial from Optuna's start and
completion times x workers x what each worker holds, by phase and batch size."""

import json
import math
import re

import pandas as pd
import pytest

from tuner.analysis.cost import study_cost, trial_costs
from tuner.report.cost_text import waiting_text


def table(rows):
    """One evaluation row per (trial, start, end, batch, phase, workers)."""
    return pd.DataFrame(
        [
            {"trial_id": t, "started": s, "ended": e, "batch_size": b, "phase": p, "workers": w}
            for t, s, e, b, p, w in rows
        ]
    )


def test_device_time_is_wall_time_times_workers_times_their_devices():
    t = table(
        [
            ("a", 0.0, 60.0, 8, "search", 1),
            ("a", 0.0, 60.0, 8, "search", 1),  # a second evaluation of the same trial
            ("b", 30.0, 150.0, 512, "confirm", 2),
            ("c", 100.0, 700.0, 512, "extend", math.nan),  # errored before reporting
            ("d", 200.0, math.nan, 8, "search", 1),  # still running: not counted yet
        ]
    )
    per_trial = trial_costs(t, per_worker=0.5, workers=4).set_index("trial_id")
    assert list(per_trial.index) == ["a", "b", "c"]
    assert per_trial.loc["a", "device_s"] == 60 * 1 * 0.5
    assert per_trial.loc["b", "device_s"] == 120 * 2 * 0.5
    assert per_trial.loc["c", "device_s"] == 600 * 4 * 0.5  # the study's workers per trial
    cost = study_cost(t, gpus_per_worker=0.5, cpus_per_worker=8, workers=4)
    assert cost.device == "GPU" and cost.trials == 3
    assert cost.device_hours == pytest.approx((30 + 120 + 1200) / 3600)
    assert cost.wall_hours == pytest.approx(700 / 3600)  # first start to last end
    assert list(cost.by_phase) == ["search", "confirmation", "checks (lr and steps)"]
    assert cost.by_batch == pytest.approx({8: 30 / 3600, 512: 1320 / 3600})
    on_cpus = study_cost(t, gpus_per_worker=0, cpus_per_worker=2, workers=4)
    assert on_cpus.device == "CPU" and on_cpus.device_hours == pytest.approx(4 * cost.device_hours)


def test_an_interrupted_study_is_not_charged_for_the_time_it_was_down():
    """Killed at 100 s (last save at 90), resumed at 1000: trials a and e were running and are
    resumed, b had ended, c started after the resume. a and e are charged for their time up,
    the study's wall time leaves the 910 s out once."""
    t = table(
        [
            ("a", 0.0, 1100.0, 8, "search", 1),
            ("b", 10.0, 50.0, 8, "search", 1),
            ("c", 1010.0, 1200.0, 8, "search", 1),
            ("e", 20.0, 1050.0, 8, "search", 1),
        ]
    )
    down = json.dumps([[90.0, 1000.0]])
    t["downtime_s"] = [910.0, 0.0, 0.0, 910.0]
    t["down"] = [down, "[]", "[]", down]
    per_trial = trial_costs(t, per_worker=1.0).set_index("trial_id")
    assert per_trial.loc["a", "wall_s"] == 1100 - 910
    assert per_trial.loc["e", "wall_s"] == 1030 - 910
    assert per_trial.loc["c", "wall_s"] == 190
    assert study_cost(t, 0, 1).wall_hours == pytest.approx((1200 - 910) / 3600)
    # a second interruption cut a (again) and c: each moment it was down is left out once
    t.loc[0, "down"] = json.dumps([[90.0, 1000.0], [1100.0, 1150.0]])
    t.loc[2, "down"] = json.dumps([[1100.0, 1150.0]])
    assert study_cost(t, 0, 1).wall_hours == pytest.approx((1200 - 960) / 3600)


def test_the_wait_for_resources_before_a_trial_began_is_not_charged():
    """Handed out at 0, began at 30 (an autoscaled node starting), ended at 100: 70 s. A trial
    handed out before an interruption (down 90-1000) that began only after it is charged from
    its beginning, with none of that downtime."""
    t = table([("a", 0.0, 100.0, 8, "search", 1), ("b", 80.0, 1100.0, 8, "search", 1)])
    t["trial_began"] = [30.0, 1005.0]
    t["down"] = ["[]", json.dumps([[90.0, 1000.0]])]
    t["downtime_s"] = [0.0, 910.0]
    per_trial = trial_costs(t, per_worker=1.0).set_index("trial_id")
    assert per_trial.loc["a", "wall_s"] == 70
    assert per_trial.loc["b", "wall_s"] == 95
    # the wait is reported apart: a's 30 s, b's 925 s less the 910 s the study was down
    assert list(per_trial["waiting_s"]) == [30, 15]
    cost = study_cost(t, 0, 1)
    assert cost.waiting_hours == pytest.approx(45 / 3600)
    assert "Waiting for resources (from the search handing a trial out to its process " in (
        waiting_text(cost)
    )
    assert waiting_text(study_cost(t.assign(trial_began=t["started"]), 0, 1)) == ""
    t["trial_began"] = [math.nan, math.nan]  # a study made before trials said: as handed out
    per_trial = trial_costs(t, per_worker=1.0).set_index("trial_id")
    assert list(per_trial["wall_s"]) == [100, 1020 - 910]


def test_a_study_without_times_costs_nothing_known():
    cost = study_cost(pd.DataFrame(), 0, 1)
    assert cost.trials == 0 and cost.device_hours == 0


def test_time_to_target_is_steps_times_batch_over_throughput_per_worker_count():
    from tuner.analysis.cost import time_to_target

    steps = pd.DataFrame({"batch_size": [8, 512, 2048], "steps": [1000.0, 50.0, math.nan]})
    speed = pd.DataFrame(
        {"batch_size": [8, 512, 512], "workers": [1, 1, 4], "samples_per_second": [800, 1e4, 3e4]}
    )
    timing = time_to_target(steps, speed, per_worker=2.0)
    assert list(zip(timing["batch_size"], timing["workers"], strict=True)) == [
        (8, 1),
        (512, 1),
        (512, 4),
    ]  # 2048 never reached the target: no time to it
    hours = [1000 * 8 / 800 / 3600, 50 * 512 / 1e4 / 3600, 50 * 512 / 3e4 / 3600]
    assert timing["hours_to_target"].tolist() == pytest.approx(hours)
    assert timing["device_hours_to_target"].tolist() == pytest.approx(
        [hours[0] * 2, hours[1] * 2, hours[2] * 4 * 2]
    )


def dry_run(args: list[str], storage) -> str:
    """`python -m tuner.search ARGS --dry-run` in a fresh process that must not import Ray."""
    import subprocess
    import sys

    code = (
        "import sys; from tuner.search import main; "
        "code = main(sys.argv[1:]); assert 'ray' not in sys.modules, 'ray started'; sys.exit(code)"
    )
    args = [*args, "--storage", str(storage), "--name", "d", "--dry-run"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_dry_run_plans_and_estimates_without_starting_anything(tmp_path):
    """`--dry-run`: the plan and a cost from a real throughput probe; no Ray, no files."""
    args = ["simple_cnn", "--dataset", "digits", "--batch-sizes", "8,128", "--seeds", "2"]
    out = dry_run([*args, "--rules", "sqrt", "--slots", "64"], tmp_path / "s")
    assert (
        "planned trials: 16 search (+ up to 6 range extensions), up to 4 confirmation runs" in out
    )
    assert "2 rule-test runs" in out and "steps per trial: 8: 358, 128: 150" in out
    # batch 128's 150-step floor gives it 6.7x batch 8's 2 epochs: equal data is 22 steps, at
    # its lr and at half and twice it, 2 seeds each
    assert "6 equal-data runs (the batch sizes whose budget gives them other data" in out
    assert "equal data " in out.split("estimated cost", 1)[1]
    probe = out.split("samples/s")[0]
    assert float(probe.rsplit("8: ", 1)[1]) > 0  # a measured speed
    assert "of CPU time in all" in out
    # every round of the checks up to the cap, stated in data: 32x batch 8's 358 x 8 examples
    # = 91,648, i.e. 716 steps at batch 128: its lr at 150 steps, then 300 and 600 (1200 would
    # pass the cap)
    assert "the checks' cap: 32x the baseline's 2864 examples" in out
    assert "  128: 3 round(s), to 600 steps (26.8x the baseline's examples): up to " in out
    # 64 slots hold every planned trial at once: the wall time is the critical path
    wall = out.split("wall time on 64 slots: about ", 1)[1].split(" for the planned ")[0]
    critical = out.split("the runs that wait for it) is ", 1)[1].split(", and no")[0]
    assert wall == critical
    assert not (tmp_path / "s").exists()


def test_the_dry_run_prices_the_checks_rounds_up_to_a_cap_of_the_users(tmp_path):
    """--max-data-multiple 8: 8x batch 8's 2864 examples is 179 steps at batch 128, so its
    150-step budget gets no doubling, only its lr; without a probe (one-second trials)."""
    from tuner.dry_run import check_lines, wall_line
    from tuner.options import build_parser
    from tuner.resolve import build_spec

    argv = ["simple_cnn", "--dataset", "digits", "--batch-sizes", "8,128", "--seeds", "2"]
    spec = build_spec(
        build_parser().parse_args([*argv, "--max-data-multiple", "8", "--storage", str(tmp_path)]),
        gpus_available=False,
    )
    lines = check_lines(spec, 1437, lambda batch, steps=None: 1 / 3600, 1.0, "CPU")
    assert lines[0].startswith("the checks' cap: 8x the baseline's 2864 examples")
    assert lines[1] == (
        "  128: 1 round(s), to 150 steps (6.7x the baseline's examples): up to 8 s of CPU time"
    )  # its lr: 2 levels x 2 seeds, then 2 fresh seeds on each side
    line = wall_line(spec, 1437, lambda batch, steps=None: 1 / 3600, None)
    assert re.search(r"^wall time on \d+ slots \(what this machine holds; --slots N\)", line)


def test_a_branch_dry_run_plans_the_ladder_and_its_cost_without_starting_anything(tmp_path):
    args = ["simple_cnn", "--dataset", "digits", "--batch-sizes", "8,32", "--method", "branch"]
    out = dry_run([*args, "--base-lr", "0.05"], tmp_path / "s")
    assert "dry run (--method branch)" in out and "short lr search" not in out
    # window: a tenth of 2864 examples in whole batches of 32; the top rung: the three rules'
    # lrs bracketed by x0.5 and x2 (5 lrs), then 2 seeds
    assert "over 288 examples (steps by batch size: 8: 36, 16: 18, 32: 9)" in out
    assert "each rung 7 runs" in out and "at most 13 trials" in out
    assert float(out.split("16: ")[1].split(" samples/s")[0]) > 0  # a measured speed
    assert not (tmp_path / "s").exists()
    # two workers per trial: each of the 13 trials is a Ray Train run whose 2 workers pay the
    # start-up (12 s each), the compute's device time about the same
    two = dry_run([*args, "--base-lr", "0.05", "--workers-per-trial", "2"], tmp_path / "s")
    assert "at most 13 trials" in two and not (tmp_path / "s").exists()
    minutes = float(two.split(": ")[-1].split(" min of CPU time")[0])
    assert minutes >= 13 * 2 * 12 / 60


def test_a_process_knows_when_it_started():
    """What a trial in a new process is charged from (trainables.process): this process's
    start, before this test ran and after the test session began."""
    import os
    import subprocess
    import sys
    import time

    from trainables.process import process_started

    assert process_started() <= time.time()
    before = time.time()
    child = subprocess.run(
        [sys.executable, "-c", "from trainables.process import process_started as p; print(p())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert before - 1 <= float(child.stdout) <= time.time()
