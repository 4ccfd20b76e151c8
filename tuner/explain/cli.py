"""The command line of `python -m tuner.explain`: one `error:` line and exit 2 on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

from tuner.errors import InputError
from tuner.options import OneLineParser, parse_grid


def _decays(text: str | None) -> tuple[float, ...]:
    """`0,5e-4` -> (0.0, 0.0005): 1 to 4 distinct values in [0, 1)."""
    if not text:
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--weight-decays {text}: use numbers such as 0,5e-4") from None
    if not (1 <= len(values) <= 4) or len(set(values)) != len(values):
        raise InputError(f"--weight-decays {text}: give 1 to 4 distinct values")
    if not all(0 <= v < 1 for v in values):
        raise InputError(f"--weight-decays {text}: each must be in [0, 1)")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog="python -m tuner.explain",
        description="Why large batches degrade, on a study's saved weights: sharpness (top "
        "Hessian eigenvalue, epsilon-sharpness), Keskar interpolation, Li et al. landscapes "
        "(1-D and 2-D) and the gradient noise scale against the critical batch size. Writes "
        "why.md, why.json and figures/why_*.png into the study, a 'Why' section into its "
        "report.md and images and scalars into summary/why for TensorBoard.",
    )
    parser.add_argument("study_dir", help="a study directory (local; fetch S3 ones first)")
    parser.add_argument("--batch-sizes", type=parse_grid, help="only these (default: all)")
    parser.add_argument("--grid", type=int, default=11, help="points per landscape axis (3-51)")
    parser.add_argument(
        "--examples", type=int, default=512, help="training examples the measures use (64+)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--weight-decays",
        help="e.g. 0,5e-4: train the smallest and the largest batch size's best configuration "
        "again with each and draw their 2-D landscapes as a grid (Li et al.'s Figure 3)",
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="run the code of a study another user or machine made (its workload, its "
        "checkpoints): only for a study you trust",
    )
    try:
        args = parser.parse_args(argv)
        from tuner.explain.run import explain

        if not 3 <= args.grid <= 51:
            raise InputError(f"--grid {args.grid}: use 3 to 51 points per axis")
        if args.examples < 64:
            raise InputError(f"--examples {args.examples}: use at least 64")
        decays = _decays(args.weight_decays)
        if args.device not in ("cpu", "cuda"):
            raise InputError(f"--device {args.device}: use cpu or cuda")
        path = explain(
            Path(args.study_dir),
            batch_sizes=args.batch_sizes,
            grid=args.grid,
            examples=args.examples,
            device=args.device,
            weight_decays=decays,
            trust_code=args.trust_code,
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")
