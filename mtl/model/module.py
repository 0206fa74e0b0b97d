"""The LightningModule: one `model_step` shared by training and validation, logging per task.

TensorBoard tags: train/loss, train/<task>/loss, val/<task>/<metric>, val/score, sigma/<task>,
weight/<task>, and learning rates per parameter group (LearningRateMonitor); with
`gradient.log_every_n_steps`, grad/cos, grad/conflict and grad/norm (mtl/model/gradients.py).

Under `gradient.aggregator` the step is Jacobian descent (mtl/model/aggregation.py) through
Lightning's manual optimisation: `jacobian_step` accumulates, clips, steps the optimizer and our
LR schedule itself (the Trainer gets accumulate_grad_batches=1 and no clipping, mtl/run/fit.py).
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from box import Box
from lightning.pytorch.strategies import FSDPStrategy
from torchmetrics import MeanMetric

from mtl.backbone import encoder_record, load_encoder
from mtl.data.sampling import expected_rows_per_batch
from mtl.data.tasks import TaskMeta
from mtl.model.gradients import monitor_losses
from mtl.model.losses import TaskLoss, reduce_rows
from mtl.model.method_steps import MethodSteps
from mtl.model.metrics import TaskMetrics
from mtl.model.network import MultiTaskModel
from mtl.model.optim import build_optimizer, build_scheduler, fused_allowed
from mtl.model.weighting import build_weighting
from mtl.model.weighting.famo import rng_state


class MultiTaskModule(MethodSteps, L.LightningModule):
    """`config`: the resolved config as a dict; `tasks`: TaskMeta dicts; `backbone_config`: set when
    rebuilding from a checkpoint (the encoder is then created empty and filled from the state dict)."""

    def __init__(self, config: dict, tasks: dict[str, dict], backbone_config: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = Box(config, default_box=False)
        self.metas = {name: TaskMeta(**meta) for name, meta in tasks.items()}
        encoder = load_encoder(self.cfg.backbone, backbone_config)
        # the checkpoint carries the encoder's architecture and attention, so rebuilding needs
        # no download and asks for the attention it was trained with
        self.hparams.backbone_config = encoder_record(encoder)
        bb = self.cfg.backbone
        self.model = MultiTaskModel(
            encoder,
            {name: meta.num_outputs for name, meta in self.metas.items()},
            pooling=bb.pooling,
            dropout=bb.dropout,
            head=bb.head,
            head_hidden=bb.head_hidden,
        )
        self.weighting = build_weighting(self.cfg)
        self.losses = torch.nn.ModuleDict(
            {
                name: TaskLoss(meta, spec.loss, spec.gamma, spec.label_smoothing)
                for (name, meta), spec in zip(
                    self.metas.items(), self.cfg.tasks.values(), strict=True
                )
            }
        )
        self.val_metrics = torch.nn.ModuleDict(
            {name: TaskMetrics(meta) for name, meta in self.metas.items()}
        )
        self.task_names = list(self.metas)
        # each task's mean loss over an epoch's rows, synced across ranks by torchmetrics
        self.train_losses = torch.nn.ModuleDict({n: MeanMetric() for n in self.task_names})
        self.val_losses = torch.nn.ModuleDict({n: MeanMetric() for n in self.task_names})
        # set on_train_start under task_loss_norm: expected
        self.expected_rows: dict[str, float] = {}
        for (
            param
        ) in self.parameters():  # FSDP later reshapes them into flat shards (mtl/model/optim.py)
            param.mtl_ndim = param.dim()
        self.init_method_steps()  # FAMO, conflict monitoring, Jacobian descent

    def forward(self, input_ids, attention_mask, index=None):
        return self.model(input_ids, attention_mask, index)

    def setup(self, stage: str) -> None:
        if self.cfg.trainer.compile and stage == "fit":
            self.model.encoder = torch.compile(self.model.encoder)

    def on_train_start(self) -> None:
        # from the training loader itself, however it reached the Trainer (DataModule or not)
        self.set_expected_rows(getattr(self.trainer.train_dataloader, "dataset", None))
        self.start_method_steps()

    def set_expected_rows(self, dataset) -> None:
        """Each task's expected rows per batch of `dataset` (a MultiTaskDataset), for
        `weighting.task_loss_norm: expected`: a task's loss is then its summed row losses over
        this constant. Under length grouping a batch holds 0–32 rows of a task; a batch mean
        would weigh each of 2 rows 16× one of 32."""
        if self.cfg.weighting.task_loss_norm != "expected" or not hasattr(dataset, "task_sizes"):
            return
        sizes = dict(zip(dataset.task_names, dataset.task_sizes().tolist(), strict=True))
        s = self.cfg.sampling
        expected = expected_rows_per_batch(
            [sizes.get(n, 0) for n in self.task_names],
            s.mode,
            s.temperature,
            self.cfg.data.batch_size,
        )
        self.expected_rows = dict(zip(self.task_names, expected.tolist(), strict=True))

    # --- the shared step ------------------------------------------------------------------------

    def task_losses(
        self, logits: dict, batch: dict, stage: str, record: bool = True
    ) -> dict[str, torch.Tensor]:
        """Each task's loss for the step, by the one reduction path (mtl/model/losses.py): its
        per-row losses (class weights applied) summed over its expected rows per batch when
        training under `weighting.task_loss_norm: expected`, else their mean. The same rows feed
        the task's epoch loss, a mean over the epoch's rows (unless `record` is False)."""
        epoch_losses = self.train_losses if stage == "train" else self.val_losses
        out = {}
        for name in self.task_names:
            rows = self.losses[name](logits[name], batch["targets"][name])  # (n,)
            if rows.numel() and record:
                epoch_losses[name].update(rows.detach())
            expected = self.expected_rows.get(name) if stage == "train" else None
            out[name] = reduce_rows(rows, expected)
        return out

    def present(self, batch: dict) -> dict[str, bool]:
        return {name: batch["index"][name].numel() > 0 for name in self.task_names}

    def model_step(self, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch["index"])
        losses = self.task_losses(logits, batch, stage)
        return self.weighting(losses, self.present(batch)), logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.jacobian_descent is not None:
            return self.jacobian_step(batch, batch_idx)
        if self.weighting.needs_post_step_losses:  # FAMO: the batch and its dropout masks again
            self._rng, self._last_batch = rng_state(self.device), batch  # after the step
        logits = self(batch["input_ids"], batch["attention_mask"], batch["index"])
        losses = self.task_losses(logits, batch, "train")
        present = self.present(batch)
        total = self.weighting(losses, present)
        if self.monitor.due(self.global_step) and self.window_start(batch_idx):
            self.log_conflicts(monitor_losses(self.monitor, losses, present, self.shared))
        self.log_step(total, batch)
        return total

    def log_step(self, total: torch.Tensor, batch: dict, weights: dict | None = None) -> None:
        self.log("train/loss", total, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        weights = self.weighting.task_weights() if weights is None else weights
        logs = {f"weight/{k}": v for k, v in weights.items()}
        logs.update(self.weighting.extra_logs())
        self.log_dict(logs, on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.weighting.project()  # e.g. keep log-variances in range without killing gradients
        if self.weighting.needs_post_step_losses:  # within the step (the benchmark's clock too)
            batch, self._last_batch = self._last_batch, None
            self.weighting.post_step(self.recomputed_losses(batch), self.present(batch))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self.model_step(batch, "val")
        for name, meta in self.metas.items():
            if batch["index"][name].numel() == 0:
                continue
            self.val_metrics[name].update(meta.probabilities(logits[name]), batch["targets"][name])

    def predict_step(
        self, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each task's probabilities for its own rows: {task: (rows, (n, C) probs)}."""
        logits = self(batch["input_ids"], batch["attention_mask"], batch["index"])
        return {
            name: (
                batch["rows"][name].cpu().numpy(),
                meta.probabilities(logits[name]).cpu().numpy(),
            )
            for name, meta in self.metas.items()
            if batch["index"][name].numel() > 0
        }

    # --- resumable randomness: a resumed fold continues with the RNG state it stopped with ---

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mtl_grad_monitor"] = self.monitor.state_dict()
        checkpoint["mtl_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["mtl_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.monitor.load_state_dict(checkpoint.get("mtl_grad_monitor", {}))
        state = checkpoint.get("mtl_rng")
        if state:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    # --- epoch ends -----------------------------------------------------------------------------

    def _log_task_losses(self, stage: str, logger: bool | None = None) -> dict[str, torch.Tensor]:
        """Log each task's epoch loss (its MeanMetric: the mean over the epoch's rows on all ranks)
        and return them; tasks without rows are left out. compute() is a collective run on every
        rank, so every rank agrees which tasks had rows (the metric compute() that follows is one
        too: all ranks must make it, or none)."""
        means = {}
        for name, metric in (self.train_losses if stage == "train" else self.val_losses).items():
            value = metric.compute()
            if torch.isnan(value):  # no rows of this task on any rank this epoch
                metric.reset()
                continue
            means[name] = value
            # the Metric itself: Lightning logs its (cached) value and resets it after the epoch
            self.log(f"{stage}/{name}/loss", metric, logger=logger)
        return means

    def on_train_epoch_end(self) -> None:
        means = self._log_task_losses("train")
        if len(means) == len(self.task_names):
            self.weighting.on_epoch_end({name: float(v) for name, v in means.items()})

    def on_validation_epoch_end(self) -> None:
        # the final validate() of the chosen checkpoint is not a new epoch: its metrics reach
        # trainer.callback_metrics (read by mtl/run/fit.py) but stay out of the curves
        logger = None if self.trainer.state.fn == "fit" else False  # None: the loggers if any
        losses = self._log_task_losses("val", logger)
        metrics: dict = {}
        primaries = []
        for name, meta in self.metas.items():
            if name in losses:
                values = self.val_metrics[name].compute()
                metrics.update({f"val/{name}/{k}": v for k, v in values.items()})
                primaries.append(values[meta.primary_metric])
            self.val_metrics[name].reset()
        metrics["val/score"] = float(np.mean(primaries)) if primaries else 0.0
        metrics["val/loss"] = sum(losses.values(), torch.zeros((), device=self.device))
        self.log_dict(metrics, logger=logger)  # already synced across ranks: identical everywhere

    # --- optimisation ---------------------------------------------------------------------------

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning's FSDP precision plugin refuses clipping by norm (Lightning issue #19235): the
        # norm over all shards comes from the root FSDP module (a collective: every rank calls it)
        if (
            gradient_clip_val
            and (gradient_clip_algorithm or "norm") == "norm"
            and isinstance(self.trainer.strategy, FSDPStrategy)
        ):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        # Lightning refuses to clip a fused optimizer under any mixed precision, though only fp16's
        # GradScaler (which the fused step unscales itself) is in the way; bf16-mixed has no
        # scaler, so the gradients are clipped as they are (Lightning issue #21435). fp16 with
        # clipping gets foreach AdamW instead (optim.fused_allowed).
        if (
            gradient_clip_val
            and optimizer.defaults.get("fused")
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        ):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if (gradient_clip_algorithm or "norm") == "norm":
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer = build_optimizer(
            self.model, self.weighting, self.cfg.optim, fused_allowed(self.cfg.trainer)
        )
        steps = self.trainer.estimated_stepping_batches
        window = self.cfg.trainer.accumulate_grad_batches
        if not self.automatic_optimization and window > 1:  # we accumulate: fewer steps per epoch
            steps = self.trainer.max_epochs * math.ceil(self.trainer.num_training_batches / window)
        scheduler = build_scheduler(optimizer, self.cfg.optim, steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
