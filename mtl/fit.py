"""Train one fold: Trainer, callbacks and loggers, resume from `last.ckpt`, write the fold's outputs.

A fold folder is finished when `metrics.json` exists (written last, atomically); re-running skips
it. An interrupted fold resumes from its `last.ckpt`, written atomically at every epoch end, or
from a newer `hpc_ckpt_<n>.ckpt` that Lightning's SLURM auto-requeue saved before a time limit.

Under DDP / FSDP every rank runs this; validation and prediction rows are sharded across ranks, so
the fold's predictions are gathered from all ranks before global rank 0 writes the fold's files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from box import Box
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from mtl.checkpoint import load_checkpoint
from mtl.config import to_dict
from mtl.data import TaskData
from mtl.datamodule import MultiTaskDataModule, make_loader
from mtl.errors import CheckpointError, MTLError
from mtl.io import atomic_write, read_json_object, write_csv, write_json
from mtl.module import MultiTaskModule
from mtl.tasks import TaskMeta

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a checkpoint write leaves the previous checkpoint intact; every checkpoint
    Lightning opens (resume, `validate` / `predict` with the best weights) goes through mtl's safe
    loader (`weights_only=True` explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off).

    `preload` hands over a checkpoint mtl has already opened (and checked) with that loader, so a
    resume reads the file once."""

    def __init__(self):
        super().__init__()
        self._preloaded: dict[str, dict] = {}

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(
            path,
            lambda tmp: TorchCheckpointIO.save_checkpoint(self, checkpoint, tmp, storage_options),
        )

    def preload(self, path: str | Path, checkpoint: dict) -> None:
        self._preloaded[str(Path(path).resolve())] = checkpoint

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        checkpoint = self._preloaded.pop(str(Path(path).resolve()), None)
        return checkpoint if checkpoint is not None else load_checkpoint(path)


def monitor_key(cfg: Box) -> tuple[str, str]:
    metric = cfg.monitor.metric
    return ("val/score" if metric == "score" else f"val/{metric}"), cfg.monitor.mode


def _csv_version(run_dir: Path, fold: int) -> str:
    earlier = len(list((run_dir / "csv").glob(f"fold_{fold}*/metrics.csv")))
    return f"fold_{fold}" if earlier == 0 else f"fold_{fold}-resumed{earlier}"


class EncoderFSDP(FSDPStrategy):
    """FSDP with one sharded unit per transformer block of the encoder (the classes its Hugging Face
    model lists in `_no_split_modules`), so only one block's full weights exist at a time."""

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        # Lightning's FSDP opens a full checkpoint with its own (unrestricted) unpickler, not the
        # CheckpointIO: the safe loader vets the file first, so that unpickler meets only tensors
        # and plain containers.
        if Path(checkpoint_path).is_file():
            load_checkpoint(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only=True)

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if not wrapped and "auto_wrap_policy" not in self.kwargs:
            names = set(getattr(model.model.encoder, "_no_split_modules", None) or ())
            blocks = {type(m) for m in model.model.encoder.modules() if type(m).__name__ in names}
            if blocks:
                self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        return super()._setup_model(model)


def make_strategy(strategy):
    """`ddp` with unused-parameter detection: the encoder's pooler is unused under `cls` / `mean`
    pooling, and a task's head gets no gradient on a rank whose batch has none of its rows.
    `fsdp`: sharded per encoder block (Lightning's default keeps parameters unflattened,
    `use_orig_params=True`, so our parameter groups work)."""
    if strategy == "ddp":
        return DDPStrategy(find_unused_parameters=True)
    if strategy == "fsdp":
        return EncoderFSDP()
    return strategy


def make_trainer(
    cfg: Box, fold_dir: Path, run_dir: Path, fold: int, callbacks: list | None = None
) -> L.Trainer:
    monitor, mode = monitor_key(cfg)
    chooses = cfg.cv.selection == "best"  # "last": no monitor, best.ckpt is the latest epoch
    t = cfg.trainer
    checkpoint = ModelCheckpoint(
        dirpath=fold_dir,
        filename="best",
        monitor=monitor if chooses else None,
        mode=mode,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step")] + list(callbacks or [])
    if cfg.early_stopping.enabled and chooses:
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
    trainer = L.Trainer(
        default_root_dir=fold_dir,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=make_strategy(t.strategy),
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
    if t.strategy == "auto" and type(trainer.strategy) is DDPStrategy:  # "auto" on several devices
        trainer.strategy._ddp_kwargs.setdefault("find_unused_parameters", True)
    return trainer


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
        return finished_metrics(done, fold)
    L.seed_everything(cfg.seed + fold, workers=True, verbose=False)
    module = MultiTaskModule(to_dict(cfg), {name: meta.to_dict() for name, meta in metas.items()})
    datamodule = MultiTaskDataModule(cfg, metas, pad_id, train_parts, val_parts)
    trainer = make_trainer(cfg, fold_dir, run_dir, fold, extra_callbacks)
    last = fold_dir / "last.ckpt"
    resume = resume_checkpoint(fold_dir)
    if resume is not None:
        log.info("fold %d: resuming from %s", fold, resume)
        checkpoint = open_resume_checkpoint(resume, fold)
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, AtomicCheckpointIO) and not isinstance(
            trainer.strategy,
            FSDPStrategy,  # loads full checkpoints itself, after a safe check
        ):
            checkpoint_io.preload(resume, checkpoint)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)

    best = trainer.checkpoint_callback.best_model_path or str(last)
    # with cv.selection=last the weights in memory are the checkpoint's, and the last epoch's
    # validation (run in this process) already holds their metrics and predictions
    if cfg.cv.selection != "last" or not module.last_val_metrics:
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    val_predictions = gather_predictions(trainer, module.val_predictions)
    outputs = {"val": (val_parts, val_predictions)}
    shard = {"rank": trainer.global_rank, "world_size": trainer.world_size}
    for kind, parts in (predict_parts or {}).items():
        # a val set that also validated (one split, nothing chosen) is not predicted twice
        todo = {n: p for n, p in parts.items() if not same_rows(p, val_parts.get(n))}
        ready = {n: val_predictions[n] for n in parts if n not in todo and n in val_predictions}
        if todo:
            loader = make_loader(cfg, todo, datamodule.collator, train=False, **shard)
            # an explicit path: with none, Lightning under SLURM would load a leftover hpc_ckpt_<n>
            predicted = merge_predictions(
                trainer.predict(module, dataloaders=loader, ckpt_path=best)
            )
            ready.update(gather_predictions(trainer, predicted))
        if ready:
            outputs[kind] = (parts, ready)
    metrics = {
        "fold": fold,
        "best_checkpoint": Path(best).name,
        "best_epoch": int(load_checkpoint(best)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "metrics": {k: float(v) for k, v in module.last_val_metrics.items()},
    }
    if trainer.is_global_zero:
        for kind, (parts, predictions) in outputs.items():
            for name, pieces in predictions.items():
                frame = prediction_frame(metas[name], parts[name], pieces)
                write_csv(fold_dir / f"{kind}_{name}.csv", frame)
        write_json(done, metrics)  # last: its presence marks the fold finished
        for stale in hpc_checkpoints(fold_dir):  # a finished fold is never resumed
            stale.unlink(missing_ok=True)
    return metrics


def same_rows(a: TaskData | None, b: TaskData | None) -> bool:
    return a is b or (
        a is not None
        and b is not None
        and (a.path, a.split) == (b.path, b.split)
        and np.array_equal(a.rows, b.rows)
    )


def hpc_checkpoints(fold_dir: Path) -> list[Path]:
    """`hpc_ckpt_<n>.ckpt`: saved by Lightning's SLURM auto-requeue (SIGUSR1) into the Trainer's
    default_root_dir, which is the fold folder; newest (highest n) last."""
    found = [
        (int(m.group(1)), p)
        for p in fold_dir.glob("hpc_ckpt_*.ckpt")
        if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
    ]
    return [p for _, p in sorted(found)]


def resume_checkpoint(fold_dir: Path) -> Path | None:
    """The checkpoint an interrupted fold continues from: `last.ckpt` (every epoch end) or, if it
    got further, the newest SLURM requeue checkpoint (saved mid-epoch just before a time limit).

    Lightning only picks `hpc_ckpt_*` by itself when no ckpt_path is given, so we choose here."""
    candidates = [
        p for p in [fold_dir / "last.ckpt", *hpc_checkpoints(fold_dir)[-1:]] if p.is_file()
    ]
    if len(candidates) < 2:
        return candidates[0] if candidates else None

    def progress(path: Path) -> int:
        try:
            state = load_checkpoint(path, mtl_only=False, mmap=True)
        except MTLError:  # unreadable or unsafe: never preferred
            return -1
        return int(state.get("global_step", -1)) if isinstance(state, dict) else -1

    last, hpc = candidates
    return hpc if progress(hpc) > progress(last) else last


def finished_metrics(done: Path, fold: int) -> dict:
    """A finished fold's metrics.json; an empty or damaged one (it is written atomically, so
    something else broke it) is an error naming the fix, not a traceback."""
    metrics, problem = read_json_object(done, "metrics")
    if metrics is not None:
        return metrics
    raise MTLError(
        f"{done} marks fold {fold} as finished but cannot be read ({problem}). Delete the folder "
        f"{done.parent} and run the same command again to retrain fold {fold}; the other folds "
        f"are kept."
    )


def open_resume_checkpoint(path: Path, fold: int) -> dict:
    """The checkpoint an interrupted fold resumes from, opened with the safe loader."""
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(
            f"Cannot resume fold {fold}: {err} To restart fold {fold} from its first epoch, "
            f"delete {path} (and any other *.ckpt in {path.parent}) and run the same command again."
        ) from None


def gather_predictions(trainer: L.Trainer, predictions: dict[str, list]) -> dict[str, list]:
    """Every rank's (rows, probs) pieces on every rank; the evaluation sampler gives each rank a
    disjoint shard, so together they hold each row exactly once. A no-op on one device."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return predictions
    shards: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(shards, predictions)
    merged: dict[str, list] = {}
    for shard in shards:
        for name, pieces in shard.items():
            merged.setdefault(name, []).extend(pieces)
    return merged


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
