"""The cost of measuring the gradient noise scale in the training loop (issue 11: <= 5%).

    python bench/noise_scale_overhead.py [--batch 128] [--steps 300] [--rounds 3]

Runs the loop in-process on digits (the README study's data) with the measurement as shipped
(one step in `loop.noise_scale_interval(batch)`) and with it off (first step only), alternating
over rounds, and prints the median samples/s of each and their ratio as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables import loop  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from tuner.options import build_parser
from tuner.resolve import build_spec  # noqa: E402


def config(args) -> TrialConfig:
    cli = ["simple_cnn", "--dataset", "digits", "--batch-sizes", str(args.batch)]
    cli += ["--budget", f"steps:{args.steps}", "--eval-every", str(args.steps // 5)]
    spec = build_spec(build_parser().parse_args(cli), gpus_available=False)
    params = {"batch_size": args.batch, "scaling_rule": "none", "optimizer": "sgd"}
    params |= {"base_lr": 0.05, "weight_decay": 1e-4, "warmup_fraction": 0.0}
    return TrialConfig.from_dict(spec.trial_config(params))


def rate(args, every: int, examples: int) -> float:
    loop.NOISE_SCALE_EVERY, loop.NOISE_SCALE_EXAMPLES = every, examples
    rates: list[float] = []
    loop.train(config(args), report=lambda m, s: rates.append(m["samples_per_second"]))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shipped = loop.NOISE_SCALE_EVERY, loop.NOISE_SCALE_EXAMPLES
    every = loop.noise_scale_interval(args.batch)
    on, off = [], []
    for _ in range(args.rounds):
        off.append(rate(args, 10**9, 0))
        on.append(rate(args, *shipped))
    out = {
        "batch": args.batch,
        "measure_every": every,
        "off_samples_per_s": statistics.median(off),
        "on_samples_per_s": statistics.median(on),
    }
    out["overhead"] = 1 - out["on_samples_per_s"] / out["off_samples_per_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
