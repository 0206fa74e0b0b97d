"""Train one fold: Trainer, callbacks and loggers, resume from `last.ckpt`, write the fold's outputs.

A fold folder is finished when `metrics.json` exists (written last, atomically); re-running skips
it. An interrupted fold resumes from its `last.ckpt`, written atomically at every epoch end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from box import Box
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtl.config import to_dict
from mtl.data import TaskData
from mtl.datamodule import MultiTaskDataModule, make_loader
from mtl.io import atomic_write, write_csv, write_json
from mtl.module import MultiTaskModule
from mtl.tasks import TaskMeta

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a checkpoint write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(
            path,
            lambda tmp: TorchCheckpointIO.save_checkpoint(self, checkpoint, tmp, storage_options),
        )


def monitor_key(cfg: Box) -> tuple[str, str]:
    metric = cfg.monitor.metric
    return ("val/score" if metric == "score" else f"val/{metric}"), cfg.monitor.mode


def _csv_version(run_dir: Path, fold: int) -> str:
    earlier = len(list((run_dir / "csv").glob(f"fold_{fold}*/metrics.csv")))
    return f"fold_{fold}" if earlier == 0 else f"fold_{fold}-resumed{earlier}"


def make_trainer(
    cfg: Box, fold_dir: Path, run_dir: Path, fold: int, callbacks: list | None = None
) -> L.Trainer:
    monitor, mode = monitor_key(cfg)
    t = cfg.trainer
    checkpoint = ModelCheckpoint(
        dirpath=fold_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step")] + list(callbacks or [])
    if cfg.early_stopping.enabled:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=cfg.early_stopping.patience,
                min_delta=cfg.early_stopping.min_delta,
            )
        )
    loggers = [
        TensorBoardLogger(
            run_dir, name="tensorboard", version=f"fold_{fold}", default_hp_metric=False
        ),
        # a resumed fold logs to a new CSV version (Lightning would overwrite the old one)
        CSVLogger(run_dir, name="csv", version=_csv_version(run_dir, fold)),
    ]
    optional = {k: t[k] for k in ("limit_train_batches", "limit_val_batches") if t[k] is not None}
    return L.Trainer(
        default_root_dir=fold_dir,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,  # our batch sampler shards by rank itself
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=fold == 0,
        num_sanity_val_steps=0,
        **optional,
    )


def fit_fold(
    cfg: Box,
    fold: int,
    run_dir: Path,
    metas: dict[str, TaskMeta],
    pad_id: int,
    train_parts: dict[str, TaskData],
    val_parts: dict[str, TaskData | None],
    predict_parts: dict[str, dict[str, TaskData]] | None = None,
    extra_callbacks: list | None = None,
) -> dict:
    """Train (or resume, or skip) fold `fold`; returns its metrics.json content.

    `predict_parts` ({"test": {task: TaskData}, ...}) are predicted with the best weights and
    written as fold_<k>/<kind>_<task>.csv for blending.
    """
    fold_dir = run_dir / f"fold_{fold}"
    done = fold_dir / "metrics.json"
    if done.is_file():
        log.info("fold %d already finished: %s", fold, done)
        return json.loads(done.read_text())
    L.seed_everything(cfg.seed + fold, workers=True, verbose=False)
    module = MultiTaskModule(to_dict(cfg), {name: meta.to_dict() for name, meta in metas.items()})
    datamodule = MultiTaskDataModule(cfg, metas, pad_id, train_parts, val_parts)
    trainer = make_trainer(cfg, fold_dir, run_dir, fold, extra_callbacks)
    last = fold_dir / "last.ckpt"
    if last.is_file():
        log.info("fold %d: resuming from %s", fold, last)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)

    best = trainer.checkpoint_callback.best_model_path or str(last)
    trainer.validate(
        module, datamodule=datamodule, ckpt_path=best, verbose=False
    )  # loads best weights
    outputs = {"val": (val_parts, module.val_predictions)}
    for kind, parts in (predict_parts or {}).items():
        if not parts:
            continue
        loader = make_loader(cfg, parts, datamodule.collator, train=False)
        outputs[kind] = (parts, merge_predictions(trainer.predict(module, dataloaders=loader)))
    metrics = {
        "fold": fold,
        "best_checkpoint": Path(best).name,
        "best_epoch": int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "metrics": {k: float(v) for k, v in module.last_val_metrics.items()},
    }
    if trainer.is_global_zero:
        for kind, (parts, predictions) in outputs.items():
            for name, pieces in predictions.items():
                frame = prediction_frame(metas[name], parts[name], pieces)
                write_csv(fold_dir / f"{kind}_{name}.csv", frame)
        write_json(done, metrics)  # last: its presence marks the fold finished
    return metrics


def merge_predictions(batches: list[dict]) -> dict[str, list]:
    merged: dict[str, list] = {}
    for batch in batches or []:
        for name, piece in batch.items():
            merged.setdefault(name, []).append(piece)
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
