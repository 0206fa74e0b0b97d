"""DataLoaders for one fold: multi-task batch sampler, dynamic padding, rank-aware sharding."""

from __future__ import annotations

import lightning as L
import torch
from box import Box
from torch.utils.data import DataLoader

from mtl.data import TaskData
from mtl.errors import ConfigError
from mtl.sampling import Collator, MultiTaskBatchSampler, MultiTaskDataset
from mtl.tasks import TaskMeta


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
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


class MultiTaskDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: Box,
        metas: dict[str, TaskMeta],
        pad_id: int,
        train_parts: dict[str, TaskData],
        val_parts: dict[str, TaskData | None],
    ):
        super().__init__()
        self.cfg = cfg
        self.collator = make_collator(cfg, metas, pad_id)
        self.train_parts = train_parts
        self.val_parts = val_parts

    def _shard(self) -> dict:
        trainer = self.trainer
        return {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer else {}

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.cfg, self.train_parts, self.collator, train=True, **self._shard())

    def val_dataloader(self) -> DataLoader:
        shard = self._shard()
        world_size = shard.get("world_size", 1)
        small = {
            n: len(p)
            for n, p in self.val_parts.items()
            if p is not None and 0 < len(p) < world_size
        }
        # a rank without rows of a task would leave the metric sync (a collective) hanging
        if small:
            raise ConfigError(
                f"Validation rows {small} are fewer than the {world_size} processes: every rank needs "
                "rows of every task. Use fewer devices or more validation rows."
            )
        return make_loader(self.cfg, self.val_parts, self.collator, train=False, **shard)
