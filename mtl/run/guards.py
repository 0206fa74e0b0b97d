"""What keeps a fold's files right: checkpoints staged beside their target, `last.ckpt` at every
epoch end, and a stop (not a finished-looking fold) when training turns non-finite.

Used by mtl/run/fit.py, which builds the fold's Trainer with them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from box import Box
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtl.errors import MTLError
from mtl.inference.checkpoint import load_checkpoint
from mtl.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a checkpoint write leaves the previous checkpoint intact; every checkpoint
    Lightning opens (resume, `validate` / `predict` with the best weights) goes through mtl's safe
    loader (`weights_only=True` explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off).

    A checkpoint is written to a pid-named temp file beside its target (mtl.io.atomic_write, whose
    leftovers `remove_orphaned_tmp` clears), not through Lightning's own atomic save: that one
    stages the file in the system temp dir (an fsspec transaction), where a killed run left a file
    as large as the checkpoint that nothing removed. No room to write is a one-paragraph error.

    `preload` hands over a checkpoint mtl has already opened (and checked) with that loader, so a
    resume reads the file once."""

    def __init__(self):
        super().__init__()
        self._preloaded: dict[str, dict] = {}

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("mtl's checkpoints take no storage_options")

        def write(tmp: str) -> None:
            # through a file object: a failed write then keeps its OSError (errno) as context
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)

        atomic_write(path, write, then="an interrupted fold resumes from its last checkpoint.")

    def preload(self, path: str | Path, checkpoint: dict) -> None:
        self._preloaded[str(Path(path).resolve())] = checkpoint

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        checkpoint = self._preloaded.pop(str(Path(path).resolve()), None)
        return checkpoint if checkpoint is not None else load_checkpoint(path)


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` at every epoch end, whatever the score. ModelCheckpoint(save_last=True) writes
    it only in an epoch whose top-k checkpoint it saved (Lightning 2.6), so with a monitor a killed
    fold resumed from its last improvement and repeated the epochs since.

    A class of its own because Lightning keys a callback's saved state by class and arguments, and
    with `cv.selection: last` the `best` checkpoint has no monitor either.

    `every_minutes` > 0: instead of at epoch ends, the same file every so many minutes of training
    (ModelCheckpoint's `train_time_interval`, checked after each batch and agreed across DDP
    ranks), so a killed epoch resumes mid-way (mtl/run/fit.py: resume_checkpoint). A second
    instance beside the epoch-end one; their state keys differ by the interval."""

    def __init__(self, dirpath: Path, every_minutes: float = 0.0):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            train_time_interval=timedelta(minutes=every_minutes) if every_minutes else None,
        )


class TrainingDiverged(MTLError):
    """The loss or the weights of a fold are no longer finite."""


class StopOnNonFinite(L.Callback):
    """Stops a fold whose training loss (every step) or weights (before each validation and at each
    epoch end, so before any checkpoint of that epoch) are no longer finite, with an error that
    names the fold, epoch and step. The fold then writes no metrics.json or predictions: it does
    not count as finished, and nothing NaN is blended or served.

    Lightning's `EarlyStopping(check_finite=True)` only looks at the monitored metric, and stops
    "successfully": a model that trained to NaN scored 0.0 and its fold looked finished."""

    def __init__(self, cfg: Box, fold: int, run_dir: Path):
        self.cfg, self.fold, self.run_dir = cfg, fold, run_dir

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        # every rank decides together: a rank that stopped alone would leave the others waiting
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            value = "non-finite on another process" if finite else loss.item()
            where = f"in batch {batch_idx} of epoch {trainer.current_epoch}"
            raise TrainingDiverged(self.message(trainer, f"training loss became {value}", where))

    def on_validation_start(self, trainer, module) -> None:
        if trainer.state.fn == "fit":
            self.check_weights(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        self.check_weights(trainer, module)

    def check_weights(self, trainer, module) -> None:
        # one flag per tensor, one host sync; under FSDP a rank may hold empty shards
        flags = [torch.isfinite(p.detach()).all() for p in module.parameters() if p.numel()]
        finite = bool(torch.stack(flags).all()) if flags else True
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            where = f"after epoch {trainer.current_epoch}'s last batch"
            raise TrainingDiverged(self.message(trainer, "weights are no longer finite", where))

    def message(self, trainer, what: str, where: str) -> str:
        o, t = self.cfg.optim, self.cfg.trainer
        return (
            f"Fold {self.fold} stopped: its {what} {where} (optimizer step "
            f"{trainer.global_step}). The model diverged, so the fold writes no metrics.json or "
            f"predictions and does not count as finished. Likely causes: a learning rate too high "
            f"(optim.lr_backbone={o.lr_backbone}, optim.lr_heads={o.lr_heads}), fp16 overflow "
            f"(trainer.precision={t.precision}; bf16-mixed or 32-true avoid it), or extreme "
            f"values in the data. Retrain with the fix under a new run.name (or delete "
            f"{self.run_dir}): a run folder keeps the settings its folds were trained with."
        )
