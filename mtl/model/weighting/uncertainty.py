"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    total = Σ_k  exp(-s_k) · L_k + s_k,     s_k = log σ_k²  (learned, kept within ±clamp)

A task with noisy loss learns a large σ and is down-weighted; the `+ s_k` term stops σ from
growing without bound. Tasks absent from a batch add nothing, and their s_k gets no gradient.
The bound is applied to the parameter after each optimizer step (`project`), not inside the loss:
a clamp in the forward pass has zero gradient past the bound, so an s_k that crossed it would
never come back.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl.model.weighting.base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    def __init__(self, task_names: list[str], clamp: float = 5.0):
        super().__init__(task_names)
        self.clamp = clamp
        self.log_vars = nn.Parameter(torch.zeros(len(task_names)))  # (K,) 1-D: no weight decay

    def clamped(self) -> torch.Tensor:
        return self.log_vars.clamp(-self.clamp, self.clamp)

    @torch.no_grad()
    def project(self) -> None:
        self.log_vars.clamp_(-self.clamp, self.clamp)

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        log_vars = self.log_vars
        total = log_vars.sum() * 0.0  # keeps every parameter in the graph (DDP)
        for k, name in enumerate(self.task_names):
            if present[name]:
                total = total + torch.exp(-log_vars[k]) * losses[name] + log_vars[k]
        return total

    def task_weights(self) -> dict[str, torch.Tensor]:
        precision = torch.exp(-self.clamped().detach())  # on-device tensors: no host sync per step
        return {name: precision[k] for k, name in enumerate(self.task_names)}

    def extra_logs(self) -> dict[str, torch.Tensor]:
        sigma = torch.exp(0.5 * self.clamped().detach())
        return {f"sigma/{name}": sigma[k] for k, name in enumerate(self.task_names)}
