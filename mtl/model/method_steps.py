"""The step-level machinery of the multi-task methods, mixed into MultiTaskModule
(mtl/model/module.py), which owns the losses and the ordinary training step:

- FAMO's recompute of the step's losses after the optimizer step (`recomputed_losses`);
- gradient-conflict metrics straight to the loggers (`log_conflicts`, mtl/model/gradients.py);
- Jacobian descent under `gradient.aggregator` (mtl/model/aggregation.py) through Lightning's
  manual optimisation: `jacobian_step` runs the forward, hands the task losses to
  `manual_backward` (whose `backward` here calls torchjd's mtl_backward, so Lightning's precision
  plugin and backward hooks still run), and at the end of each accumulation window aggregates,
  clips, steps the optimizer and our LR schedule. The Trainer gets accumulate_grad_batches=1 and
  no gradient_clip_val then (Lightning refuses both under manual optimisation; mtl/run/fit.py).
"""

from __future__ import annotations

import contextlib

import torch

from mtl.model.aggregation import JacobianDescent
from mtl.model.gradients import ConflictMonitor, gramians, group_slices, shared_parameters
from mtl.model.weighting.famo import replayed_rng


class MethodSteps:
    """Mixin for MultiTaskModule: expects its model, losses, weighting, monitor, shared,
    jacobian_descent, task_names, cfg and the LightningModule API."""

    def init_method_steps(self) -> None:
        gradient = self.cfg.gradient
        self.monitor = ConflictMonitor(self.task_names, gradient.log_every_n_steps)
        self.jacobian_descent = (
            JacobianDescent(
                gradient.aggregator,
                self.task_names,
                self.cfg.seed,
                sequential=self.cfg.backbone.gradient_checkpointing,
            )
            if gradient.aggregator != "none"
            else None
        )
        self.automatic_optimization = self.jacobian_descent is None
        self._rng: dict | None = None  # the training forward's RNG state (FAMO's recompute)
        self._last_batch: dict | None = None  # the step's last micro-batch (FAMO's recompute)
        self._jd_inputs: tuple | None = None  # manual_backward → backward hand-over
        self._no_sync = contextlib.ExitStack()

    def start_method_steps(self) -> None:
        """At the start of training (after setup's torch.compile, so the names are final)."""
        self.shared = shared_parameters(self.model.encoder)
        if self.jacobian_descent is not None and hasattr(
            self.trainer.strategy, "block_backward_sync"
        ):
            # DDP must not reduce gradients itself: aggregation.py averages each task's gradient
            self._no_sync.enter_context(self.trainer.strategy.block_backward_sync())

    def on_train_end(self) -> None:
        self._no_sync.close()

    def window_start(self, batch_idx: int) -> bool:
        """The first micro-batch of an accumulation window (each optimizer step has one)."""
        return batch_idx % self.cfg.trainer.accumulate_grad_batches == 0

    def log_conflicts(self, metrics: dict[str, float]) -> None:
        """Straight to the loggers at this step (self.log would keep them only on the Trainer's
        log_every_n_steps cadence); the loggers write on rank 0 only."""
        if metrics:
            for logger in self.loggers:
                logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=self.global_step)

    @torch.no_grad()
    def recomputed_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The step's task losses on its last micro-batch after the optimizer step, with the dropout
        masks of its training forward (FAMO's δ then measures the step, not dropout noise)."""
        with replayed_rng(self._rng), self.trainer.precision_plugin.train_step_context():
            logits = self(batch["input_ids"], batch["attention_mask"], batch["index"])
            return self.task_losses(logits, batch, "train", record=False)

    def jacobian_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pooled = self.model.encode(batch["input_ids"], batch["attention_mask"])  # (B, H)
        logits = self.model.classify(pooled, batch["index"])
        losses = self.task_losses(logits, batch, "train")
        present = self.present(batch)
        total = self.weighting(losses, present)  # equal / fixed: the logged value
        self._jd_inputs = ([losses[n] for n in self.task_names], list(present.values()), pooled)
        self.manual_backward(total)  # → backward(): torchjd's mtl_backward
        window = self.cfg.trainer.accumulate_grad_batches
        if (batch_idx + 1) % window == 0 or self.trainer.is_last_batch:
            self.jacobian_optimizer_step(window)
        self.log_step(total, batch, self.jacobian_descent.last_weights)
        return total.detach()

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self._jd_inputs is None:
            return super().backward(loss, *args, **kwargs)
        losses, present, pooled = self._jd_inputs
        self._jd_inputs = None
        heads = [self.model.heads[n] for n in self.task_names]
        self.jacobian_descent.backward(losses, present, pooled, heads)

    def jacobian_optimizer_step(self, window: int) -> None:
        jd, step = self.jacobian_descent, self.global_step
        task_weight = torch.tensor(
            [float(self.weighting.task_weights()[n]) for n in self.task_names]
        )
        heads = [self.model.heads[n] for n in self.task_names]
        shared = [p for _, p, _ in self.shared]
        jacobian = jd.step_gradients(shared, heads, task_weight, window, step)
        if jacobian is not None and self.monitor.due(step):
            grams = gramians(jacobian, group_slices(self.shared))
            self.log_conflicts(self.monitor.update(grams, jd.last_present))
        optimizer = self.optimizers()
        clip = self.cfg.trainer.gradient_clip_val
        if clip:
            self.configure_gradient_clipping(optimizer, clip, "norm")
        optimizer.step()
        optimizer.zero_grad()
        self.lr_schedulers().step()
        self.weighting.project()
