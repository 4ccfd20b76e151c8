"""Samples/s of a bare PyTorch loop, of our loop in-process, of a one-worker trial in its Tune
actor (how a study runs one), and through Ray Train with 1 and 2 workers; and the fixed cost of
a Ray Train run (TorchTrainer start to first report, and end to return).

    python bench/throughput.py [--model simple_cnn] [--batch 128] [--examples 8192] [--epochs 4]

Targets (issue 2): our loop within 3% of bare PyTorch; Ray Train at steady state within 10%.
All runs use the same total CPU threads, synthetic data of the model's input shape, and SGD.
Steady state = the median samples/s over epochs after the first. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import TrialConfig  # noqa: E402
from trainables.datasets import load_synthetic  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.models import build_model  # noqa: E402
from tuner.options import build_parser  # noqa: E402
from tuner.resolve import build_spec  # noqa: E402

SHAPES = {"conv1d": (1, 40), "simple_cnn": (1, 28, 28)}  # synthetic data per model


def config(args, workers: int) -> dict:
    """The trial config the product itself builds for this workload, batch and worker count."""
    cli = [args.model, "--dataset", "synthetic", "--batch-sizes", str(args.batch)]
    cli += ["--epochs", str(args.epochs), "--max-device-batch", str(args.batch)]
    cli += ["--max-train-examples", str(args.examples), "--workers-per-trial", str(workers)]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=False)
    params = {"batch_size": args.batch, "scaling_rule": "none", "optimizer": "sgd"}
    params |= {"base_lr": 0.01, "weight_decay": 1e-4, "warmup_fraction": 0.0}
    return spec.trial_config(params)


def bare_pytorch(args) -> list[float]:
    """The loop a user would write by hand: the same model, data, optimiser and batch."""
    splits = load_synthetic(SHAPES.get(args.model, (3, 32, 32)), n_train=args.examples, n_val=256)
    torch.manual_seed(0)
    model = build_model(args.model, splits.input_shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    x, y = splits.train.x, splits.train.y
    rates = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        started = time.perf_counter()
        steps = len(y) // args.batch
        for s in range(steps):
            idx = order[s * args.batch : (s + 1) * args.batch]
            loss = criterion(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append(steps * args.batch / (time.perf_counter() - started))
    return rates


def our_loop(args) -> list[float]:
    rates = []
    train(
        TrialConfig.from_dict(config(args, 1)),
        report=lambda m, s: rates.append(m["samples_per_second"]),
    )
    return rates


def ray_train(args, workers: int) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.ray_worker import train_loop_per_worker

    stamp_dir = tempfile.mkdtemp()

    def timed_loop(cfg):
        # Time the first report from inside the worker, then run the real worker function.
        import ray.train as rt

        original = rt.report

        def report(metrics, checkpoint=None, **kw):
            if rt.get_context().get_world_rank() == 0:
                with open(os.path.join(stamp_dir, "reports"), "a") as f:
                    f.write(
                        json.dumps({"t": time.time(), "sps": metrics["samples_per_second"]}) + "\n"
                    )
            return original(metrics, checkpoint=checkpoint, **kw)

        rt.report = report
        train_loop_per_worker(cfg)

    cpus = os.cpu_count() // workers
    started = time.time()
    TorchTrainer(
        timed_loop,
        train_loop_config=config(args, workers),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": cpus}
        ),
        run_config=ray.train.RunConfig(
            name=f"bench-{workers}-{time.time()}", storage_path=tempfile.mkdtemp()
        ),
    ).fit()
    ended = time.time()
    lines = Path(stamp_dir, "reports").read_text().splitlines()
    reports = [json.loads(line) for line in lines]
    return {
        "rates": [r["sps"] for r in reports],
        "start_to_first_report_s": reports[0]["t"] - started,
        "last_report_to_fit_return_s": ended - reports[-1]["t"],
        "fit_total_s": ended - started,
    }


def tune_one_worker(args) -> list[float]:
    """A one-worker trial as a study runs it: the loop in a Tune function trainable's actor."""
    from ray import tune

    from trainables.tune_trial import train_one_worker

    cpus = os.cpu_count()
    values = config(args, 1)

    def trial(params):
        train_one_worker(values, cpus, tempfile.mkdtemp())

    grid = tune.Tuner(
        tune.with_resources(trial, {"CPU": cpus}),
        run_config=tune.RunConfig(
            name=f"bench-tune-{time.time()}", storage_path=tempfile.mkdtemp(), verbose=0
        ),
    ).fit()
    return grid[0].metrics_dataframe["samples_per_second"].tolist()


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    out = {
        "model": args.model,
        "batch": args.batch,
        "examples": args.examples,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    # Alternate the two in-process loops over rounds: the first run on a fresh process is
    # slower (allocator, caches), and load on a shared machine drifts.
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(steady(bare_pytorch(args)))
        ours.append(steady(our_loop(args)))
    out["bare_pytorch_sps"] = statistics.median(bare)
    out["our_loop_sps"] = statistics.median(ours)
    out["our_loop_vs_bare"] = out["our_loop_sps"] / out["bare_pytorch_sps"]

    import ray

    from tuner.cluster.connect import WORKER_ENV, local_ray_kwargs

    os.environ.update(WORKER_ENV)

    ray.init(
        **local_ray_kwargs(),
        num_cpus=os.cpu_count(),
        log_to_driver=False,
        configure_logging=False,
        logging_level="ERROR",
    )
    tune_rates = [steady(tune_one_worker(args)) for _ in range(args.rounds)]
    out["tune_1w_sps"] = statistics.median(tune_rates)
    out["tune_1w_vs_bare"] = out["tune_1w_sps"] / out["bare_pytorch_sps"]
    for workers in (1, 2):
        result = ray_train(args, workers)
        out[f"ray_{workers}w_sps"] = steady(result["rates"])
        out[f"ray_{workers}w_vs_bare"] = out[f"ray_{workers}w_sps"] / out["bare_pytorch_sps"]
        out[f"ray_{workers}w_start_to_first_report_s"] = result["start_to_first_report_s"]
        out[f"ray_{workers}w_last_report_to_return_s"] = result["last_report_to_fit_return_s"]
        out[f"ray_{workers}w_fit_total_s"] = result["fit_total_s"]
    ray.shutdown()
    print(
        json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1
        )
    )


if __name__ == "__main__":
    main()
