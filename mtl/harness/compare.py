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
import time
from datetime import datetime, timezone
from pathlib import Path

from box import Box

from mtl.config import load_config, to_dict
from mtl.errors import ConfigError
from mtl.harness.compare_table import TABLE_METRICS, markdown, summarise
from mtl.io import write_json, write_text
from mtl.run.cv import finished_folds, read_metas
from mtl.run.runfolder import flatten as _flat
from mtl.runtime import hardware

log = logging.getLogger("mtl.harness.compare")
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
