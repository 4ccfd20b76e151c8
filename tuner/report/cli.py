"""Write the degradation map of a study: `python -m tuner.report STUDY_DIR [--target T]`.

Reads the study's files only (no Ray), so it is safe on a study that is still running or was
interrupted; the search runs it at its end. Writes into STUDY_DIR:
    trials.csv      the tidy trial table (refreshed)
    frontier.csv    one row per batch size: outcomes, best accuracy + CI, degradation,
                    steps/examples to target, regime, best hyperparameters, throughput
    frontier.json   the same plus per-rule tables, the critical-batch fit and the verdict
    report.md       a plain-language verdict first, then tables and figures
    figures/*.png   six figures (accuracy, steps to target, lr, heatmap, throughput, curves)
    summary/        a TensorBoard run with the figures, frontier scalars and an HParams view

Examples:
    python -m tuner.report studies/simple_cnn-digits-20260101-120000
    python -m tuner.report s3://my-bucket/studies/rn50 --into rn50
    python -m tuner.report STUDY_DIR --target 0.9 --tolerance 0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainables.metrics import StudyMetric
from tuner.errors import InputError
from tuner.report.fetch import fetch_study
from tuner.report.names import NotAStudy
from tuner.report.write import write_report
from tuner.spec import StudySpec, load_spec
from tuner.store.names import SPEC_FILE
from tuner.store.objects import StorageError, is_uri


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner.report",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "study_dir",
        metavar="STUDY_DIR",
        help="a study directory (holds study.json), or a study in an object store "
        "(s3://bucket/studies/NAME), fetched first without its checkpoints",
    )
    p.add_argument(
        "--into",
        metavar="DIR",
        help="where to fetch a study from an object store (default: this machine's working "
        "copy, the directory the search itself uses)",
    )
    p.add_argument(
        "--target",
        type=float,
        metavar="T",
        help="target for steps/examples to target (default: the study's): a validation "
        "ACCURACY as a fraction in (0, 1], e.g. 0.95, or, for a language model, a validation "
        "LOSS in nats, e.g. 1.5",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="TOL",
        help="degradation tolerance: accuracy PERCENTAGE POINTS below the baseline (default "
        "1, i.e. 1 pt; 0.5 means half a point), or, for a language model, NATS of validation "
        "loss above it (default 0.02)",
    )
    p.add_argument(
        "--no-tensorboard", action="store_true", help="do not (re)write the TensorBoard summary run"
    )
    return p


def _check(args: argparse.Namespace, metric: StudyMetric) -> None:
    """The target must be one of the study's metric (an accuracy, or a loss in nats)."""
    if args.target is not None and (problem := metric.target_problem(args.target)):
        raise InputError(f"{problem}: this study is judged by {metric.label}")


def branch_report(study_dir: Path, spec: StudySpec, args: argparse.Namespace) -> int:
    """A branch study's report (branch.md) written again from its branch.json; the grid's
    report options do not apply (its tolerance is the study's own: --tolerance of the search)."""
    from tuner.branch import write

    given = [f for f, v in (("--target", args.target), ("--tolerance", args.tolerance)) if v]
    if given:
        print(
            f"error: {' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a "
            f"grid study's report; {spec.name} is a "
            f"branch study, whose branch.md is written from what it measured",
            file=sys.stderr,
        )
        return 2
    try:
        report = write.rewrite(study_dir, spec, tensorboard_too=not args.no_tensorboard)
    except write.NotFinished as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for section in report.read_text().split("\n## "):
        if section.startswith("Local critical batch size"):  # what it found, as a table
            print(section.split("\n### ", 1)[0].split("\n", 1)[1].strip())
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (
        args.target is not None and not args.target > 0
    ):  # NaN too; the rest once the metric is known
        print(f"error: --target {args.target:g} must be above 0", file=sys.stderr)
        return 2
    if args.tolerance is not None and not 0 <= args.tolerance < 100:
        print(
            f"error: --tolerance {args.tolerance:g} must be in [0, 100) (percentage points, "
            f"or nats for a language model)",
            file=sys.stderr,
        )
        return 2
    try:
        study_dir = args.study_dir
        if is_uri(study_dir):
            study_dir = fetch_study(study_dir, Path(args.into) if args.into else None)
        elif not (Path(study_dir) / SPEC_FILE).exists():
            raise NotAStudy(f"{study_dir} is not a study directory (no {SPEC_FILE})")
        spec = load_spec(study_dir)
        if spec.method == "branch":
            return branch_report(Path(study_dir), spec, args)
        metric = spec.study_metric
        _check(args, metric)
        tolerance = args.tolerance
        if tolerance is not None and metric.unit == "pt":
            tolerance /= 100
        report = write_report(
            study_dir, args.target, tolerance, tensorboard=not args.no_tensorboard
        )
    except (NotAStudy, StorageError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report.read_text()
    verdict_block = text.split("## Verdict", 1)[1].split("\n## ", 1)[0].strip()
    print(verdict_block)
    print(f"report: {report}")
    return 0
