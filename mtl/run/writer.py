"""The callback that writes a fold's predictions: fold_<k>/<kind>_<task>.csv for blending.

`trainer.predict(module, datamodule=dm)` runs the DataModule's predict loaders (one per kind:
the fold's validation rows, the val sets, the test files); this writer collects each batch's
{task: (rows, probs)}, gathers every rank's shard under DDP, and global rank 0 writes the files.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mtl.data.datamodule import same_rows
from mtl.data.files import TaskData
from mtl.data.tasks import TaskMeta
from mtl.io import write_csv


class FoldPredictionWriter(BasePredictionWriter):
    def __init__(self, fold_dir: Path):
        super().__init__(write_interval="batch_and_epoch")
        self.fold_dir = fold_dir
        self.pieces: dict[int, dict[str, list]] = {}  # dataloader index → task → [(rows, probs)]

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pieces = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        by_task = self.pieces.setdefault(dataloader_idx, {})
        for name, piece in prediction.items():
            by_task.setdefault(name, []).append(piece)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # Lightning hands each rank its own shard only (BasePredictionWriter writes per rank)
        pieces = gather_predictions(trainer, self.pieces)
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        parts = dm.predict_parts()
        # predict loader i served kind predict_kinds()[i]
        predicted = {kind: pieces.get(i, {}) for i, kind in enumerate(dm.predict_kinds())}
        for kind, by_task in parts.items():
            for name, part in by_task.items():
                found = predicted.get(kind, {}).get(name)
                # a val set that is the fold's validation rows was predicted once, as `val`
                if not found and kind != "val" and same_rows(part, parts["val"].get(name)):
                    found = predicted.get("val", {}).get(name)
                if found:
                    frame = prediction_frame(dm.metas[name], part, found)
                    write_csv(self.fold_dir / f"{kind}_{name}.csv", frame)


def gather_predictions(trainer: L.Trainer, pieces: dict) -> dict[int, dict[str, list]]:
    """Every rank's (rows, probs) pieces on every rank; the evaluation sampler gives each rank a
    disjoint shard, so together they hold each row exactly once. A no-op on one device."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return pieces
    shards: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(shards, pieces)
    merged: dict[int, dict[str, list]] = {}
    for shard in shards:
        for index, by_task in shard.items():
            for name, found in by_task.items():
                merged.setdefault(index, {}).setdefault(name, []).extend(found)
    return merged


def prediction_frame(
    meta: TaskMeta, part: TaskData, pieces: list[tuple[np.ndarray, np.ndarray]]
) -> pd.DataFrame:
    """(rows, probs) chunks → row, text, true label column(s) if known, <task>_<class> probabilities."""
    rows = np.concatenate([r for r, _ in pieces])
    probs = np.concatenate([p for _, p in pieces])
    order = np.argsort(rows, kind="stable")
    rows, probs = rows[order], probs[order]
    position = pd.Index(part.rows).get_indexer(rows)
    frame = pd.DataFrame({"row": rows, "text": [part.texts[i] for i in position]})
    if part.labels is not None:
        truth = part.labels[position]
        frame[meta.truth_columns()] = truth.reshape(len(rows), -1).astype(np.int64)
    frame[meta.prob_columns()] = probs
    return frame
