"""Where a trial's fixed cost goes.

`--study`: trials of a real study spec (simple_cnn on digits, 60 steps, evaluated every 30) run
one after another by Tune as a study runs them (the study's trainable, actor reuse); prints per
trial the seconds from Tune starting it to its first report less the first evaluation window
(the loop's own `window_time_s`: training and evaluation), and from its last report to its end.
`--workers 1` is a one-worker trial in its own Tune actor; `--workers 2` a Ray Train run.

    python bench/trial_startup.py --study [--runs 6] [--workers 1]

Without `--study`: the phases of one-worker Ray Train runs, timed.

Runs `--runs` TorchTrainer fits in a row on a fresh local Ray (as a study's trials do, through
the same `StoppableTorchTrainer`) with a train function that only reports once, and prints, per
run, seconds from `fit()` to each phase: the controller process up, the worker group asked
for, the worker processes up (`before_init_train_context`), the group started (backend and
callbacks set up), the train function entered, its report, the group shut down, the controller
finished, `fit()` returned. A Train callback records the phases inside the controller process.

    python bench/trial_startup.py [--runs 4] [--health-check-interval 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = [
    "controller_up",
    "group_asked",
    "workers_up",
    "group_started",
    "fn_entered",
    "reported",
    "group_stopping",
    "group_stopped",
    "controller_done",
    "fit_returned",
]


def train_fn(config: dict) -> None:
    """Report once; stamp entry and report."""
    entered = time.time()
    import ray.train

    _stamp(config["stamps"], "fn_entered", entered)
    ray.train.report({"x": 1})
    _stamp(config["stamps"], "reported")


def _stamp(path: str, phase: str, at: float | None = None) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({phase: at or time.time()}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--health-check-interval", type=float, default=None)
    parser.add_argument("--study", action="store_true", help="time a real study's trials")
    parser.add_argument("--workers", type=int, default=1, help="workers per trial (--study)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="(--study) on a GPU")
    parser.add_argument("--model", default="simple_cnn", help="(--study) resnet50 on a GPU")
    args = parser.parse_args()
    if args.study:
        study_trials(args.runs, args.workers, args.gpus_per_worker, args.model)
        return

    import ray
    import ray.train
    import ray.train._internal.session as train_session
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    import tuner.study.trial as trial
    from tuner.cluster.connect import WORKER_ENV, local_ray_kwargs

    class Clock(ControllerCallback, WorkerGroupCallback):
        """Stamps the controller's phases (runs in the controller process)."""

        def __init__(self, path: str):
            self.path = path

        def after_controller_start(self, train_run_context):
            _stamp(self.path, "controller_up")
            # Ray Train logs each start-up step's seconds at debug level: keep those lines.
            import logging

            handler = logging.FileHandler(self.path + ".log")
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.getLogger("ray.train")
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handler)

        def before_worker_group_start(self, worker_group_context):
            _stamp(self.path, "group_asked")

        def before_init_train_context(self, workers):
            _stamp(self.path, "workers_up")
            return {}

        def after_worker_group_start(self, worker_group):
            _stamp(self.path, "group_started")

        def before_worker_group_shutdown(self, worker_group):
            _stamp(self.path, "group_stopping")

        def after_worker_group_shutdown(self, worker_group_context):
            _stamp(self.path, "group_stopped")

        def after_controller_finish(self, result):
            _stamp(self.path, "controller_done")

    kwargs = local_ray_kwargs()
    env = {**WORKER_ENV, "RAY_TRAIN_V2_ENABLED": "1"}
    if args.health_check_interval is not None:
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.health_check_interval)
    os.environ.update(env)
    kwargs["runtime_env"]["env_vars"].update(env)
    ray.init(**kwargs, log_to_driver=False, configure_logging=False, logging_level="ERROR")

    # Outside Tune there is no session to say "stop": give the reusable trainer a quiet one.
    class NoStop:
        stop_event = threading.Event()

    trial.get_session = train_session.get_session = lambda: NoStop
    trainer_class = trial.StoppableTorchTrainer if trial.CAN_REUSE_DRIVERS else trial.TorchTrainer

    print("seconds from fit() to: " + ", ".join(PHASES))
    for run in range(args.runs):
        stamps = tempfile.mktemp(suffix=".jsonl")
        began = time.time()
        trainer_class(
            train_fn,
            train_loop_config={"stamps": stamps},
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(
                name=f"startup-{run}-{began}",
                storage_path=tempfile.mkdtemp(),
                callbacks=[Clock(stamps)],
            ),
        ).fit()
        _stamp(stamps, "fit_returned")
        at = {
            k: v
            for line in Path(stamps).read_text().splitlines()
            for k, v in json.loads(line).items()
        }
        print(f"run {run}: " + " ".join(f"{p}={at[p] - began:.2f}" for p in PHASES if p in at))
        print(
            f"  to first report {at['reported'] - began:.2f} s, "
            f"report to end {at['fit_returned'] - at['reported']:.2f} s",
            flush=True,
        )
        log = Path(stamps + ".log")
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith("[Worker Group") and "callbacks" not in line:
                print("  " + line.strip())
    ray.shutdown()


def study_trials(runs: int, workers: int, gpus: float = 0.0, model: str = "simple_cnn") -> None:
    """Time `runs` trials of a real study, one at a time, through Tune with actor reuse
    (`gpus` > 0: each worker on a GPU; `model` resnet50: synthetic ImageNet-size data)."""
    import ray
    from ray import tune

    from tuner.cluster.connect import local_ray_kwargs
    from tuner.options import build_parser
    from tuner.resolve import build_spec
    from tuner.study.trial import reuses_actors, trainable

    storage = tempfile.mkdtemp()
    data = ["--dataset", "digits"] if model == "simple_cnn" else ["--dataset", "synthetic"]
    cli = [model, *data, "--budget", "steps:60", "--eval-every", "30"]
    cli += ["--workers-per-trial", str(workers), "--storage", storage, "--name", "bench"]
    if gpus:
        cli += ["--gpus-per-worker", str(gpus), "--max-train-examples", "4096"]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=gpus > 0)
    params = {"batch_size": 32, "scaling_rule": "linear", "optimizer": "sgd", "base_lr": 0.05}
    params |= {"warmup_fraction": 0.1, "weight_decay": 1e-4, "seed": tune.grid_search(
        list(range(runs)))}  # fmt: skip
    times: dict[str, dict[str, float]] = {}

    class Clock(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            times[trial.trial_id] = {"start": time.time()}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            stamp = times[trial.trial_id]
            stamp.setdefault("first", time.time())
            stamp.setdefault("window", result["window_time_s"])
            stamp["last"] = time.time()
            stamp["pid"] = result["pid"]

        def on_trial_complete(self, iteration, trials, trial, **info):
            times[trial.trial_id]["end"] = time.time()

    ray.init(**local_ray_kwargs(), log_to_driver=False, configure_logging=False)
    began = time.time()
    tune.Tuner(
        trainable(spec),
        param_space=params,
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=reuses_actors(spec)),
        run_config=tune.RunConfig(
            name="bench", storage_path=storage, callbacks=[Clock()], verbose=0
        ),
    ).fit()
    print(f"{runs} trials of {workers} worker(s), one at a time: {time.time() - began:.1f} s")
    first = min(times.values(), key=lambda t: t["start"])
    print(
        f"fit() to the first trial's first report less its window (a new actor: process, "
        f"imports, data set): {first['first'] - began - first['window']:.2f} s"
    )
    for i, stamp in enumerate(sorted(times.values(), key=lambda t: t["start"])):
        to_first = stamp["first"] - stamp["start"] - stamp["window"]
        print(
            f"trial {i} (pid {stamp['pid']}): start to first report less its window "
            f"{to_first:.2f} s (window {stamp['window']:.2f} s), "
            f"last report to end {stamp['end'] - stamp['last']:.2f} s"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
