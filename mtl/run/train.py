"""`train(cfg) -> results`: read the data once, run every fold, write the run folder.

    python scripts/train.py --config configs/default.yaml trainer.max_epochs=1

Run folder `checkpoints/<run.name>/`: config.yaml, fingerprint.json (what the folds were trained
with; see docs/reliability.md), tokenizer/, folds.csv, fold_<k>/ (best.ckpt,
last.ckpt, metrics.json, val_<task>.csv), tensorboard/fold_<k>/, csv/fold_<k>/, results.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from box import Box
from lightning.fabric.utilities.rank_zero import rank_zero_only

from mtl.config import save_config
from mtl.data.datamodule import MultiTaskDataModule
from mtl.data.tokenize import token_cache_dir
from mtl.errors import ConfigError
from mtl.io import make_tmp_dir, remove_orphaned_tmp, write_csv, write_json
from mtl.model.aggregation import check_installed
from mtl.run.cv import collect
from mtl.run.fit import fit_fold
from mtl.run.runfolder import check_and_record, fold_lock, run_identity, run_lock

log = logging.getLogger("mtl")


def run_dir_of(cfg: Box) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def folds_to_run(cfg: Box) -> Sequence[int]:
    n = max(1, cfg.cv.n_splits)
    chosen = cfg.cv.folds
    if chosen is None:  # a range, not a list: the CLI calls this before the data caps n_splits
        return range(n)
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


def prepare(cfg: Box) -> tuple[Path, MultiTaskDataModule]:
    """Everything before the first fold: the DataModule reads, checks and tokenizes the data and
    assigns the folds, then the run folder is written.

    The data and folds are checked before the folder is touched, so a failed start leaves nothing
    that blocks the corrected rerun. Under DDP every rank runs this; only rank 0 writes (every
    rank computes the same)."""
    run_dir = run_dir_of(cfg)
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    identity = run_identity(cfg)
    assignment = dm.folds_frame()
    writer = global_rank() == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # fold jobs of one run (a SLURM array) start at once
        check_and_record(cfg, run_dir, identity, write=writer, folds=assignment)
        if writer:
            remove_orphaned_tmp(run_dir)
            remove_orphaned_tmp(token_cache_dir(cfg))  # shared by runs: only dead writers' files
            save_config(cfg, run_dir / "config.yaml")
            if not (run_dir / "tokenizer").is_dir():
                save_tokenizer(dm.tokenizer, run_dir / "tokenizer")
            write_json(
                run_dir / "tasks.json", {name: meta.to_dict() for name, meta in dm.metas.items()}
            )
            write_csv(run_dir / "folds.csv", assignment)
            write_json(run_dir / "overlap.json", dm.overlap)
    return run_dir, dm


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


def train(cfg: Box, callbacks: list | None = None) -> dict:
    """Train every fold of `cfg` (skipping finished ones), then blend every finished fold of the
    run folder and write results.json and the report.

    `callbacks`: extra Lightning callbacks for every fold's Trainer (scripts/tune.py's pruning).
    Under DDP every rank calls this; rank 0 returns the results, the other ranks `{}`."""
    check_installed(cfg)  # gradient.aggregator's solvers, before any work
    run_dir, dm = prepare(cfg)
    for k in folds_to_run(cfg):
        # one process trains a fold at a time (rank 0 holds the lock for its DDP group)
        with fold_lock(run_dir, k) if global_rank() == 0 else contextlib.nullcontext():
            if global_rank() == 0:
                remove_orphaned_tmp(run_dir / f"fold_{k}")
            fit_fold(cfg, k, run_dir, dm, callbacks)
    if global_rank() != 0:
        return {}  # under DDP rank 0 alone blends and writes the run's results
    # under the run lock, from every fold finished by then: a fold job that finishes first
    # never overwrites the blend of one that saw more folds (mtl/run/cv.py)
    return collect(cfg, run_dir)
