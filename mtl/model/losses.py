"""Per-task losses: cross-entropy, focal (γ), BCE for multi-label; class weights; label smoothing."""

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
    """Lin et al. 2017 for softmax outputs: mean of (1 - p_t)^γ · CE. γ = 0 is plain CE."""
    ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    p_t = torch.softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    loss = (1.0 - p_t).pow(gamma) * ce
    if weight is None:
        return loss.mean()
    w = weight[targets]
    return (w * loss).sum() / w.sum()


def focal_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss for independent sigmoid outputs (multi-label)."""
    bce = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return ((1.0 - p_t).pow(gamma) * bce).mean()


class TaskLoss(nn.Module):
    """The loss of one task as configured; an empty selection gives a zero that keeps the graph."""

    def __init__(self, meta: TaskMeta, loss: str, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.multilabel = meta.multilabel
        self.loss = loss
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        weights = (
            torch.tensor(meta.class_weights, dtype=torch.float32) if meta.class_weights else None
        )
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        logits = logits.float()
        if self.multilabel:
            targets = targets.float()
            if self.label_smoothing:
                targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            if self.loss == "focal":
                return focal_bce(logits, targets, self.gamma, self.class_weights)
            return F.binary_cross_entropy_with_logits(
                logits, targets, pos_weight=self.class_weights
            )
        if self.loss == "focal":
            return focal_loss(logits, targets, self.gamma, self.class_weights, self.label_smoothing)
        return F.cross_entropy(
            logits, targets, weight=self.class_weights, label_smoothing=self.label_smoothing
        )
