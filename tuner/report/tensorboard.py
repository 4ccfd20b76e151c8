"""The study-level TensorBoard run, written by the report into STUDY_DIR/summary/.

So that someone who only opens TensorBoard (`tensorboard --logdir STUDY_DIR/summary`, or
STUDY_DIR to add every trial's own curves) sees the whole map:
- Images tab: the report's figures (`map/<figure>`);
- Scalars tab: the frontier, one step per batch size (`frontier/<metric>`, x axis = batch size;
  `frontier/degraded` is 0 where accuracy holds, 0.5 unresolved, 1 degraded),
  per scaling rule (`frontier_by_rule/<rule>/<metric>`) and the critical batch size;
- Text tab: the report itself (`report`);
- HParams tab: one session per trial (`summary/hparams/<trial_id>`) with its hyperparameters and
  final metrics as plain floats, so trials can be sorted and filtered. Metric tags match the
  per-trial files Tune writes (`final/val_acc`, ...), so both sets of sessions share columns.

The run is rebuilt from scratch each time (written aside, then swapped in), so rerunning the
report never duplicates points.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.summary import hparams

from trainables.metrics import StudyMetric
from tuner.analysis.frontier import DegradationMap

SUMMARY_DIR = "summary"
WHY_DIR = "why"  # written by `python -m tuner.explain`
HPARAMS_DIR = "hparams"
# frontier column -> scalar name under frontier/ (x axis: batch size)
FRONTIER_SCALARS = {
    "accuracy": "accuracy",
    "accuracy_std": "accuracy_sd_over_seeds",
    "val_se": "accuracy_val_se",
    "search_best": "search_best_val_acc",
    "drop": "drop_below_baseline",
    "drop_low": "drop_lower_bound",
    "drop_high": "drop_upper_bound",
    "censored_at": "steps_to_target_more_than",
    "steps_at_most": "steps_to_target_at_most",
    "budget_steps": "budget_steps",
    "bn_batch": "bn_batch",
    "steps": "steps_to_target",
    "examples": "examples_to_target",
    "steps_fit": "steps_fit",
    "steps_perfect": "steps_perfect_scaling",
    "best_actual_lr": "best_lr",
    "lr_linear": "lr_linear_prediction",
    "lr_sqrt": "lr_sqrt_prediction",
    "samples_per_second": "samples_per_second",
    "tokens_per_second": "tokens_per_second",
    "hours_to_target": "hours_to_target",
    "device_hours_to_target": "device_hours_to_target",
    "trials": "trials",
    "confirmations": "confirmation_runs",
    "diverged": "diverged",
}
RULE_SCALARS = {"accuracy": "accuracy", "evidence": "runs_of_the_whole_budget"}
# A language model's map is of validation loss: its tags say so (the columns keep their names).
LOSS_NAMES = {
    "accuracy": "val_loss",
    "accuracy_sd_over_seeds": "val_loss_sd_over_seeds",
    "accuracy_val_se": "val_loss_val_se",
    "search_best_val_acc": "search_best_val_loss",
    "drop_below_baseline": "rise_above_baseline",
    "drop_lower_bound": "rise_lower_bound",
    "drop_upper_bound": "rise_upper_bound",
}


def scalar_name(name: str, metric: StudyMetric) -> str:
    """The tag of a frontier scalar for this study's metric (a workload's own metric by its
    own name: `val_mae`, ...)."""
    if metric.name == "loss":
        return LOSS_NAMES.get(name, name)
    if metric.name != "accuracy" and name in LOSS_NAMES:
        own = f"val_{metric.name}"
        return (
            LOSS_NAMES[name]
            .replace("val_loss", own)
            .replace("rise_above", "worse_than")
            .replace("rise", "worse")
        )
    return name


# Under-trained, under-searched and no interval (one run on a side) are unresolved too: the
# study could not tell; unstable (a judged run diverged) is a failure short of a measured drop.
STATUS_VALUE = {
    "baseline": 0.0,
    "holds": 0.0,
    "unresolved": 0.5,
    "under-trained": 0.5,
    "under-searched": 0.5,
    "no interval": 0.5,
    "unstable": 0.75,
    "degraded": 1.0,
}
HPARAMS = {
    "batch_size": float,
    "cell": str,
    "phase": str,
    "seed": float,
    "scaling_rule": str,
    "optimizer": str,
    "base_lr": float,
    "weight_decay": float,
    "warmup_fraction": float,
    "peak_lr": float,
    "workers": float,
    "bn_batch": float,
    "outcome": str,
}
METRICS = (
    "final/val_acc",
    "final/val_loss",
    "final/train_loss",
    "final/epoch",
    "final/progress",
    "final/optimizer_steps",
    "final/examples_seen",
    "final/samples_per_second",
    "final/diverged",
    "best/val_acc",
    "best/val_loss",
    "target/steps",
    "target/examples",
)


def _float(value: Any) -> float | None:
    """A plain finite float, or None (TensorBoard's hparams plugin rejects numpy and NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _write_map(
    writer: SummaryWriter, m: DegradationMap, figures: dict[str, Path], report_text: str | None
) -> None:
    """Figures as images, the frontier as scalars against batch size, the report as text."""
    for stem, path in figures.items():
        image = np.asarray(Image.open(path).convert("RGB"))
        writer.add_image(f"map/{stem}", image, global_step=0, dataformats="HWC")
    for row in m.frontier.to_dict(orient="records"):
        for column, name in FRONTIER_SCALARS.items():
            value = _float(row.get(column))
            if value is not None:
                tag = f"frontier/{scalar_name(name, m.metric)}"
                writer.add_scalar(tag, value, global_step=int(row["batch_size"]))
        if row.get("status") in STATUS_VALUE:  # 0 holds, 0.5 unresolved, 1 degraded
            writer.add_scalar(
                "frontier/degraded", STATUS_VALUE[row["status"]], global_step=int(row["batch_size"])
            )
    if m.cost is not None and m.cost.trials:
        unit = m.cost.device.lower()
        for batch, device_hours in m.cost.by_batch.items():
            writer.add_scalar(f"cost/{unit}_hours_by_batch", device_hours, global_step=batch)
        writer.add_scalar(f"cost/{unit}_hours", m.cost.device_hours, global_step=0)
        writer.add_scalar("cost/wall_hours", m.cost.wall_hours, global_step=0)
    for row in m.by_rule.to_dict(orient="records"):
        for column, name in RULE_SCALARS.items():
            value = _float(row.get(column))
            if value is not None:
                writer.add_scalar(
                    f"frontier_by_rule/{row['scaling_rule']}/{scalar_name(name, m.metric)}",
                    value,
                    global_step=int(row["batch_size"]),
                )
    if m.fit is not None:
        for name, value in (
            ("b_crit", m.fit.b_crit),
            ("b_crit_ci_low", m.b_crit_ci[0]),
            ("b_crit_ci_high", m.b_crit_ci[1]),
            ("s_min", m.fit.s_min),
            ("e_min", m.fit.e_min),
        ):
            if _float(value) is not None:
                writer.add_scalar(f"critical_batch/{name}", float(value), global_step=0)
    if m.baseline is not None:
        batch, base = m.baseline
        name = scalar_name("accuracy", m.metric)
        writer.add_scalar(f"frontier/baseline_{name}", base.mean, global_step=batch)
    if report_text:
        writer.add_text("report", report_text, global_step=0)


def trial_hparams(trial: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters as plain str / float (missing ones left out)."""
    values = {**trial, "peak_lr": trial.get("actual_lr")}
    params = {}
    for name, kind in HPARAMS.items():
        value = values.get(name)
        if kind is str:
            if isinstance(value, str):
                params[name] = value
        elif _float(value) is not None:
            params[name] = _float(value)
    return params


def trial_metrics(
    trial: dict[str, Any], curve: pd.DataFrame, crossing: dict[str, Any] | None
) -> dict[str, float]:
    """A trial's final metrics as plain floats (missing ones left out)."""
    last = curve.iloc[-1].to_dict() if len(curve) else {}
    values = {
        "final/val_acc": trial.get("final_val_acc"),
        "final/val_loss": trial.get("final_val_loss"),
        "final/train_loss": trial.get("final_train_loss"),
        "final/epoch": last.get("epoch"),
        "final/progress": last.get("progress"),
        "final/optimizer_steps": last.get("optimizer_steps"),
        "final/examples_seen": last.get("examples_seen"),
        "final/samples_per_second": last.get("samples_per_second"),
        "final/diverged": float(bool(trial.get("diverged"))),
        "best/val_acc": trial.get("best_val_acc"),
        "best/val_loss": trial.get("best_val_loss"),
        "target/steps": crossing.get("steps") if crossing else None,
        "target/examples": crossing.get("examples") if crossing else None,
    }
    return {k: v for k, v in ((k, _float(v)) for k, v in values.items()) if v is not None}


def session_end(outcome: str) -> Summary | None:
    """The session's end marker with a status TensorBoard can filter on; None while running.

    tensorboardX's `hparams` always says success; a diverged or errored trial is a failure.
    """
    if outcome == "running":
        return None  # no end info: TensorBoard shows the session as running
    status = "STATUS_FAILURE" if outcome in ("diverged", "errored") else "STATUS_SUCCESS"
    content = HParamsPluginData(
        session_end_info=SessionEndInfo(status=Status.Value(status)), version=0
    )
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


def _write_hparams(root: Path, m: DegradationMap, table: pd.DataFrame) -> int:
    """One HParams session per trial; returns how many were written."""
    # One experiment description for every session: all hyperparameters and all metrics, so
    # whichever session TensorBoard reads it from, the table has every column.
    template = {name: ("" if kind is str else 0.0) for name, kind in HPARAMS.items()}
    experiment, _, _ = hparams(hparam_dict=template, metric_dict=dict.fromkeys(METRICS, 0.0))
    crossings = {r["trial_id"]: r for r in m.crossings.to_dict(orient="records")}
    written = 0
    for trial in m.trials.to_dict(orient="records"):
        curve = table[table["trial_id"] == trial["trial_id"]].sort_values("optimizer_steps")
        curve = curve[curve["optimizer_steps"].notna()]
        _, start, _ = hparams(hparam_dict=trial_hparams(trial), metric_dict={})
        outcome = "diverged" if trial["diverged"] else str(trial["outcome"])
        writer = SummaryWriter(logdir=str(root / str(trial["trial_id"])))
        for summary in (experiment, start, session_end(outcome)):
            if summary is not None:
                writer.file_writer.add_summary(summary)
        for name, value in trial_metrics(trial, curve, crossings.get(trial["trial_id"])).items():
            writer.add_scalar(name, value, global_step=0)
        writer.close()
        written += 1
    return written


def _swap(staging: Path, final: Path) -> None:
    """Replace `final` by `staging`: a copy beside it, then two renames.

    The run is written outside the study directory first, so that a TensorBoard watching the
    study never loads a half-written copy as a run of its own.
    """
    new = final.with_name(f".{final.name}.new-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    shutil.copytree(staging, new)
    try:
        if final.exists():
            final.rename(old)
        new.rename(final)
    except OSError:
        pass  # another report swapped its run in at the same moment: keep that one
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_summary(
    study_dir: str | Path,
    m: DegradationMap,
    table: pd.DataFrame,
    figures: dict[str, Path],
    report_text: str | None = None,
) -> Path:
    """(Re)write STUDY_DIR/summary (see module docstring) and return its path."""
    final = Path(study_dir) / SUMMARY_DIR
    with tempfile.TemporaryDirectory(prefix="study-summary-") as tmp:
        staging = Path(tmp) / SUMMARY_DIR
        writer = SummaryWriter(logdir=str(staging))
        try:
            _write_map(writer, m, figures, report_text)
        finally:
            writer.close()
        _write_hparams(staging / HPARAMS_DIR, m, table)
        if (final / WHY_DIR).is_dir():  # `tuner.explain`'s run outlives a re-report
            shutil.copytree(final / WHY_DIR, staging / WHY_DIR)
        _swap(staging, final)
    return final
