"""FAMO, Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023,
https://arxiv.org/abs/2306.03792; Algorithm 2 of its appendix and the official code,
github.com/Cranial-XIX/FAMO). It decreases the task losses at a balanced rate from their values
alone: O(1) per step, no per-task gradients.

Loss of a step, over the tasks present (P of them; L_i their losses, ε = 1e-8):

    z = softmax(ξ)                          logits ξ, one per task, learned below
    c = ( Σ_i z_i / (L_i + ε) )^-1          a constant of the step (no gradient)
    total = P · c · Σ_i z_i log(L_i + ε)    gradient: Σ_i w_i ∇L_i,  w_i = P · c · z_i / (L_i + ε)

The paper's objective is c · Σ z_i log L_i; the factor P makes the weights w sum to P, as equal
weighting's do (as RLW's in random.py), so `trainer.gradient_clip_val` means the same under both
(AdamW itself is unaffected by a constant factor). At balance (equal losses, equal z) w_i = 1.

ξ after each optimizer step, from the change of each log-loss across that step on the same batch:

    δ_i = log(L_i(θ_t) + ε) − log(L_i(θ_t+1) + ε)
    ξ  ← Adam step on  ∇_ξ z(ξ)ᵀ δ  +  γ ξ          (lr `weighting.famo_lr`, γ `weighting.famo_decay`)

so a task whose loss fell more than the others' loses weight. As in the paper's Algorithm 2 and
the official code the step is Adam's (torch.optim.Adam semantics, L2 decay γξ added to the
gradient, betas 0.9/0.999); its state lives in buffers here, so it is checkpointed and resumed.
Defaults lr 0.025 and γ 0.001 are the paper's (Algorithm 2; the official code uses γ 1e-5).

How mtl fits the algorithm to its batches (mtl/model/module.py calls `post_step`):
- L(θ_t+1) is recomputed on the same batch (the last micro-batch of an accumulation window) with
  the same dropout masks (the RNG state of its training forward), so δ measures the step and not
  dropout noise; the extra forward runs without gradients (about a third of a step's compute).
- A task with no rows in the batch is left out of the softmax, of c, of P and of δ.
- Under DDP every rank uses the losses averaged over ranks (the union batch's, exactly, under
  `task_loss_norm: expected`), so all ranks weight alike and keep the same ξ; the gradient is
  then the union batch's gradient of the objective above.
- Validation losses are the plain sum of the task losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mtl.model.distributed import any_over_ranks, mean_over_ranks
from mtl.model.weighting.base import LossWeighting

EPS = 1e-8  # the paper's / official code's ε inside the logarithm
BETAS = (0.9, 0.999)  # Adam's, as torch.optim.Adam in the official code
ADAM_EPS = 1e-8


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the entries where `mask` holds, 0 elsewhere."""
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=0).masked_fill(~mask, 0.0)


class FAMOWeighting(LossWeighting):
    needs_post_step_losses = True

    def __init__(self, task_names: list[str], lr: float = 0.025, decay: float = 1e-3):
        super().__init__(task_names)
        self.lr = float(lr)
        self.decay = float(decay)
        k = len(task_names)
        # buffers: in the checkpoint (a resumed fold continues with ξ and Adam's moments) and,
        # under DDP, identical on every rank because every rank applies the same updates
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("adam_m", torch.zeros(k))
        self.register_buffer("adam_v", torch.zeros(k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._before: tuple[torch.Tensor, torch.Tensor] | None = None  # (L(θ_t), mask) of the step
        self.last = torch.ones(k)

    def _shared(self, losses: dict[str, torch.Tensor], present: dict[str, bool]):
        values = torch.stack([losses[n] for n in self.task_names])  # (K,)
        mask = torch.tensor([present[n] for n in self.task_names], device=values.device)
        return values, mean_over_ranks(values.detach()), any_over_ranks(mask)

    def forward(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> torch.Tensor:
        if not self.training:
            return sum(losses[name] for name in self.task_names)
        values, shared, mask = self._shared(losses, present)
        shifted = shared.float() + EPS
        z = masked_softmax(self.logits, mask)
        c = 1.0 / (z / shifted).sum()
        weights = mask.sum() * c * z / shifted  # (K,), 0 for absent tasks; they sum to P
        self._before = (shared.float(), mask)
        self.last = weights
        total = (weights.to(values.dtype) * values).sum()  # the gradient
        objective = mask.sum() * c * (z * torch.log(shifted)).sum()  # the value (paper's form × P)
        return total + (objective - total).detach()

    @torch.no_grad()
    def post_step(self, losses: dict[str, torch.Tensor], present: dict[str, bool]) -> None:
        """The ξ update from the losses recomputed on the step's batch after the optimizer step."""
        if self._before is None:
            return
        before, mask_before = self._before
        self._before = None
        _, after, mask_after = self._shared(losses, present)
        mask = mask_before & mask_after
        if not mask.any():
            return
        delta = (torch.log(before + EPS) - torch.log(after.float() + EPS)).masked_fill(~mask, 0.0)
        z = masked_softmax(self.logits, mask)
        grad = z * (delta - (z * delta).sum())  # ∇_ξ zᵀδ for the softmax over the present tasks
        self.adam_step(grad)

    def adam_step(self, grad: torch.Tensor) -> None:
        """One torch.optim.Adam step on ξ (L2 decay added to the gradient, bias-corrected)."""
        b1, b2 = BETAS
        grad = grad + self.decay * self.logits
        self.updates += 1
        t = self.updates.to(grad.dtype)  # on the device: no host sync
        self.adam_m.mul_(b1).add_(grad, alpha=1 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.adam_v / (1 - b2**t)).sqrt() + ADAM_EPS
        self.logits.sub_(self.lr / (1 - b1**t) * self.adam_m / denom)

    def task_weights(self) -> dict[str, torch.Tensor]:
        last = self.last.detach()
        return {name: last[k] for k, name in enumerate(self.task_names)}

    def extra_logs(self) -> dict[str, torch.Tensor]:
        z = torch.softmax(self.logits, dim=0)
        return {f"famo_z/{name}": z[k] for k, name in enumerate(self.task_names)}


def rng_state(device: torch.device) -> dict:
    """The RNG state a forward pass draws its dropout masks from (CPU, and `device` if CUDA)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        state["cuda"] = (index, torch.cuda.get_rng_state(index))
    return state


@contextlib.contextmanager
def replayed_rng(state: dict) -> Iterator[None]:
    """Run a block with the RNG state of `rng_state` (the same dropout masks again); the global
    RNG continues afterwards as if the block had not run."""
    cuda = state.get("cuda")
    with torch.random.fork_rng(devices=[cuda[0]] if cuda else []):
        torch.set_rng_state(state["cpu"])
        if cuda:
            torch.cuda.set_rng_state(cuda[1], cuda[0])
        yield
