"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    w_k(t) = K · softmax_k( r_k(t-1) / T ),   r_k(t-1) = L_k(t-1) / L_k(t-2)

A task whose loss falls slowly gets more weight. The first two epochs use equal weights.
"""

from __future__ import annotations

import torch

from mtl.weighting.base import LossWeighting


class DWAWeighting(LossWeighting):
    def __init__(self, task_names: list[str], temperature: float = 2.0):
        super().__init__(task_names)
        self.temperature = temperature
        self.history: list[dict[str, float]] = []
        self.register_buffer("weights", torch.ones(len(task_names)))

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        return sum(self.weights[k] * losses[name] for k, name in enumerate(self.task_names))

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        self.history = (self.history + [dict(epoch_losses)])[-2:]
        if len(self.history) < 2:
            return
        before, last = self.history
        ratios = torch.tensor([last[n] / max(before[n], 1e-12) for n in self.task_names])
        self.weights.copy_(len(self.task_names) * torch.softmax(ratios / self.temperature, dim=0))

    def task_weights(self) -> dict[str, float]:
        return {name: float(self.weights[k]) for k, name in enumerate(self.task_names)}
