"""`train(cfg) -> results`: read the data once, run every fold, write the run folder.

    python scripts/train.py --config configs/default.yaml trainer.max_epochs=1

Run folder `checkpoints/<run.name>/`: config.yaml, fingerprint.json (what the folds were trained
with; see docs/reliability.md), tokenizer/, folds.csv, fold_<k>/ (best.ckpt,
last.ckpt, metrics.json, val_<task>.csv), tensorboard/fold_<k>/, csv/fold_<k>/, results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from box import Box
from lightning.fabric.utilities.rank_zero import rank_zero_only

from mtl.config import DEFAULT_CONFIG, load_config, save_config
from mtl.cv import collect, headline
from mtl.data import load_tasks, token_cache_dir
from mtl.errors import ConfigError, MTLError
from mtl.fit import fit_fold
from mtl.folds import drop_overlap, fold_assignments, fold_split, overlap_counts, val_sets
from mtl.io import make_tmp_dir, remove_orphaned_tmp, write_csv, write_json
from mtl.model import load_tokenizer, position_limit
from mtl.report import write_report
from mtl.runfolder import check_and_record, fold_lock, run_identity, run_lock
from mtl.runtime import setup_logging

log = logging.getLogger("mtl")


def run_dir_of(cfg: Box) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def folds_to_run(cfg: Box) -> list[int]:
    n = max(1, cfg.cv.n_splits)
    chosen = cfg.cv.folds
    if chosen is None:
        return list(range(n))
    if isinstance(chosen, int):
        chosen = [chosen]
    elif isinstance(chosen, str):
        chosen = [int(x) for x in chosen.replace(" ", "").split(",") if x != ""]
    bad = [k for k in chosen if not isinstance(k, int) or not 0 <= k < n]
    if bad:
        raise ConfigError(
            f"cv.folds / --folds: fold(s) {bad} do not exist; with cv.n_splits={n} use 0..{n - 1}."
        )
    return sorted(set(chosen))


def global_rank() -> int:
    """This process's rank among all training processes. Lightning's DDP / FSDP strategy sets it
    once a Trainer starts; before that it is read from the launcher's environment (RANK under
    torchrun, SLURM_PROCID under srun, LOCAL_RANK in the processes Lightning itself starts)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def prepare(cfg: Box):
    """Everything before the first fold: tokenizer, data, fold assignment, then the run folder.

    The data and folds are checked before the folder is touched, so a failed start leaves nothing
    that blocks the corrected rerun. Under DDP every rank runs this; only rank 0 writes (every
    rank computes the same)."""
    run_dir = run_dir_of(cfg)
    check_max_length(cfg)
    tokenizer = load_tokenizer(cfg.backbone.name)
    data, metas = load_tasks(cfg, tokenizer)
    if cfg.data.drop_overlap:
        data = drop_overlap(data)
    folds = fold_assignments(cfg, data)
    warn_small_classes(cfg, data, metas)
    overlap = overlap_counts(data, folds)
    for name, counts in overlap.items():
        for split, n in counts.items():
            if n:
                log.warning(
                    "%s: %d %s rows also occur (same normalised text) among its training rows; "
                    "data.drop_overlap=true drops them",
                    name, n, split,
                )  # fmt: skip
    identity = run_identity(cfg)
    assignment = folds_frame(data, folds)
    writer = global_rank() == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # fold jobs of one run (a SLURM array) start at once
        check_and_record(cfg, run_dir, identity, write=writer, folds=assignment)
        if writer:
            remove_orphaned_tmp(run_dir)
            remove_orphaned_tmp(token_cache_dir(cfg))  # shared by runs: only dead writers' files
            save_config(cfg, run_dir / "config.yaml")
            if not (run_dir / "tokenizer").is_dir():
                save_tokenizer(tokenizer, run_dir / "tokenizer")
            write_json(
                run_dir / "tasks.json", {name: meta.to_dict() for name, meta in metas.items()}
            )
            write_csv(run_dir / "folds.csv", assignment)
            write_json(run_dir / "overlap.json", overlap)
    return run_dir, tokenizer, data, metas, folds


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Into a temporary folder renamed into place: fold jobs of one run (a SLURM array) may race."""
    tmp = make_tmp_dir(folder)
    try:
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_max_length(cfg: Box) -> None:
    """data.max_length above the backbone's position limit crashes mid-validation on long texts."""
    limit = position_limit(cfg.backbone.name)
    if limit is not None and cfg.data.max_length > limit:
        raise ConfigError(
            f"Config key 'data.max_length' is {cfg.data.max_length}, but backbone "
            f"'{cfg.backbone.name}' has positions for at most {limit} tokens. Set "
            f"data.max_length={limit} or less."
        )


def warn_small_classes(cfg: Box, data: dict, metas: dict) -> None:
    """A class with fewer training rows than folds is missing from some folds' validation rows,
    so its per-fold scores there are undefined (counted as 0 by macro-F1)."""
    n = cfg.cv.n_splits
    if n < 2:
        return
    for name, meta in metas.items():
        labels = data[name]["train"].labels
        counts = meta.class_counts(labels)
        small = {str(c): int(k) for c, k in zip(meta.classes, counts, strict=True) if k < n}
        if small:
            log.warning(
                "task '%s': %s %s have fewer training rows than cv.n_splits=%d (%s of %d rows): some "
                "folds validate without them, so those folds' per-class and macro scores are "
                "unreliable. Use fewer folds, add rows, or merge rare classes.",
                name,
                "labels" if meta.multilabel else "classes",
                list(small),
                n,
                ", ".join(f"{c}: {k}" for c, k in small.items()),
                len(labels),
            )


def folds_frame(data, folds: dict[str, np.ndarray]) -> pd.DataFrame:
    frames = [
        pd.DataFrame({"task": name, "row": data[name]["train"].rows, "fold": assignment})
        for name, assignment in folds.items()
    ]
    return pd.concat(frames, ignore_index=True)


def train(cfg: Box) -> dict:
    """Train every fold of `cfg` (skipping finished ones), then blend and write results.json.

    Under DDP every rank calls this; rank 0 returns the results, the other ranks `{}`."""
    run_dir, tokenizer, data, metas, folds = prepare(cfg)
    predict_parts = {
        "test": {n: s["test"] for n, s in data.items() if s.get("test") is not None},
        # the clean headline: each task's val set, never trained on and never chosen on
        "valfile": val_sets(data, folds),
    }
    for k in folds_to_run(cfg):
        train_parts, val_parts = fold_split(data, folds, k)
        # one process trains a fold at a time (rank 0 holds the lock for its DDP group)
        with fold_lock(run_dir, k) if global_rank() == 0 else contextlib.nullcontext():
            if global_rank() == 0:
                remove_orphaned_tmp(run_dir / f"fold_{k}")
            log.info("fold %d: training on %s rows", k, {n: len(p) for n, p in train_parts.items()})
            fit_fold(
                cfg,
                k,
                run_dir,
                metas,
                tokenizer.pad_token_id,
                train_parts,
                val_parts,
                predict_parts,
            )
    if global_rank() != 0:
        return {}  # under DDP rank 0 alone blends and writes the run's results
    results = collect(cfg, run_dir)
    write_report(run_dir, results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the multi-task model.",
        epilog="Overrides: key.sub=value, e.g. trainer.max_epochs=1 tasks.toxicity.train=/path/tox.csv",
    )
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--folds", default=None, help="run only these folds, e.g. 0,2 (for cluster jobs)"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        overrides = list(args.overrides) + ([f"cv.folds={args.folds}"] if args.folds else [])
        cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
        folds_to_run(cfg)
        results = train(cfg)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if results:  # empty on the other ranks of a multi-process run
        print(f"done: {headline(results)}; run folder {run_dir_of(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
