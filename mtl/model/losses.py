"""Per-task losses: cross-entropy, focal (γ), BCE for multi-label; class weights; label smoothing.

One reduction path (issue 22, item 2): `TaskLoss` returns one loss per row with its class weight
already applied, and `reduce_rows` alone turns those into the task's loss for the step. A row's
weight is therefore its class weight × a constant of the step, never a function of which other
rows share its batch. (torch's `cross_entropy(weight=…)` returns Σwℓ / Σw: dividing by the batch's
summed weights made a positive row's weight depend on how many positives it was batched with.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtl.data.tasks import TaskMeta


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Lin et al. 2017 for softmax outputs, per row: w[y] · (1 - p_t)^γ · CE. γ = 0 is plain CE."""
    ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    p_t = torch.softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    loss = (1.0 - p_t).pow(gamma) * ce if gamma else ce
    return loss if weight is None else weight[targets] * loss


def focal_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss for independent sigmoid outputs (multi-label), per row: the mean over labels of
    (1 - p_t)^γ · BCE, positives weighted by `pos_weight`. γ = 0 is plain BCE."""
    bce = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    if gamma:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        bce = (1.0 - p_t).pow(gamma) * bce
    return bce.mean(dim=1)


def reduce_rows(row_losses: torch.Tensor, expected_rows: float | None = None) -> torch.Tensor:
    """A task's loss for one step from its per-row losses (class weights already in them).

    `expected_rows` (`weighting.task_loss_norm: expected`): their sum over the task's expected
    rows per batch, a constant, so every row counts alike whichever batch it lands in. None
    (`batch`, and evaluation): their mean over the task's rows in this batch. No rows: an exact
    zero that keeps the graph (DDP needs every head in it)."""
    if row_losses.numel() == 0:
        return row_losses.sum()
    if expected_rows is None:
        return row_losses.mean()
    return row_losses.sum() / max(expected_rows, 1e-12)


class TaskLoss(nn.Module):
    """The loss of each row of one task as configured, shape (n,); reduce it with `reduce_rows`."""

    def __init__(self, meta: TaskMeta, loss: str, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.multilabel = meta.multilabel
        self.gamma = gamma if loss == "focal" else 0.0  # focal with γ = 0 is CE / BCE
        self.label_smoothing = label_smoothing
        weights = (
            torch.tensor(meta.class_weights, dtype=torch.float32) if meta.class_weights else None
        )
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[0] == 0:  # no rows of the task: no targets to read (they may be unshaped)
            return logits.sum(dim=-1) * 0.0
        if self.multilabel:
            targets = targets.float()
            if self.label_smoothing:
                targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return focal_bce(logits, targets, self.gamma, self.class_weights)
        return focal_loss(logits, targets, self.gamma, self.class_weights, self.label_smoothing)
