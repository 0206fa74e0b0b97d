"""The interface every loss-weighting method implements (one small file per method, as in LibMTL)."""

from __future__ import annotations

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Combines per-task losses into the one scalar Lightning backpropagates.

    `losses` holds every task; `present[name]` says whether the batch had rows of that task.
    Absent tasks must add exactly zero (their loss is a graph-keeping zero already).
    """

    # True: after each optimizer step the module recomputes the step's task losses on the same
    # batch and hands them to `post_step` (FAMO)
    needs_post_step_losses = False

    def __init__(self, task_names: list[str]):
        super().__init__()
        self.task_names = list(task_names)

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        raise NotImplementedError

    def task_weights(self) -> dict[str, float | torch.Tensor]:
        """The effective weight of each task now, for logging (device tensors: no host sync)."""
        return {name: 1.0 for name in self.task_names}

    def extra_logs(self) -> dict[str, float | torch.Tensor]:
        """Anything else worth a TensorBoard curve (σ for uncertainty weighting)."""
        return {}

    def project(self) -> None:
        """Called after every optimizer step: bring learned parameters back into their range."""

    def post_step(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> None:
        """With `needs_post_step_losses`: the task losses of the step's batch after the step."""

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Called with each task's mean training loss of the finished epoch."""
