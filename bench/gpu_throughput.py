"""Images/s of ResNet-50 on one GPU: bare PyTorch best practice, the project's loop, Ray Train;
the ImageNet input pipeline alone; the fixed cost of a trial.

    python bench/gpu_throughput.py [--model resnet50] [--batch 256] [--steps 60] [--images 2048]
        [--skip-compile] [--skip-ray] [--device cuda]

Targets (issue 10): the loop >= 0.95x bare best practice (compiled against compiled, eager
against eager); the input pipeline >= 1.2x ResNet-50's training rate on the same GPU; a trial's
fixed cost <= 8 s on a GPU. `--device cpu --model resnet8 --image-size 32` runs every part on a
CPU in a minute, to check the script itself. Prints one JSON object.
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
from trainables.data import BatchSource  # noqa: E402
from trainables.datasets import load_imagenet, load_synthetic  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.models import build_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(args, device: torch.device, compile_model: bool) -> float:
    """What a careful user writes by hand: bf16 autocast, channels_last, fused SGD, TF32."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = build_model(args.model, (3, args.image_size, args.image_size), 1000).to(device)
    fused = device.type == "cuda"
    if fused:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=fused)
    run = torch.compile(model) if compile_model else model
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    if fused:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    criterion = nn.CrossEntropyLoss()
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=fused)
    rates, began = [], time.perf_counter()
    for step in range(args.steps):
        if step % 10 == 0:  # time blocks of 10 steps between two synchronisations
            sync(device)
            began = time.perf_counter()
        with autocast:
            loss = criterion(run(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            sync(device)
            rates.append(10 * args.batch / (time.perf_counter() - began))
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def loop_config(args, device: torch.device, compile_model: bool) -> TrialConfig:
    """The project's trial config for this model and batch: synthetic data, steps budget."""
    gpu = device.type == "cuda"
    return TrialConfig.from_dict(
        dict(
            workload="bench",
            model=args.model,
            dataset="synthetic",
            data_dir=None,
            batch_size=args.batch,
            scaling_rule="none",
            optimizer="sgd",
            base_lr=0.01,
            reference_batch=args.batch,
            momentum=0.9,
            warmup_fraction=0.0,
            weight_decay=1e-4,
            budget_unit="steps",
            budget_amount=args.steps,
            min_steps=0,
            eval_every=max(args.steps // 4, 1),
            schedule="cosine",
            final_lr_factor=0.0,
            label_smoothing=0.0,
            num_workers=1,
            max_device_batch=args.batch,
            bn_mode="per_worker",
            ghost_batch=32,
            divergence_factor=50.0,
            max_train_examples=0,
            split_seed=0,
            seed=0,
            metric="accuracy",
            stop_at_target=0.0,
            use_gpu=gpu,
            compile=compile_model,
            loader_workers=1,
            decode="gpu" if gpu else "cpu",
        )
    )


def synthetic_splits(args):
    shape = (3, args.image_size, args.image_size)
    return load_synthetic(shape, 1000, n_train=args.batch * 8, n_val=args.batch)


def our_loop(args, device: torch.device, compile_model: bool) -> dict:
    rates, first = [], []

    def report(metrics, _state):
        rates.append(metrics["samples_per_second"])
        first.append(metrics["first_step_s"])

    train(
        loop_config(args, device, compile_model),
        report=report,
        device=device,
        splits=synthetic_splits(args),
    )
    # windows after the first hold no compilation or autotuning; evaluation is outside them
    return {"images_per_s": statistics.median(rates[1:]), "first_step_s": first[0]}


def write_jpegs(root: Path, count: int, classes: int = 10) -> Path:
    """ImageFolder train/ and val/ of smooth random 500x375 JPEGs (about ImageNet's size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", count), ("val", max(count // 8, classes))):
        for i in range(n):
            folder = root / part / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
            noise = rng.integers(0, 24, size=(375, 500, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(coarse).resize((500, 375))) + noise
            Image.fromarray(image).save(folder / f"{i}.JPEG", quality=90)
    return root


def pipeline(args, root: Path, device: torch.device, encoded: bool, workers: int) -> float:
    """Images/s that BatchSource delivers on `device` (two epochs; the second is timed)."""
    splits = load_imagenet(str(root), 0, image_size=args.image_size, encoded=encoded)
    source = BatchSource(
        splits, args.batch, 0, 1, 0, device, loader_workers=workers, micro_batch=args.batch
    )
    for micro in source.train_batches(0):  # starts the loader processes
        for _ in micro:
            pass
    began, count = time.perf_counter(), 0
    for micro in source.train_batches(1):
        for x, _ in micro:
            count += len(x)
    sync(device)
    return count / (time.perf_counter() - began)


def fixed_cost(args, device: torch.device) -> dict:
    """A one-worker TorchTrainer trial of 2 short steps: start to first report, last to end."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.ray_worker import train_loop_per_worker
    from tuner.cluster.connect import WORKER_ENV, local_ray_kwargs

    os.environ.update(WORKER_ENV)
    ray.init(
        **local_ray_kwargs(), log_to_driver=False, configure_logging=False, logging_level="ERROR"
    )
    stamps = Path(tempfile.mkdtemp()) / "reports"
    config = loop_config(args, device, False).to_dict() | {
        "budget_amount": 2,
        "eval_every": 1,
        "batch_size": 32,
        "reference_batch": 32,
        "max_device_batch": 32,
        "model": "resnet8",
        "dataset": "synthetic",
    }

    def timed(cfg):
        import ray.train as rt

        original = rt.report

        def report(metrics, checkpoint=None, **kw):
            with open(stamps, "a") as f:
                f.write(json.dumps({"t": time.time(), "w": metrics["window_time_s"]}) + "\n")
            return original(metrics, checkpoint=checkpoint, **kw)

        rt.report = report
        train_loop_per_worker(cfg)

    out = {}
    for attempt in ("first", "second"):
        stamps.unlink(missing_ok=True)
        began = time.time()
        TorchTrainer(
            timed,
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=device.type == "cuda"),
            run_config=ray.train.RunConfig(
                name=f"fixed-{attempt}-{began}", storage_path=tempfile.mkdtemp()
            ),
        ).fit()
        ended = time.time()
        reports = [json.loads(line) for line in stamps.read_text().splitlines()]
        out[f"{attempt}_start_to_first_report_minus_training_s"] = (
            reports[0]["t"] - began - reports[0]["w"]
        )
        out[f"{attempt}_last_report_to_end_s"] = ended - reports[-1]["t"]
        out[f"{attempt}_total_s"] = ended - began
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs in the pipeline test")
    parser.add_argument("--loader-workers", type=int, default=max((os.cpu_count() or 2) - 1, 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    out: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    out |= {"model": args.model, "batch": args.batch, "image_size": args.image_size}

    for compiled in (False,) if args.skip_compile else (False, True):
        tag = "compiled" if compiled else "eager"
        out[f"bare_{tag}_images_per_s"] = bare(args, device, compiled)
        ours = our_loop(args, device, compiled)
        out[f"loop_{tag}_images_per_s"] = ours["images_per_s"]
        out[f"loop_{tag}_first_step_s"] = ours["first_step_s"]
        out[f"loop_{tag}_vs_bare"] = ours["images_per_s"] / out[f"bare_{tag}_images_per_s"]

    with tempfile.TemporaryDirectory() as folder:
        root = write_jpegs(Path(folder), args.images)
        out["pipeline_cpu_pil_images_per_s"] = pipeline(
            args, root, device, False, args.loader_workers
        )
        out["pipeline_device_decode_images_per_s"] = pipeline(
            args, root, device, True, args.loader_workers
        )
    rate = out["loop_eager_images_per_s"]
    out["pipeline_device_decode_vs_training"] = out["pipeline_device_decode_images_per_s"] / rate
    out["pipeline_cpu_pil_vs_training"] = out["pipeline_cpu_pil_images_per_s"] / rate
    if not args.skip_ray:
        out |= {f"trial_{k}": v for k, v in fixed_cost(args, device).items()}
    print(
        json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1
        )
    )


if __name__ == "__main__":
    main()
