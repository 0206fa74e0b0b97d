"""Random Loss Weighting, RLW (Lin, Ye, Xu, Shi & Zhang, TMLR 2022, "Reasonable Effectiveness of
Random Weighting: A Litmus Test for Multi-Task Learning").

    λ(t) = K · softmax(z(t)),   z(t) ~ N(0, I_K), drawn afresh at every training step

The litmus test of the paper: an adaptive method that cannot beat random weights is not
balancing anything. The paper's weights sum to 1; here they are scaled by K so that they average
1, as equal weighting does (with AdamW only gradient clipping sees the difference). Tasks absent
from a batch get no weight: the softmax runs over the tasks present.

The draws are a function of (seed, step), not of torch's global RNG: every DDP rank draws the
same weights, a resumed run continues the sequence (the step count is a buffer, so it is in the
checkpoint), and dropout draws the same numbers as under the other methods. Validation losses use
the expected weights, 1 per task.
"""

from __future__ import annotations

import numpy as np
import torch

from mtl.model.weighting.base import LossWeighting


class RandomWeighting(LossWeighting):
    def __init__(self, task_names: list[str], seed: int = 0):
        super().__init__(task_names)
        self.seed = int(seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._step: int | None = None  # host copy of `steps`: reading a GPU buffer would sync
        self.last = {name: 1.0 for name in self.task_names}

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._step = None  # re-read from the loaded buffer at the next step

    def draw(self, step: int, present: list[bool]) -> np.ndarray:
        """The weights of one training step; 0 for absent tasks, the present ones average 1."""
        z = np.random.default_rng([self.seed, step]).standard_normal(len(self.task_names))
        mask = np.asarray(present, dtype=bool)
        weights = np.zeros(len(z))
        if mask.any():
            e = np.exp(z[mask] - z[mask].max())
            weights[mask] = mask.sum() * e / e.sum()
        return weights

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        if not self.training:
            return sum(losses[name] for name in self.task_names)
        if self._step is None:
            self._step = int(self.steps)
        weights = self.draw(self._step, [present[name] for name in self.task_names])
        self._step += 1
        self.steps.fill_(self._step)
        self.last = {name: float(weights[k]) for k, name in enumerate(self.task_names)}
        return sum(self.last[name] * losses[name] for name in self.task_names)

    def task_weights(self) -> dict[str, float]:
        return dict(self.last)
