"""report.png's gradient-conflict row and report.md's table (runs with `gradient.log_every_n_steps`):
the cosine between each pair of tasks' gradients on the shared encoder over the training steps,
and the share of the monitored steps where it was negative, for the whole encoder, its embeddings
and its layers. Read from the run's CSV logs (grad/cos/..., grad/norm/..., mtl/model/gradients.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

GROUPS = (("", "whole encoder"), ("embeddings/", "embeddings"), ("layers/", "layers"))
EXTRA_INCHES = 3.4  # the height the row adds to the figure


def conflict_logs(run_dir: Path, fold: int) -> pd.DataFrame | None:
    """The fold's monitored steps: one row per step with its grad/* columns (resumed parts in order)."""
    paths = sorted(
        (run_dir / "csv").glob(f"fold_{fold}*/metrics.csv"),
        key=lambda p: (len(p.parent.name), p.parent.name),
    )
    frames = [pd.read_csv(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = [c for c in frame.columns if c.startswith("grad/")]
    if not columns or "step" not in frame:
        return None
    frame = frame[["step", *columns]].dropna(subset=columns, how="all")
    return frame.groupby("step").last().reset_index() if len(frame) else None


def pairs_of(frame: pd.DataFrame) -> list[str]:
    return sorted(
        c.split("/", 2)[2] for c in frame.columns if c.count("/") == 2 and c.startswith("grad/cos/")
    )


def add_conflict_panel(fig, run_dir: Path, folds: list[int]) -> None:
    """Grow `fig` (report.png's, laid out already) by a row at the bottom with the two panels;
    nothing when no fold logged gradient statistics."""
    logs = {k: f for k in folds if (f := conflict_logs(run_dir, k)) is not None}
    if not logs:
        return
    width, height = fig.get_size_inches()
    total = height + EXTRA_INCHES
    for ax in fig.axes:  # the existing grid keeps its size in inches, moved up
        box = ax.get_position()
        ax.set_position(
            [
                box.x0,
                (EXTRA_INCHES + box.y0 * height) / total,
                box.width,
                box.height * height / total,
            ]
        )
    for text in fig.texts:  # the suptitle stays at the top
        x, y = text.get_position()
        text.set_position((x, (EXTRA_INCHES + y * height) / total))
    fig.set_size_inches(width, total)
    bottom, panel = 0.55 / total, (EXTRA_INCHES - 1.2) / total
    curves = fig.add_axes([0.06, bottom, 0.52, panel])
    shares = fig.add_axes([0.66, bottom, 0.31, panel])
    pairs = sorted({p for f in logs.values() for p in pairs_of(f)})
    colours = {pair: f"C{i}" for i, pair in enumerate(pairs)}
    for fold, frame in logs.items():
        for pair in pairs:
            column = f"grad/cos/{pair}"
            if column in frame:
                data = frame[["step", column]].dropna()
                smooth = data[column].rolling(5, min_periods=1).mean()
                label = pair.replace("__", " · ") if fold == min(logs) else None
                curves.plot(data["step"], smooth, color=colours[pair], alpha=0.8, label=label)
    curves.axhline(0.0, color="black", linewidth=0.8)
    curves.set_title("cosine between task gradients on the shared encoder (mean of 5 logs)")
    curves.set_xlabel("optimizer step (every fold)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    width_bar = 0.8 / len(GROUPS)
    for g, (prefix, label) in enumerate(GROUPS):
        values = []
        for pair in pairs:
            column = f"grad/conflict/{prefix}{pair}"
            last = [
                f[column].dropna().iloc[-1]
                for f in logs.values()
                if column in f and f[column].notna().any()
            ]
            values.append(sum(last) / len(last) if last else float("nan"))
        shares.bar([i + g * width_bar for i in range(len(pairs))], values, width_bar, label=label)
    shares.set_xticks([i + width_bar for i in range(len(pairs))])
    shares.set_xticklabels([p.replace("__", "\n") for p in pairs], fontsize=8)
    shares.set_ylim(0, 1)
    shares.set_title("share of monitored steps with a negative cosine")
    shares.grid(alpha=0.3, axis="y")
    shares.legend(fontsize=8)


def conflict_markdown(run_dir: Path, folds: list[int]) -> str:
    """report.md's section: per task pair and parameter group, over every fold's monitored steps,
    the mean and median cosine and the share of steps where it was negative; per task, the median
    gradient norm. "" when no fold logged gradient statistics."""
    logs = [f for k in folds if (f := conflict_logs(run_dir, k)) is not None]
    if not logs:
        return ""
    frame = pd.concat(logs, ignore_index=True)
    lines = [
        "",
        "## Gradient conflict",
        "",
        f"Cosine between the tasks' gradients on the shared encoder at {len(frame)} monitored "
        f"steps (folds {folds}; `gradient.log_every_n_steps`); a pair counts only at steps where "
        "both tasks had rows. Negative = the tasks pull the shared weights apart.",
        "",
        "| pair | parameters | mean cos | median cos | steps with cos < 0 | steps |",
        "|---|---|---|---|---|---|",
    ]
    for pair in pairs_of(frame):
        for prefix, label in GROUPS:
            values = frame.get(f"grad/cos/{prefix}{pair}", pd.Series(dtype=float)).dropna()
            if len(values):
                lines.append(
                    f"| {pair.replace('__', ' · ')} | {label} | {values.mean():+.3f} | "
                    f"{values.median():+.3f} | {(values < 0).mean():.1%} | {len(values)} |"
                )
    norms = sorted(c for c in frame.columns if c.startswith("grad/norm/") and c.count("/") == 2)
    if norms:
        lines += ["", "Median gradient norm on the whole encoder: " + ", ".join(
            f"{c.rsplit('/', 1)[1]} {frame[c].dropna().median():.3g}" for c in norms
        ) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"
