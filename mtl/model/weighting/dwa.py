"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    w_k(t) = K · softmax_k( r_k(t-1) / T ),   r_k(t-1) = L_k(t-1) / L_k(t-2)

A task whose loss falls slowly gets more weight. The first two epochs use equal weights.
"""

from __future__ import annotations

import torch

from mtl.model.weighting.base import LossWeighting


class DWAWeighting(LossWeighting):
    def __init__(self, task_names: list[str], temperature: float = 2.0):
        super().__init__(task_names)
        self.temperature = temperature
        # buffers, so a resumed run continues with the same history
        self.register_buffer("history", torch.zeros(2, len(task_names)))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(len(task_names)))

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        return sum(self.weights[k] * losses[name] for k, name in enumerate(self.task_names))

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        losses = torch.tensor(
            [epoch_losses[n] for n in self.task_names], device=self.history.device
        )
        self.history.copy_(torch.stack([self.history[1], losses]))
        self.epochs_seen += 1
        if self.epochs_seen < 2:
            return
        ratios = self.history[1] / self.history[0].clamp(min=1e-12)
        self.weights.copy_(len(self.task_names) * torch.softmax(ratios / self.temperature, dim=0))

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {name: self.weights[k].clone() for k, name in enumerate(self.task_names)}
