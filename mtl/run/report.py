"""report.png (validation loss, primary metric and σ per task across epochs, one line per fold)
and report.md (the CV table), from the run folder's CSV logs and results."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from mtl.run.calibration_report import calibration_lines
from mtl.run.conflict_panel import add_conflict_panel, conflict_markdown
from mtl.run.threshold_bootstrap import tuning_lines


def epoch_history(run_dir: Path, fold: int) -> pd.DataFrame | None:
    """One row per epoch: the last logged value of every column in that epoch (resumed parts merged)."""
    paths = sorted(
        (run_dir / "csv").glob(f"fold_{fold}*/metrics.csv"),
        key=lambda p: (len(p.parent.name), p.parent.name),
    )
    if not paths:
        return None
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    if "epoch" not in frame or frame.empty:
        return None
    return frame.groupby("epoch").last().reset_index()


def report_files(run_dir: Path, results: dict) -> dict[str, str | bytes]:
    """{"report.md": text, "report.png": PNG bytes (when a fold logged epochs)}, for the blend to
    write together with results.json (mtl/run/cv.py)."""
    from mtl.run.cv import read_metas

    folds = list(results["folds"])
    files: dict[str, str | bytes] = {
        "report.md": markdown_table(results) + conflict_markdown(run_dir, folds)
    }
    histories = {k: h for k in results["folds"] if (h := epoch_history(run_dir, k)) is not None}
    if histories:
        primaries = {name: meta.primary_metric for name, meta in read_metas(run_dir).items()}
        files["report.png"] = plot_history(histories, results, primaries, run_dir)
    return files


def plot_history(
    histories: dict[int, pd.DataFrame], results: dict, primaries: dict[str, str], run_dir: Path
) -> bytes:
    """The PNG. `primaries`: per task, the metric of the middle row (its type's primary metric);
    a bottom row of gradient-conflict panels when the run logged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(results["tasks"])
    rows = [
        ("loss", "val/{t}/loss", "validation loss"),
        ("metric", None, None),
        ("sigma", "sigma/{t}", "σ"),
    ]
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(4.2 * len(tasks), 9), squeeze=False)
    for col, task in enumerate(tasks):
        primary = primaries[task]
        for row, (_, pattern, label) in enumerate(rows):
            ax = axes[row][col]
            column = f"val/{task}/{primary}" if pattern is None else pattern.format(t=task)
            if row == 2 and not any(column in h for h in histories.values()):
                column, label = f"weight/{task}", "task weight"
            for fold, history in histories.items():
                if column in history:
                    data = history[["epoch", column]].dropna()
                    ax.plot(data["epoch"], data[column], marker="o", label=f"fold {fold}")
            ax.set_title(f"{task}: {label or primary}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    clean = results.get("score")
    fig.suptitle(
        f"run {results['run']}: val-set score "
        + ("—" if clean is None else f"{clean:.4f}")
        + f" · fold {results['monitor']} {results['selection_score']:.4f} ± "
        f"{results['selection_score_std']:.4f}"
        + (" (selection rows)" if results.get("selection_biased", True) else "")
    )
    fig.tight_layout()
    add_conflict_panel(fig, run_dir, list(histories))  # gradient.log_every_n_steps runs only
    png = io.BytesIO()
    fig.savefig(png, dpi=90, format="png")
    plt.close(fig)
    return png.getvalue()


def markdown_table(results: dict) -> str:
    lines = [f"# Run `{results['run']}`", ""]
    clean = results.get("score")
    lines.append(
        "**Headline: val-set score "
        + ("— (no task has a val set)" if clean is None else f"{clean:.4f}")
        + f"** — mean primary metric of {results.get('score_rows', 'the val sets')}."
    )
    lines.append("")
    biased = results.get("selection_biased", True)
    lines.append(
        f"Checkpoint chosen by: {results.get('selected_on', 'the monitored metric')}. "
        + (
            "The per-fold, mean ± std and OOF columns score those same rows, so they are "
            "**selection-biased** (optimistic). "
            if biased
            else "The per-fold and OOF columns score each fold's validation rows; nothing was "
            "chosen on them. "
        )
        + "Every column is scored from the folds' prediction files, each task under one "
        "threshold rule (see *Decision thresholds* below). "
        + f"Fold `{results['monitor']}` as logged in training (at the configured thresholds; "
        f"it chose the epochs and weights the `weighted` blend): "
        f"{results['selection_score']:.4f} ± {results['selection_score_std']:.4f} over folds "
        f"{results['folds']}"
        + (f" (missing: {results['missing_folds']})" if results["missing_folds"] else "")
        + ". The majority baseline predicts the most frequent class (label set) of the val set."
    )
    lines += [
        "",
        "| task | metric | val set (blended) | majority baseline | test (blended) | "
        + " | ".join(f"fold {k}" for k in results["folds"])
        + " | fold mean ± std | OOF |",
    ]
    lines.append("|" + "---|" * (len(results["folds"]) + 7))
    for task, entry in results["tasks"].items():
        metrics = [
            m
            for m in ("f1_macro", "f1_micro", "accuracy", "auroc", "exact_match")
            if m in entry["mean"]
        ]
        for metric in metrics:
            per_fold = [_fmt(entry["folds"].get(str(k), {}).get(metric)) for k in results["folds"]]
            head = [
                _fmt(entry.get(k, {}).get(metric))
                for k in ("valfile_blended", "baseline", "test_blended")
            ]
            mean = f"{entry['mean'][metric]:.4f} ± {entry['std'][metric]:.4f}"
            oof = _fmt(entry.get("oof", {}).get(metric))
            lines.append(
                f"| {task} | {metric} | " + " | ".join(head + per_fold + [mean, oof]) + " |"
            )
    overlap = {t: e.get("overlap_with_training") for t, e in results["tasks"].items()}
    overlap = {t: o for t, o in overlap.items() if o and any(o.values())}
    if overlap:
        lines += [
            "",
            "Val / test rows whose text also occurs in training (data.drop_overlap drops them): "
            + "; ".join(
                f"{t}: " + ", ".join(f"{n} {split}" for split, n in o.items())
                for t, o in overlap.items()
            ),
        ]
    lines += ["", *threshold_notes(results), *tuning_lines(results), *calibration_lines(results)]
    return "\n".join(lines) + "\n"


def threshold_notes(results: dict) -> list[str]:
    """Per task, which rows chose the thresholds of each column (mtl/run/summary.py's rules)."""
    checked = " Each tuned cut is kept only where the bootstrap below says it transfers."
    lines = [
        "Decision thresholds (multi-label: per label; binary: on the second class), per column:"
    ]
    for task, entry in results["tasks"].items():
        rule = entry.get("threshold_rule")
        blends = results.get("thresholds", {}).get(task)
        folds = "; ".join(
            f"fold {k}: {_cut(v)}" for k, v in entry.get("fold_thresholds", {}).items()
        )
        if rule == "tuned":
            lines.append(
                f"- {task}: **tuned**. Fold columns, fold mean ± std and OOF: each fold's rows "
                f"at thresholds tuned on the other finished folds' validation rows (cross-fitted; "
                f"a fold alone keeps 0.5"
                + (
                    " of its uncalibrated model, re-expressed on the calibrated scale"
                    if task in results.get("calibration", {})
                    else ""
                )
                + f"): {folds}. Val set and test (blended), `Predictor` and "
                f"exports: tuned on every OOF row (all folds' validation rows): {_cut(blends)}."
                + (checked if task in results.get("threshold_tuning", {}) else "")
            )
        elif rule in ("fixed", "argmax") and task in results.get("calibration", {}) and blends:
            lines.append(
                f"- {task}: {'the configured cut' if rule == 'fixed' else 'argmax'} of the "
                f"uncalibrated model, re-expressed on the calibrated scale so each fold decides "
                f"as its model did: {folds}. Val set and test (blended), `Predictor` and "
                f"exports: the mean of the folds' re-expressed cuts, {_cut(blends)}."
            )
        elif rule == "fixed":
            lines.append(f"- {task}: fixed {_cut(blends)} (config) in every column.")
        elif rule == "argmax":
            lines.append(f"- {task}: argmax (no thresholds) in every column.")
        elif blends is not None:  # a results.json written before threshold rules were recorded
            lines.append(f"- {task}: {_cut(blends)}")
    return lines


def _cut(values) -> str:
    return "—" if values is None else "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )
