"""The run's calibration where people look: report.md's table, calibration.png (a reliability
diagram per task) and TensorBoard scalars, all from results.json "calibration" and the val set's
blended probabilities (mtl/run/calibrate_folds.py computes them)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from mtl.calibration import N_BINS, pooled_views, reliability
from mtl.io import make_tmp_dir, tmp_prefix

log = logging.getLogger(__name__)

PNG = "calibration.png"
TB_FOLDER = ("tensorboard", "calibration")  # runs `uncalibrated` and `calibrated` beside fold_<k>
KIND_NAMES = {
    "valfile": "val set (blended)",
    "test": "test (blended)",
    "oof": "OOF (cross-fitted)",
    "selection": "selection rows (in-sample)",
}
METRICS = ("ece", "brier", "nll")


def calibration_lines(results: dict) -> list[str]:
    """report.md's calibration section: per task and set of rows, each metric before → after."""
    block = results.get("calibration") or {}
    if not block:
        note = results.get("calibration_note")
        return ["", f"Calibration: {note}."] if note else []
    lines = [
        "",
        "## Calibration",
        "",
        "Fitted per fold on that fold's own validation rows (never a val or test file); the "
        "blends average calibrated probabilities, and the tables and thresholds above are on "
        "the calibrated scale. ECE over 15 equal-mass bins (multi-label: the mean over labels), "
        "Brier score, NLL; before → after (docs/calibration.md).",
        "",
        "| task | method | rows | n | ECE | Brier | NLL |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, entry in block.items():
        for kind, m in entry.get("metrics", {}).items():
            cells = [f"{m['before'][k]:.4f} → {m['after'][k]:.4f}" for k in METRICS]
            lines.append(
                f"| {task} | {entry['method']} | {KIND_NAMES.get(kind, kind)} | {m['n']} | "
                + " | ".join(cells)
                + " |"
            )
    lines.append("")
    for task, entry in block.items():
        params = "; ".join(
            f"fold {k}: scale {_nums(p['scale'])}, bias {_nums(p['bias'])} "
            f"({entry['fitted_rows'].get(k, '?')} rows)"
            for k, p in entry["folds"].items()
        )
        kept = "; ".join(
            f"fold {k}: {', '.join(map(str, v))}" for k, v in entry.get("kept_identity", {}).items()
        )
        lines.append(
            f"- {task}: {params}"
            + (f". Too few rows of one outcome to fit, kept the identity: {kept}" if kept else "")
            + "."
        )
    return lines


def _nums(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def reliability_png(results: dict, diagrams: dict[str, tuple]) -> bytes | None:
    """calibration.png: per calibrated task with a labelled val set, the val set's blended
    probabilities before and after calibration in 15 equal-mass bins (mean confidence against
    observed frequency; multi-label: every row-label pair pooled into one diagram). None when no
    task has one."""
    if not diagrams:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(diagrams), figsize=(4.2 * len(diagrams), 4.4), squeeze=False)
    for ax, (task, (before, after, truth, multilabel)) in zip(
        axes[0], diagrams.items(), strict=True
    ):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect")
        for probs, colour, when in ((before, "tab:orange", "before"), (after, "tab:blue", "after")):
            conf, freq, _ = reliability(*pooled_views(probs, truth, multilabel), N_BINS)
            ax.plot(conf, freq, marker="o", markersize=3, color=colour, label=when)
        m = results["calibration"][task]["metrics"]["valfile"]
        ax.set_title(
            f"{task} ({results['calibration'][task]['method']}): ECE "
            f"{m['before']['ece']:.3f} → {m['after']['ece']:.3f}",
            fontsize=10,
        )
        wide = np.asarray(before).shape[1]
        ax.set_xlabel(
            "predicted probability (all labels pooled)"
            if multilabel
            else ("p(second class)" if wide == 2 else "top-label confidence")
        )
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"run {results['run']}: reliability on the val set, {N_BINS} equal-mass bins")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=90, format="png")
    plt.close(fig)
    return png.getvalue()


def write_tensorboard(run_dir: Path, results: dict) -> None:
    """Every before / after metric as a scalar `calibration/<task>/<rows>/<metric>` in two runs,
    tensorboard/calibration/uncalibrated and .../calibrated, so TensorBoard overlays them. Staged
    in a temp folder and swapped in whole: a rerun replaces the last blend's scalars (never adds to
    them). A run with nothing calibrated has no such folder. Under the run lock (mtl/run/cv.py)."""
    final = run_dir.joinpath(*TB_FOLDER)
    block = results.get("calibration") or {}
    if not block:
        _remove(final)
        return
    from torch.utils.tensorboard import SummaryWriter

    final.parent.mkdir(parents=True, exist_ok=True)
    staged = make_tmp_dir(final)
    try:
        for run, when in (("uncalibrated", "before"), ("calibrated", "after")):
            with SummaryWriter(log_dir=str(staged / run)) as writer:
                for task, entry in block.items():
                    for kind, m in entry.get("metrics", {}).items():
                        for metric in METRICS:
                            tag = f"calibration/{task}/{kind}/{metric}"
                            writer.add_scalar(tag, m[when][metric], global_step=0)
        _remove(final)
        os.rename(staged, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Out of the way by a rename first, so a reader never sees half a folder."""
    if not folder.exists():
        return
    aside = folder.with_name(f"{tmp_prefix(folder.name)}old")
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)
