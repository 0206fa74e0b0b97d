"""report.png (validation loss, primary metric and σ per task across epochs, one line per fold)
and report.md (the CV table), from the run folder's CSV logs and results."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mtl.io import atomic_write, write_text


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


def write_report(run_dir: Path, results: dict) -> None:
    histories = {k: h for k in results["folds"] if (h := epoch_history(run_dir, k)) is not None}
    if histories:
        plot_history(run_dir / "report.png", histories, results)
    write_text(run_dir / "report.md", markdown_table(results))


def plot_history(path: Path, histories: dict[int, pd.DataFrame], results: dict) -> None:
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
        primary = next(iter(results["tasks"][task]["mean"]), "f1_macro")
        primary = "f1_macro" if "f1_macro" in results["tasks"][task]["mean"] else primary
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
    fig.suptitle(
        f"run {results['run']}: {results['monitor']} {results['score']:.4f} ± {results['score_std']:.4f}"
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def markdown_table(results: dict) -> str:
    lines = [f"# Run `{results['run']}`", ""]
    lines.append(
        "Per-fold columns score each fold's own validation rows at its best epoch; OOF scores all "
        "training rows once; the majority baseline predicts the most frequent class (label set) of "
        "those same rows."
    )
    lines.append("")
    lines.append(
        f"Monitored `{results['monitor']}`: {results['score']:.4f} ± {results['score_std']:.4f} over folds "
        f"{results['folds']}"
        + (f" (missing: {results['missing_folds']})" if results["missing_folds"] else "")
        + "."
    )
    lines += [
        "",
        "| task | metric | "
        + " | ".join(f"fold {k}" for k in results["folds"])
        + " | mean ± std | OOF | val file (blended) | test (blended) | majority baseline |",
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
            oof = _fmt(entry.get("oof", {}).get(metric))
            extra = [
                _fmt(entry.get(k, {}).get(metric))
                for k in ("valfile_blended", "test_blended", "baseline")
            ]
            mean = f"{entry['mean'][metric]:.4f} ± {entry['std'][metric]:.4f}"
            lines.append(
                f"| {task} | {metric} | " + " | ".join(per_fold + [mean, oof] + extra) + " |"
            )
    if results.get("thresholds"):
        lines += [
            "",
            "Multi-label thresholds: "
            + "; ".join(f"{t}: {v}" for t, v in results["thresholds"].items()),
        ]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )
