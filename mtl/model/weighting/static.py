"""`equal` (sum of task losses) and `fixed` (per-task weights from `tasks.<name>.weight`)."""

from __future__ import annotations

import torch

from mtl.model.weighting.base import LossWeighting


class FixedWeighting(LossWeighting):
    def __init__(self, task_names: list[str], weights: dict[str, float] | None = None):
        super().__init__(task_names)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in task_names}

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        return sum(self.weights[name] * losses[name] for name in self.task_names)

    def task_weights(self) -> dict[str, float]:
        return dict(self.weights)
