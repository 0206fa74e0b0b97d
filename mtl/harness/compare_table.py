"""The comparison's tables: mean ± std over seeds per config and task, wall-clock, hardware, and
seed-paired differences between configs (mtl/harness/compare.py runs them)."""

from __future__ import annotations

import numpy as np

from mtl.errors import ConfigError

# What the table shows per task; a task not named here shows its primary metric.
TABLE_METRICS: dict[str, list[str]] = {
    "toxicity": ["f1_macro"],
    "emotion": ["f1_macro"],
    "sentiment": ["accuracy", "f1_macro"],
}
METRIC_NAMES = {"f1_macro": "macro-F1", "accuracy": "acc", "f1_micro": "micro-F1", "auroc": "AUROC"}


def summarise(rows: list[dict]) -> dict:
    """Per config (in first-seen order): per task and metric mean / std (ddof=1) / n over seeds."""
    table: dict[str, dict] = {}
    for row in rows:
        entry = table.setdefault(row["config"], {"seeds": [], "metrics": {}, "wall_clock_s": []})
        entry["seeds"].append(row["seed"])
        if row.get("wall_clock_s") is not None:
            entry["wall_clock_s"].append(row["wall_clock_s"])
        for task, values in row["metrics"].items():
            for metric, value in values.items():
                entry["metrics"].setdefault(f"{task}/{metric}", []).append(value)
    out = {}
    for config, entry in table.items():
        out[config] = {
            "seeds": entry["seeds"],
            "metrics": {k: _stats(v) for k, v in entry["metrics"].items()},
            "wall_clock_s": _stats(entry["wall_clock_s"]) if entry["wall_clock_s"] else None,
        }
    return out


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "n": len(arr),
        "values": [float(v) for v in arr],
    }


def columns(rows: list[dict]) -> list[str]:
    """task/metric columns in the order tasks first appear."""
    seen: list[str] = []
    for row in rows:
        for task in sorted(
            row["metrics"], key=lambda t: list(TABLE_METRICS).index(t) if t in TABLE_METRICS else 99
        ):
            for metric in row["metrics"][task]:
                if f"{task}/{metric}" not in seen:
                    seen.append(f"{task}/{metric}")
    return seen


def _cell(stats: dict | None, digits: int = 4) -> str:
    if stats is None:
        return "—"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _wall(stats: dict | None) -> str:
    """Median (min–max): robust to a run slowed by other processes on a shared machine."""
    if stats is None:
        return "—"
    values = stats["values"]
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{np.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def run_threads(row: dict, hw: dict) -> int:
    """The torch threads a run trained with (older runs did not record them: this machine's)."""
    return row.get("torch_threads") or hw.get("torch_threads") or 1


def baseline_by_seed(rows: list[dict]) -> dict[str, list[float]]:
    """{"task/metric": one majority-baseline score per seed}.

    Configs of one seed score the same validation rows, so the ± of the baseline row is over
    seeds, not over how many configs happen to share a task (mean within a seed, to be safe)."""
    by_seed: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        for task, values in row["baseline"].items():
            for metric, value in values.items():
                if value is not None:
                    seeds = by_seed.setdefault(f"{task}/{metric}", {})
                    seeds.setdefault(row["seed"], []).append(value)
    return {c: [float(np.mean(v)) for v in seeds.values()] for c, seeds in by_seed.items()}


def markdown(summary: dict, rows: list[dict], hw: dict, command: str) -> str:
    cols = columns(rows)
    header = [
        "config",
        *[f"{c.split('/')[0]} {METRIC_NAMES.get(c.split('/')[1], c.split('/')[1])}" for c in cols],
        "seeds",
        "wall-clock / run, s: median (min–max)",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for config, entry in summary.items():
        cells = [_cell(entry["metrics"].get(c)) for c in cols]
        seeds = ",".join(map(str, entry["seeds"]))
        lines.append(
            f"| {config} | " + " | ".join(cells) + f" | {seeds} | {_wall(entry['wall_clock_s'])} |"
        )
    baseline = baseline_by_seed(rows)
    if baseline:
        cells = [_cell(_stats(baseline[c])) if c in baseline else "—" for c in cols]
        lines.append("| majority-class baseline | " + " | ".join(cells) + " | | |")
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU"
    shared = [
        f"{r['run_name']} ({r['cpu_utilisation']:.2f} of {run_threads(r, hw)})"
        for r in rows
        if not hw.get("gpu")
        and r.get("cpu_utilisation") is not None
        and r["cpu_utilisation"] < 0.75 * run_threads(r, hw)
    ]
    contention = (
        [
            "Shared CPU (CPU seconds / wall-clock below 75% of the run's torch threads: other "
            f"processes used the cores, so these wall-clocks are inflated): {', '.join(shared)}."
        ]
        if shared
        else []
    )
    statuses = {s: sum(r["status"] == s for r in rows) for s in ("trained", "resumed", "skipped")}
    return "\n".join(
        [
            "# Multi-task vs single-task: val-set scores",
            "",
            f"Hardware: {hw['cpu_model']}, {hw['usable_cores']} cores available ({hw['torch_threads']} torch "
            f"threads){gpu}; torch {hw['torch']}, Python {hw['python']}.",
            "",
            f"Command: `{command}`",
            "",
            *lines,
            "",
            "Mean ± sample std (ddof=1) over seeds of each run's val-set score (the task's val "
            "file, or its held-out share of the training file where it has none: rows never trained "
            "on and never used to choose the checkpoint, `results.json` → `valfile_blended`); `—` where a "
            "config has no such task. Wall-clock: the whole run (data, training, validation, "
            "predictions) as timed by this script when it trained the run. The baseline row: "
            "always predicting the majority class (multi-label: the most frequent label set) on the same validation rows.",
            *contention,
            f"Runs: {len(rows)} ({', '.join(f'{n} {s}' for s, n in statuses.items() if n)}).",
            "",
        ]
    )


def paired(report: dict, pairs: list[tuple[str, str]]) -> str:
    """Seed-paired differences A − B of each task metric both configs report: at one seed both
    saw the same training rows and validate on the same rows, so the pairing removes that noise."""
    by_run = {(r["config"], r["seed"]): r["metrics"] for r in report["runs"]}
    lines = [
        "| A − B | metric | per seed | mean ± std | A higher |",
        "|---|---|---|---|---|",
    ]
    for a, b in pairs:
        seeds = sorted({s for c, s in by_run if c == a} & {s for c, s in by_run if c == b})
        if not seeds:
            raise ConfigError(f"--paired {a} {b}: no seed has runs of both configs in the JSON.")
        for task in by_run[a, seeds[0]]:
            for metric in by_run[a, seeds[0]][task]:
                if metric not in by_run[b, seeds[0]].get(task, {}):
                    continue
                diffs = [by_run[a, s][task][metric] - by_run[b, s][task][metric] for s in seeds]
                per_seed = ", ".join(f"{d:+.4f}" for d in diffs)
                stats = _stats(diffs)
                sign = f"{'+' if stats['mean'] >= 0 else ''}"
                spread = f" ± {stats['std']:.4f}" if stats["std"] is not None else ""
                wins = sum(d > 0 for d in diffs)
                lines.append(
                    f"| {a} − {b} | {task} {METRIC_NAMES.get(metric, metric)} | {per_seed} | "
                    f"{sign}{stats['mean']:.4f}{spread} | {wins}/{len(diffs)} seeds |"
                )
    return "\n".join(lines) + "\n"
