"""Train one fold: Trainer, callbacks and loggers, resume from `last.ckpt`, write the fold's outputs.

A fold folder is finished when `metrics.json` exists (written last, atomically); re-running skips
it. An interrupted fold resumes from its `last.ckpt`, written atomically at every epoch end, or
from a newer `hpc_ckpt_<n>.ckpt` that Lightning's SLURM auto-requeue saved before a time limit.

The fold itself is plain Lightning: `trainer.fit(module, datamodule=dm)`, then `trainer.validate`
and `trainer.predict` with the chosen checkpoint; the FoldPredictionWriter callback (mtl/run/writer.py)
gathers the predictions from every rank and writes fold_<k>/<kind>_<task>.csv.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import lightning as L
import numpy as np
from box import Box
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from mtl.backbone import backbone_path
from mtl.config import to_dict
from mtl.data.datamodule import MultiTaskDataModule
from mtl.errors import CheckpointError, MTLError
from mtl.inference.checkpoint import load_checkpoint
from mtl.io import read_json_object, write_json
from mtl.model.metrics import monitor_key
from mtl.model.module import MultiTaskModule
from mtl.run.guards import AtomicCheckpointIO, LastCheckpoint, StopOnNonFinite
from mtl.run.writer import FoldPredictionWriter

log = logging.getLogger(__name__)


def _csv_version(run_dir: Path, fold: int) -> str:
    earlier = len(list((run_dir / "csv").glob(f"fold_{fold}*/metrics.csv")))
    return f"fold_{fold}" if earlier == 0 else f"fold_{fold}-resumed{earlier}"


class EncoderFSDP(FSDPStrategy):
    """FSDP whose full checkpoints are vetted by mtl's safe loader before Lightning opens them."""

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        # Lightning's FSDP opens a full checkpoint with its own (unrestricted) unpickler, not the
        # CheckpointIO: the safe loader vets the file first, so that unpickler meets only tensors
        # and plain containers.
        if Path(checkpoint_path).is_file():
            load_checkpoint(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only=True)


def encoder_blocks(backbone: str) -> set[type]:
    """The classes the backbone's Hugging Face model lists in `_no_split_modules` (its transformer
    blocks): FSDP shards one unit per block, so only one block's full weights exist at a time."""
    from transformers import MODEL_MAPPING, AutoConfig

    try:
        model_class = MODEL_MAPPING[type(AutoConfig.from_pretrained(backbone_path(backbone)))]
    except (OSError, ValueError, KeyError):
        return set()
    source = sys.modules[model_class.__module__]
    names = getattr(model_class, "_no_split_modules", None) or ()
    return {getattr(source, n) for n in names if isinstance(getattr(source, n, None), type)}


def make_strategy(cfg: Box):
    """`ddp` with unused-parameter detection: the encoder's pooler is unused under `cls` / `mean`
    pooling, and a task's head gets no gradient on a rank whose batch has none of its rows.
    `fsdp`: sharded per encoder block (Lightning's default keeps parameters unflattened,
    `use_orig_params=True`, so our parameter groups work)."""
    strategy = cfg.trainer.strategy
    if strategy == "ddp":
        return DDPStrategy(find_unused_parameters=True)
    if strategy == "fsdp":
        blocks = encoder_blocks(cfg.backbone.name)
        return EncoderFSDP(auto_wrap_policy=blocks) if blocks else EncoderFSDP()
    return strategy


def make_trainer(
    cfg: Box, fold_dir: Path, run_dir: Path, fold: int, callbacks: list | None = None
) -> L.Trainer:
    """The fold's Trainer; its FoldPredictionWriter writes what `trainer.predict` returns."""
    trainer = _trainer(cfg, fold_dir, run_dir, fold, callbacks, make_strategy(cfg))
    if cfg.trainer.strategy == "auto" and type(trainer.strategy) is DDPStrategy:
        # "auto" chose DDP (several devices): the same, with unused-parameter detection
        strategy = "ddp_find_unused_parameters_true"
        trainer = _trainer(cfg, fold_dir, run_dir, fold, callbacks, strategy)
    return trainer


def _trainer(cfg, fold_dir, run_dir, fold, callbacks, strategy) -> L.Trainer:
    monitor, mode = monitor_key(cfg), cfg.monitor.mode
    chooses = cfg.cv.selection == "best"  # "last": no monitor, best.ckpt is the latest epoch
    t = cfg.trainer
    checkpoint = ModelCheckpoint(
        dirpath=fold_dir,
        filename="best",
        monitor=monitor if chooses else None,
        mode=mode,
        enable_version_counter=False,
    )
    callbacks = [
        checkpoint,  # first: the Trainer's checkpoint_callback, whose best_model_path fit_fold reads
        LastCheckpoint(fold_dir),
        *(
            [LastCheckpoint(fold_dir, t.checkpoint_every_minutes)]
            if t.checkpoint_every_minutes
            else []
        ),
        StopOnNonFinite(cfg, fold, run_dir),
        LearningRateMonitor(logging_interval="step"),
        FoldPredictionWriter(fold_dir),
        *(callbacks or []),
    ]
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
    # trainer.limit_val_batches is applied by the DataModule (a random share of the rows, not the
    # shortest ones the length-sorted batches start with)
    limit = t.limit_train_batches
    optional = {"limit_train_batches": limit} if limit is not None else {}
    # gradient.aggregator: manual optimisation, where MultiTaskModule accumulates and clips itself
    # (Lightning refuses both Trainer arguments then)
    manual = cfg.gradient.aggregator != "none"
    return L.Trainer(
        default_root_dir=fold_dir,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=1 if manual else t.accumulate_grad_batches,
        gradient_clip_val=None if manual else t.gradient_clip_val,
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


def fold_seed(seed: int, fold: int) -> int:
    """Fold `fold`'s training seed (initial weights of the heads, dropout, ...), drawn from
    (seed, fold) by numpy's SeedSequence: `seed + fold` made fold 1 at seed 42 start exactly like
    fold 0 at seed 43, so runs at neighbouring seeds shared folds' starts (issue 22 item 7)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def fit_fold(
    cfg: Box, fold: int, run_dir: Path, dm: MultiTaskDataModule, callbacks: list | None = None
) -> dict:
    """Train (or resume, or skip) fold `fold` of `dm`; returns its metrics.json content."""
    fold_dir = run_dir / f"fold_{fold}"
    done = fold_dir / "metrics.json"
    if done.is_file():
        log.info("fold %d already finished: %s", fold, done)
        return finished_metrics(done, fold)
    L.seed_everything(fold_seed(cfg.seed, fold), workers=True, verbose=False)
    dm.set_fold(fold)
    train_parts, _ = dm.fold_parts()
    log.info("fold %d: training on %s rows", fold, {n: len(p) for n, p in train_parts.items()})
    module = MultiTaskModule(
        to_dict(cfg), {name: meta.to_dict() for name, meta in dm.fold_metas().items()}
    )
    trainer = make_trainer(cfg, fold_dir, run_dir, fold, callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from(trainer, fold_dir, fold))
    # an explicit path: with none, Lightning under SLURM would load a leftover hpc_ckpt_<n>
    best = trainer.checkpoint_callback.best_model_path or str(fold_dir / "last.ckpt")
    trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if dm.predict_kinds():  # the FoldPredictionWriter writes fold_<k>/<kind>_<task>.csv
        trainer.predict(module, datamodule=dm, ckpt_path=best, return_predictions=False)
    result = {
        "fold": fold,
        "best_checkpoint": Path(best).name,
        "best_epoch": int(load_checkpoint(best)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "metrics": metrics,
    }
    if trainer.is_global_zero:
        write_json(done, result)  # last: its presence marks the fold finished
        for stale in hpc_checkpoints(fold_dir):  # a finished fold is never resumed
            stale.unlink(missing_ok=True)
    return result


def resume_from(trainer: L.Trainer, fold_dir: Path, fold: int) -> str | None:
    """The checkpoint an interrupted fold continues from, opened (and checked) once by the safe
    loader and handed to the Trainer's CheckpointIO; None for a fresh fold."""
    resume = resume_checkpoint(fold_dir)
    if resume is None:
        return None
    log.info("fold %d: resuming from %s", fold, resume)
    checkpoint = open_resume_checkpoint(resume, fold)
    checkpoint_io = trainer.strategy.checkpoint_io
    # FSDP loads full checkpoints itself, after a safe check (EncoderFSDP)
    if isinstance(checkpoint_io, AtomicCheckpointIO) and not isinstance(
        trainer.strategy, FSDPStrategy
    ):
        checkpoint_io.preload(resume, checkpoint)
    return str(resume)


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
