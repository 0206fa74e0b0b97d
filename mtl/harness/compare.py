"""Configs × seeds → one quality table: mean ± std over seeds of each task's validation metric.

    python scripts/compare.py --configs configs/benchmark/mtl_uncertainty.yaml \\
        configs/benchmark/single_toxicity.yaml --seeds 1 2 3 data_dir=../shared/data \\
        --output-dir checkpoints/compare --out docs/results/table.md --json docs/results/compare.json

Each (config, seed) trains in-process with `mtl.run.train.train` into its own run folder
`<output-dir>/<config stem>-s<seed>`; `key=value` overrides apply to every run. A run whose folds
are all finished (`fold_<k>/metrics.json`, as `mtl.run.fit` marks them) is read, not retrained; an
interrupted one resumes through `train`'s own fold skipping. The scores are the clean val-set
metrics of `results.json` (`tasks.<t>.valfile_blended`): each task's val file, or the share held out
of its training file, which nothing was trained or chosen on. Wall-clock per run and the hardware go into the table and the JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from box import Box

from mtl.config import load_config, to_dict
from mtl.errors import ConfigError, MTLError
from mtl.io import write_json, write_text
from mtl.run.cv import finished_folds, read_metas
from mtl.run.runfolder import flatten as _flat
from mtl.runtime import hardware, setup_logging

log = logging.getLogger("mtl.harness.compare")

# What the table shows per task; a task not named here shows its primary metric.
TABLE_METRICS: dict[str, list[str]] = {
    "toxicity": ["f1_macro"],
    "emotion": ["f1_macro"],
    "sentiment": ["accuracy", "f1_macro"],
}
METRIC_NAMES = {"f1_macro": "macro-F1", "accuracy": "acc", "f1_micro": "micro-F1", "auroc": "AUROC"}
TIMING_FILE = "compare_run.json"  # in each run folder: this script's wall-clock of the run
# Keys that may differ between the saved and the new config of a run without changing its result.
VOLATILE = ("run.", "cv.folds", "trainer.enable_progress_bar", "data.num_workers", "data.cache_dir")


def run_name(config: Path, seed: int) -> str:
    return f"{Path(config).stem}-s{seed}"


def plan_runs(
    configs: list[Path], seeds: list[int], overrides: list[str], output_dir: Path
) -> list[dict]:
    """Every (config, seed) resolved and validated before anything trains; seed-major order, so
    an interrupted comparison has whole seeds rather than whole configs."""
    runs = []
    for seed in seeds:
        for config in configs:
            name = run_name(config, seed)
            cfg = load_config(
                config,
                list(overrides)
                + [f"seed={seed}", f"run.name={name}", f"run.output_dir={output_dir}"],
            )
            runs.append(
                {"config": Path(config).stem, "path": str(config), "seed": seed, "cfg": cfg}
            )
    names = [r["cfg"].run.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"Two configs share a file name ({sorted(n for n in names if names.count(n) > 1)}): "
            "run folders are named <config stem>-s<seed>; rename one."
        )
    return runs


def is_finished(cfg: Box, run_dir: Path) -> bool:
    from mtl.run.train import folds_to_run

    done = finished_folds(run_dir) if run_dir.is_dir() else {}
    return (run_dir / "results.json").is_file() and all(k in done for k in folds_to_run(cfg))


def check_same_settings(cfg: Box, run_dir: Path) -> None:
    """A finished or half-done run folder must have been started with the same settings, or the
    table would silently mix budgets (train.py checks only the keys that break resuming)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    before, now = _flat(to_dict(load_config(saved))), _flat(to_dict(cfg))
    differ = sorted(
        k
        for k in set(before) | set(now)
        if not k.startswith(VOLATILE) and before.get(k, "<unset>") != now.get(k, "<unset>")
    )
    if differ:
        shown = "; ".join(
            f"{k}: {before.get(k, '<unset>')!r} → {now.get(k, '<unset>')!r}" for k in differ[:5]
        )
        raise ConfigError(
            f"Run folder {run_dir} was trained with other settings ({shown}). "
            "Pass another --output-dir, or delete the folder to retrain."
        )


def execute(run: dict) -> dict:
    """Train one run (or read it when finished); returns its row for the JSON."""
    import json

    from mtl.run.train import run_dir_of, train

    cfg = run["cfg"]
    run_dir = run_dir_of(cfg)
    check_same_settings(cfg, run_dir)
    timing_file = run_dir / TIMING_FILE
    if is_finished(cfg, run_dir):
        status = "skipped"
        log.info("%s: finished before, not retrained", cfg.run.name)
        results = json.loads((run_dir / "results.json").read_text())
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    else:
        resumed = bool(finished_folds(run_dir)) if run_dir.is_dir() else False
        resumed = resumed or any(run_dir.glob("fold_*/last.ckpt"))
        status = "resumed" if resumed else "trained"
        log.info("%s: training (%s)", cfg.run.name, status)
        start, cpu_start = time.perf_counter(), time.process_time()
        results = train(cfg)
        wall = time.perf_counter() - start
        timing = {
            "wall_clock_s": round(wall, 2),
            # CPU seconds of all this process' threads / wall-clock: near the core count when the
            # run had the machine to itself, lower when other processes shared the cores
            "cpu_s": round(time.process_time() - cpu_start, 2),
            "cpu_utilisation": round((time.process_time() - cpu_start) / wall, 2),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "resumed": resumed,  # the wall-clock then covers only the part after the interruption
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware(),
        }
        write_json(timing_file, timing)
    metas = read_metas(run_dir)
    metrics, baseline = {}, {}
    for task, entry in results["tasks"].items():
        wanted = TABLE_METRICS.get(task, [metas[task].primary_metric])
        clean = entry.get("valfile_blended", {})  # the val set: nothing was chosen on it
        metrics[task] = {m: clean[m] for m in wanted if m in clean}
        baseline[task] = {m: entry.get("baseline", {}).get(m) for m in wanted}
    return {
        "config": run["config"],
        "config_path": run["path"],
        "seed": run["seed"],
        "run_name": cfg.run.name,
        "run_dir": str(run_dir),
        "status": status,
        "wall_clock_s": timing.get("wall_clock_s"),
        "resumed": timing.get("resumed", False),
        "cpu_utilisation": timing.get("cpu_utilisation"),
        "torch_threads": timing.get("hardware", {}).get("torch_threads"),
        "best_epoch": {str(k): fm.get("best_epoch") for k, fm in finished_folds(run_dir).items()},
        "train_rows": _train_rows(run_dir),
        "metrics": metrics,
        "baseline": baseline,
        "score": results.get("score"),
    }


def _train_rows(run_dir: Path) -> dict:
    """Per task: rows that trained and rows that validated (held-out share) in fold 0."""
    import pandas as pd

    path = run_dir / "folds.csv"
    if not path.is_file():
        return {}
    folds = pd.read_csv(path)
    return {
        task: {
            "train": int((g.fold == -1).sum()),  # mtl.data.folds: -1 trains, 0 selects, -2 reports
            "selection": int((g.fold == 0).sum()),
            "val_set_held_out": int((g.fold == -2).sum()),
        }
        for task, g in folds.groupby("task", sort=False)
    }


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


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """`key=value` words are overrides wherever they stand (after --seeds too)."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    rest, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(
        description="Train configs × seeds and write one table of validation scores.",
        epilog="key=value overrides (anywhere) apply to every run, e.g. data_dir=../shared/data",
    )
    parser.add_argument("--configs", nargs="+", type=Path, help="YAML configs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("checkpoints/compare"), help="run folders go here"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/table.md"))
    parser.add_argument(
        "--json",
        nargs="+",
        type=Path,
        default=[Path("docs/results/compare.json")],
        help="where the runs are written (one file); with --paired, one or more files to read",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="no training: print seed-paired differences A − B (config stems) from --json",
    )
    args = parser.parse_args(rest)
    if not args.configs and not args.paired:
        parser.error("give --configs (train and tabulate) or --paired A B (read --json)")
    if args.configs and not args.paired:
        if len(args.json) > 1:
            parser.error("--json takes one file when training (several only with --paired)")
        args.json = args.json[0]
    return args, overrides


def read_reports(paths: list[Path]) -> dict:
    """The runs of several comparison JSONs as one report (e.g. a config tabulated apart from
    the configs it is paired with); a run that two files both hold is an error, not a choice."""
    import json

    runs: dict[tuple, dict] = {}
    for path in paths:
        for run in json.loads(Path(path).read_text(encoding="utf-8"))["runs"]:
            key = (run["config"], run["seed"])
            if key in runs:
                raise ConfigError(
                    f"{path}: run {run['config']} seed {run['seed']} is also in an earlier --json "
                    "file; give each run once."
                )
            runs[key] = run
    return {"runs": list(runs.values())}


def compare(args: argparse.Namespace, overrides: list[str], command: str) -> dict:
    runs = plan_runs(args.configs, args.seeds, overrides, args.output_dir)
    for run in runs:  # before anything trains: a clash stops the whole comparison up front
        from mtl.run.train import run_dir_of

        check_same_settings(run["cfg"], run_dir_of(run["cfg"]))
    rows: list[dict] = []
    hw = hardware()
    started = time.perf_counter()
    for i, run in enumerate(runs, 1):
        log.info("run %d/%d: %s", i, len(runs), run["cfg"].run.name)
        rows.append(execute(run))
        report = build_report(args, overrides, command, rows, hw, len(runs))
        write_outputs(args, report, rows, hw, command)  # after every run: partial tables survive
        log.info(
            "run %d/%d done (%s, %.0f s so far)",
            i,
            len(runs),
            rows[-1]["status"],
            time.perf_counter() - started,
        )
    return build_report(args, overrides, command, rows, hw, len(runs))


def build_report(args, overrides, command, rows, hw, planned) -> dict:
    return {
        "command": command,
        "configs": [str(c) for c in args.configs],
        "seeds": args.seeds,
        "overrides": overrides,
        "output_dir": str(args.output_dir),
        "hardware": hw,
        "runs_planned": planned,
        "runs": rows,
        "table": summarise(rows),
    }


def write_outputs(args, report: dict, rows: list[dict], hw: dict, command: str) -> None:
    write_text(args.out, markdown(report["table"], rows, hw, command))
    write_json(args.json, report)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    setup_logging()
    command = "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)
    if args.paired:
        try:
            print(paired(read_reports(args.json), args.paired), end="")
        except (OSError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        report = compare(args, overrides, command)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(args.out).read_text(encoding="utf-8"))
    print(f"table: {args.out}; per run: {args.json}")
    return 0 if len(report["runs"]) == report["runs_planned"] else 1
