"""What `tuner.explain` writes: why.json, why.md (also appended to report.md), figures and a
TensorBoard run (summary/why) with the figures as images and the measures as scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from tuner.report.figures import save_figure  # noqa: E402
from tuner.report.names import FIGURES_DIR, REPORT_FILE, WHY_FILE, WHY_JSON  # noqa: E402
from tuner.report.tensorboard import SUMMARY_DIR, WHY_DIR  # noqa: E402
from tuner.report.write import _write_text  # noqa: E402

HEADING = "## Why large batches degrade"


def _contour_panel(ax, scape: dict[str, Any], weight_decay: str, batch: int) -> None:
    """One 2-D landscape as Li et al. draw it: log10 loss contours, titled with weight decay,
    batch size and test error."""
    loss = np.log10(np.maximum(np.array(scape["loss_2d"]), 1e-12))
    contour = ax.contour(scape["line"], scape["line"], loss, levels=12)
    ax.clabel(contour, fontsize=6)
    ax.set_title(
        f"WD={weight_decay}, batch {batch}\ntest error {100 * (1 - scape['val_acc']):.1f}%",
        fontsize=9,
    )


def figures(result: dict[str, Any]) -> dict[str, Figure]:
    """Sharpness vs batch size, interpolation, 1-D and 2-D landscapes, B_simple over training."""
    out: dict[str, Figure] = {}
    rows = result["sharpness"]
    if rows:
        fig = Figure(figsize=(9, 3.5))
        for ax, key, label in zip(
            fig.subplots(1, 2),
            ("top_hessian_eigenvalue", "epsilon_sharpness"),
            ("top Hessian eigenvalue", "epsilon-sharpness (1e-3), %"),
            strict=True,
        ):
            ax.plot([r["batch_size"] for r in rows], [r[key] for r in rows], "o-")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_title(label)
        fig.tight_layout()
        out["why_sharpness"] = fig
    points = result["interpolation"]["points"]
    if points:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        alphas = [p["alpha"] for p in points]
        ax.plot(alphas, [p["train_loss"] for p in points], "b-", label="train loss")
        ax.plot(alphas, [p["val_loss"] for p in points], "b--", label="val loss")
        twin = ax.twinx()
        twin.plot(alphas, [p["train_acc"] for p in points], "r-", label="train acc")
        twin.plot(alphas, [p["val_acc"] for p in points], "r--", label="val acc")
        ax.set_yscale("log")
        small, large = result["interpolation"]["small"], result["interpolation"]["large"]
        ax.set_xlabel(f"alpha (0: batch {small}, 1: batch {large})")
        ax.set_title("Keskar interpolation")
        ax.legend(loc="upper left")
        twin.legend(loc="upper right")
        fig.tight_layout()
        out["why_interpolation"] = fig
    scapes = result["landscapes"]
    if scapes:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for batch, scape in scapes.items():
            ax.plot(scape["line"], scape["loss_1d"], label=f"batch {batch}")
        ax.set_yscale("log")
        ax.set_xlabel("step along a filter-normalised direction")
        ax.set_ylabel("training loss")
        ax.set_title("1-D loss landscapes (Li et al.)")
        ax.legend()
        fig.tight_layout()
        out["why_landscape_1d"] = fig
        fig = Figure(figsize=(3.2 * len(scapes), 3.2))
        axes = np.atleast_1d(fig.subplots(1, len(scapes)))
        for ax, (batch, scape) in zip(axes, scapes.items(), strict=True):
            _contour_panel(ax, scape, f"{scape['weight_decay']:.0e}", batch)
        fig.suptitle("2-D landscapes, log10 training loss", fontsize=9)
        fig.tight_layout()
        out["why_landscape_2d"] = fig
    decays = result.get("weight_decay_grid") or []
    if decays:
        batches = sorted({d["batch_size"] for d in decays})
        wds = sorted({d["weight_decay"] for d in decays})
        fig = Figure(figsize=(3.2 * len(batches), 3.0 * len(wds)))
        axes = np.array(fig.subplots(len(wds), len(batches), squeeze=False))
        for d in decays:
            ax = axes[wds.index(d["weight_decay"]), batches.index(d["batch_size"])]
            _contour_panel(ax, d, f"{d['weight_decay']:g}", d["batch_size"])
        fig.suptitle("Batch size x weight decay: 2-D landscapes, log10 training loss", fontsize=9)
        fig.tight_layout()
        out["why_weight_decay_grid"] = fig
    curves = result["noise_scale"]["curves"]
    if curves:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for batch, curve in curves.items():
            ax.plot(curve["steps"], curve["b_simple"], label=f"batch {batch}")
        b_crit = result["noise_scale"]["b_crit"]
        if b_crit:
            ax.axhline(b_crit, color="k", ls="--", label=f"fitted B_crit {b_crit:.0f}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("B_simple")
        ax.set_title("Gradient noise scale while training")
        ax.legend()
        fig.tight_layout()
        out["why_noise_scale"] = fig
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def markdown(result: dict[str, Any], images: dict[str, Path]) -> str:
    """The "Why" section: what each measure found, in plain words, then the figures."""
    lines = [HEADING, ""]
    rows = result["sharpness"]
    lines += [
        f"Measured by `python -m tuner.explain` on each batch size's best finished trial, on "
        f"{result['examples']} fixed training examples.",
        "",
        f"| batch | {result.get('metric_label', 'val acc')} | train loss | top Hessian eigenvalue "
        "| epsilon-sharpness (%) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r.get('value_text', _pct(r['val_acc']))} | "
            f"{_fmt(r['train_loss'])} | "
            f"{_fmt(r['top_hessian_eigenvalue'])} | {_fmt(r['epsilon_sharpness'])} |"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        sharper = last["top_hessian_eigenvalue"] > first["top_hessian_eigenvalue"]
        lines += [
            "",
            f"Sharpness: batch {last['batch_size']}'s solution is "
            f"{'sharper' if sharper else 'not sharper'} than batch {first['batch_size']}'s "
            f"(top eigenvalue {_fmt(last['top_hessian_eigenvalue'])} vs "
            f"{_fmt(first['top_hessian_eigenvalue'])}; Keskar et al. expect large batches to "
            f"be sharper).",
        ]
    noise = result["noise_scale"]
    if "ratio_to_b_crit" in noise:
        lines += [
            "",
            f"Gradient noise scale: B_simple at the end of training (median over the best "
            f"trials) {_fmt(noise['b_simple_final_median'])}, fitted B_crit "
            f"{_fmt(noise['b_crit'])}: ratio {_fmt(noise['ratio_to_b_crit'])}, "
            f"{'within' if noise['agree_within_10x'] else 'not within'} the 10x that "
            f"McCandlish et al. report.",
        ]
    elif noise["curves"]:
        lines += ["", "Gradient noise scale: logged, but no critical batch size was fitted."]
    else:
        lines += ["", "Gradient noise scale: the trials logged none (see docs)."]
    decays = result.get("weight_decay_grid") or []
    if decays:
        lines += [
            "",
            "Batch size x weight decay (each trained again in-process with the batch size's best "
            "configuration and that weight decay; the 2-D landscapes are in the grid figure):",
            "",
            "| batch | weight decay | val acc |",
            "|---:|---:|---:|",
        ]
        for d in decays:
            lines.append(
                f"| {d['batch_size']} | {d['weight_decay']:g} | {100 * d['val_acc']:.1f}% |"
            )
    for note in result["notes"]:
        lines.append(f"- {note}")
    lines.append("")
    for stem, path in images.items():
        lines += [f"![{stem}]({FIGURES_DIR}/{path.name})", ""]
    return "\n".join(lines)


def _tensorboard(study_dir: Path, result: dict[str, Any], images: dict[str, Path]) -> None:
    """summary/why: the figures as images, sharpness as scalars against batch size."""
    writer = SummaryWriter(logdir=str(study_dir / SUMMARY_DIR / WHY_DIR))
    try:
        for stem, path in images.items():
            image = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image(f"why/{stem}", image, global_step=0, dataformats="HWC")
        for r in result["sharpness"]:
            for key in ("top_hessian_eigenvalue", "epsilon_sharpness", "train_loss"):
                if math.isfinite(r[key]):
                    writer.add_scalar(f"why/{key}", r[key], global_step=r["batch_size"])
        for batch, curve in result["noise_scale"]["curves"].items():
            for step, value in zip(curve["steps"], curve["b_simple"], strict=True):
                writer.add_scalar(f"why/b_simple/batch_{batch}", value, global_step=int(step))
    finally:
        writer.close()


def _update_report(study_dir: Path, section: str) -> None:
    """Put the section into report.md in place of an earlier one (or at its end)."""
    report = study_dir / REPORT_FILE
    if not report.exists():
        return
    text = report.read_text()
    if HEADING in text:
        text = text[: text.index(HEADING)]
    _write_text(report, text.rstrip() + "\n\n" + section)


def write_outputs(study_dir: Path, result: dict[str, Any]) -> Path:
    """Write everything; return why.md's path."""
    images = {
        stem: save_figure(fig, study_dir / FIGURES_DIR / f"{stem}.png")
        for stem, fig in figures(result).items()
    }
    _write_text(study_dir / WHY_JSON, json.dumps(result, indent=1, default=float))
    section = markdown(result, images)
    why = study_dir / WHY_FILE
    _write_text(why, section)
    _update_report(study_dir, section)
    _tensorboard(study_dir, result, images)
    return why
