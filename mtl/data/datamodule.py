"""The LightningDataModule: reads and tokenizes the task files, assigns folds, serves fold k.

    dm = MultiTaskDataModule(cfg); dm.setup("fit"); dm.set_fold(2)
    batch = next(iter(dm.train_dataloader()))

`prepare_data` (one process per node) fills the token cache; `setup` (every process) reads the
files (tokens from that cache), checks them and assigns the folds, once. Fold k trains on every
task's rows outside fold k and validates on fold k (mtl/data/folds.py); `predict_dataloader` serves
the rows a fold predicts for the run folder: its validation rows (out-of-fold), each task's val
set (the clean headline) and the test files. Loaders shard by rank under DDP themselves.
This is the fold-enabled DataModule Lightning issue #20544 ("Cross validation built into the
framework") asks for: a fold index in, that fold's train / val sets out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import numpy as np
import pandas as pd
import torch
from box import Box
from torch.utils.data import DataLoader

from mtl.backbone import check_backbone, load_tokenizer, position_limit
from mtl.data.files import TaskData
from mtl.data.folds import (
    VAL_SET,
    drop_overlap,
    fold_assignments,
    fold_split,
    overlap_counts,
    task_seed,
    val_sets,
)
from mtl.data.labels import trained_class_weights
from mtl.data.load import load_tasks
from mtl.data.sampling import Collator, MultiTaskBatchSampler, MultiTaskDataset, TrainLoader
from mtl.data.tasks import TaskMeta
from mtl.errors import ConfigError

log = logging.getLogger("mtl")


def make_collator(cfg: Box, metas: dict[str, TaskMeta], pad_id: int) -> Collator:
    mixed = str(cfg.trainer.precision) not in ("32", "32-true", "64", "64-true")
    widths = {name: meta.num_outputs if meta.multilabel else None for name, meta in metas.items()}
    return Collator(pad_id, widths, pad_to_multiple_of=8 if mixed else None)


def make_loader(
    cfg: Box,
    parts: dict[str, TaskData | None],
    collator: Collator,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    epoch_seed: int | None = None,
    batches_done: Callable[[], int] | None = None,
) -> DataLoader:
    dataset = MultiTaskDataset(parts, collator.task_names)
    sampler = MultiTaskBatchSampler(
        dataset.task_ids,
        dataset.lengths,
        cfg.data.batch_size if train else cfg.data.eval_batch_size,
        train=train,
        mode=cfg.sampling.mode,
        temperature=cfg.sampling.temperature,
        length_grouping=cfg.sampling.length_grouping,
        seed=cfg.seed if epoch_seed is None else epoch_seed,
        rank=rank,
        world_size=world_size,
    )
    workers = cfg.data.num_workers
    extra = {"batches_done": batches_done} if train else {}
    return (TrainLoader if train else DataLoader)(
        dataset,
        # each iterator draws a base seed (for worker processes) from this generator, not the
        # global RNG: a fold resumed mid-epoch creates its iterators after restoring the RNG
        # state, where the uninterrupted fold had drawn before the checkpoint (other dropout)
        generator=torch.Generator().manual_seed(sampler.seed),
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        **extra,
    )


def check_max_length(cfg: Box) -> None:
    """data.max_length above the backbone's position limit crashes mid-validation on long texts."""
    limit = position_limit(cfg.backbone.name)
    if limit is not None and cfg.data.max_length > limit:
        raise ConfigError(
            f"Config key 'data.max_length' is {cfg.data.max_length}, but backbone "
            f"'{cfg.backbone.name}' has positions for at most {limit} tokens. Set "
            f"data.max_length={limit} or less."
        )


def same_rows(a: TaskData | None, b: TaskData | None) -> bool:
    return a is b or (
        a is not None
        and b is not None
        and (a.path, a.split) == (b.path, b.split)
        and np.array_equal(a.rows, b.rows)
    )


def limit_val_rows(
    cfg: Box, parts: dict[str, TaskData | None], fold: int, world_size: int = 1
) -> dict[str, TaskData | None]:
    """`trainer.limit_val_batches`: a seeded random share of each task's validation rows (a float:
    that share; an int: that many batches per process), the same at every epoch of a fold.

    Lightning's own limit takes the loader's first batches, and evaluation batches are sorted by
    length: the rows that chose the epoch were the shortest texts."""
    limit = cfg.trainer.limit_val_batches
    total = sum(len(p) for p in parts.values() if p is not None)
    if limit is None or total == 0:
        return parts
    if isinstance(limit, float) and limit > 1.0:
        raise ConfigError(
            f"Config key 'trainer.limit_val_batches' is {limit}: a float is the share of the "
            "validation rows to use, at most 1.0; an int is a number of batches per process."
        )
    share = (
        limit if isinstance(limit, float) else limit * cfg.data.eval_batch_size * world_size / total
    )
    if share >= 1.0:
        return parts
    limited = {}
    for name, part in parts.items():
        if part is None or len(part) == 0:
            limited[name] = part
            continue
        keep = min(len(part), max(world_size, round(share * len(part))))
        rng = np.random.default_rng(task_seed(cfg.seed, name, f"limit_val/{fold}"))
        limited[name] = part.subset(np.sort(rng.choice(len(part), size=keep, replace=False)))
        log.info(
            "%s: validating fold %d on a random %d of its %d rows (trainer.limit_val_batches=%s)",
            name, fold, keep, len(part), limit,
        )  # fmt: skip
    return limited


class MultiTaskDataModule(L.LightningDataModule):
    """Every task's train / val / test files, their fold assignment, and fold k's loaders."""

    def __init__(self, cfg: Box):
        super().__init__()
        self.cfg = cfg
        self.fold = 0
        self.tokenizer = None
        self.data: dict[str, dict[str, TaskData]] | None = None  # data[task][split]
        self.metas: dict[str, TaskMeta] = {}
        self.folds: dict[str, np.ndarray] = {}  # per task, the fold of each training row
        self.overlap: dict[str, dict[str, int]] = {}

    def prepare_data(self) -> None:
        # one process per node writes the token cache; setup() on every rank then reads it
        if self.data is None:
            load_tasks(self.cfg, load_tokenizer(self.cfg.backbone.name))

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:  # every stage serves the same data: read it once
            return
        cfg = self.cfg
        check_max_length(cfg)
        check_backbone(cfg.backbone)
        self.tokenizer = load_tokenizer(cfg.backbone.name)
        data, self.metas = load_tasks(cfg, self.tokenizer)
        if cfg.data.drop_overlap:
            data = drop_overlap(data)
        self.folds = fold_assignments(cfg, data, self.metas)  # refuses folds a class cannot fill
        # the run's record (tasks.json): `auto` class weights over the rows that train in some
        # fold, i.e. not the held-out val set nor, with one split, the selection slice (fold 0)
        self.metas = trained_class_weights(
            cfg.tasks,
            self.metas,
            {
                name: data[name]["train"].labels[
                    (folds != VAL_SET) & ((folds != 0) | (cfg.cv.n_splits > 1))
                ]
                for name, folds in self.folds.items()
            },
        )
        self.overlap = overlap_counts(data, self.folds)
        for name, counts in self.overlap.items():
            for split, n in counts.items():
                if n:
                    log.warning(
                        "%s: %d %s rows also occur (same normalised text) among its training "
                        "rows; data.drop_overlap=true drops them",
                        name, n, split,
                    )  # fmt: skip
        self.data = data
        self.collator = make_collator(cfg, self.metas, self.tokenizer.pad_token_id)

    def set_fold(self, k: int) -> None:
        """Serve fold k: train on every task's rows outside fold k, validate on fold k."""
        if not 0 <= k < max(1, self.cfg.cv.n_splits):
            raise ConfigError(f"fold {k} does not exist with cv.n_splits={self.cfg.cv.n_splits}.")
        self.fold = k

    def fold_metas(self) -> dict[str, TaskMeta]:
        """The tasks as the current fold trains them: `class_weights: auto` counted on the fold's
        own training rows, not its validation rows (mtl/run/fit.py builds the fold's model)."""
        train_parts, _ = self.fold_parts()
        labels = {name: part.labels for name, part in train_parts.items()}
        return trained_class_weights(self.cfg.tasks, self.metas, labels)

    def folds_frame(self) -> pd.DataFrame:
        """The fold assignment as saved in the run folder: task, row (in its file), fold."""
        frames = [
            pd.DataFrame({"task": name, "row": self.data[name]["train"].rows, "fold": assignment})
            for name, assignment in self.folds.items()
        ]
        return pd.concat(frames, ignore_index=True)

    def fold_parts(self) -> tuple[dict[str, TaskData], dict[str, TaskData | None]]:
        """(training rows, validation rows) per task for the current fold."""
        if self.data is None:
            raise RuntimeError("call dm.setup() before asking for a fold's rows")
        return fold_split(self.data, self.folds, self.fold)

    def predict_parts(self) -> dict[str, dict[str, TaskData]]:
        """Per kind, by task, the rows the fold predicts into fold_<k>/<kind>_<task>.csv: `val`
        (its validation rows: out-of-fold), `valfile` (each task's val set) and `test`."""
        _, val_parts = self.fold_parts()
        return {
            "val": {n: p for n, p in val_parts.items() if p is not None},
            "valfile": val_sets(self.data, self.folds),
            "test": {n: s["test"] for n, s in self.data.items() if s.get("test") is not None},
        }

    def _shard(self) -> dict:
        trainer = self.trainer
        return {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer else {}

    def train_dataloader(self) -> DataLoader:
        train_parts, _ = self.fold_parts()
        return make_loader(
            self.cfg,
            train_parts,
            self.collator,
            train=True,
            batches_done=self._batches_done,
            **self._shard(),
        )

    def _batches_done(self) -> int:
        """The batches of this epoch the fit loop counts as done when a training pass starts: 0
        at an epoch's start; the restored count when a fit resumes mid-epoch (the offset
        Lightning's data fetcher adds for them)."""
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready if trainer else 0

    def val_dataloader(self) -> DataLoader:
        _, val_parts = self.fold_parts()
        shard = self._shard()
        world_size = shard.get("world_size", 1)
        small = {
            n: len(p) for n, p in val_parts.items() if p is not None and 0 < len(p) < world_size
        }
        # a rank without rows of a task would leave the metric sync (a collective) hanging
        if small:
            raise ConfigError(
                f"Validation rows {small} are fewer than the {world_size} processes: every rank needs "
                "rows of every task. Use fewer devices or more validation rows."
            )
        val_parts = limit_val_rows(self.cfg, val_parts, self.fold, world_size)
        return make_loader(self.cfg, val_parts, self.collator, train=False, **shard)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_parts()["test"])

    def predict_dataloader(self) -> list[DataLoader]:
        """One loader per kind of `predict_kinds()`, in that order."""
        return [self._eval_loader(parts) for parts in self._served_parts().values()]

    def predict_kinds(self) -> list[str]:
        return list(self._served_parts())

    def _served_parts(self) -> dict[str, dict[str, TaskData]]:
        """`predict_parts()` less empty kinds, and less a val set that is also the fold's
        validation rows (one split, nothing chosen): that one is served once, as `val`."""
        parts = self.predict_parts()
        out = {}
        for kind, by_task in parts.items():
            if kind != "val":
                by_task = {
                    n: p for n, p in by_task.items() if not same_rows(p, parts["val"].get(n))
                }
            if by_task:
                out[kind] = by_task
        return out

    def _eval_loader(self, parts: dict[str, TaskData]) -> DataLoader:
        return make_loader(self.cfg, parts, self.collator, train=False, **self._shard())
