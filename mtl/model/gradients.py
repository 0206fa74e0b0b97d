"""Gradient-conflict monitoring: how the tasks' gradients on the shared encoder relate.

Opt-in with `gradient.log_every_n_steps: N` (0, the default, computes nothing). On the first
micro-batch of every N-th optimizer step each task's gradient on the shared encoder is taken
(torch.autograd.grad on its own loss, retain_graph, so the real backward is untouched; under
`gradient.aggregator` the Jacobian that the aggregator combines is reused at no extra cost), and

    grad/cos/<a>__<b>        cosine between tasks a and b's gradients on the whole shared encoder
    grad/conflict/<a>__<b>   running share of the monitored steps where that cosine was negative
    grad/norm/<task>         the norm of the task's gradient

are logged, each also per parameter group: `embeddings` (the embedding tables and what sits with
them, optim.layer_depth 0) and `layers` (the rest of the encoder): grad/cos/layers/<a>__<b>, ...
A task is differentiated through its own (unweighted) loss, so the norms compare the tasks'
losses as the loss functions define them; a pair is counted only on steps where both tasks have
rows. Under DDP each task's gradient is averaged over the ranks first (the union batch's).

Everything derives from the tasks' Gram matrix per group, G = J Jᵀ (K × K; J holds one task's
flattened gradient per row): norm_i = √G_ii, cos_ij = G_ij / (√G_ii √G_jj), and the whole
encoder's G is the sum of the groups'.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from mtl.backbone import layer_depth
from mtl.model.distributed import any_over_ranks, mean_over_ranks

# gradient.aggregator: "none" or a torchjd aggregator (mtl/model/aggregation.py)
AGGREGATORS = (
    "none",
    "upgrad",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl_g",
    "aligned_mtl",
    "nash_mtl",
    "dualproj",
)
GROUPS = ("embeddings", "layers")


def shared_parameters(encoder: nn.Module) -> list[tuple[str, nn.Parameter, str]]:
    """The encoder's trainable parameters with their group (embeddings / layers), in order."""
    config = getattr(encoder, "config", None)
    num_layers = getattr(config, "num_hidden_layers", 0) or 0
    return [
        (name, p, "embeddings" if layer_depth(f".{name}", num_layers, config) == 0 else "layers")
        for name, p in encoder.named_parameters()
        if p.requires_grad
    ]


def group_slices(params: list[tuple[str, nn.Parameter, str]]) -> dict[str, list[slice]]:
    """Where each group's parameters lie in the flattened gradient (the order of `params`)."""
    slices: dict[str, list[slice]] = {}
    start = 0
    for _, p, group in params:
        slices.setdefault(group, []).append(slice(start, start + p.numel()))
        start += p.numel()
    return slices


def gramians(jacobian: torch.Tensor, slices: dict[str, list[slice]]) -> dict[str, torch.Tensor]:
    """Per group, the (K, K) Gram matrix of the rows of `jacobian` (K, P) over that group's columns,
    and `all`, their sum (in float64: the cosines of nearly parallel gradients stay exact)."""
    grams = {}
    k = jacobian.shape[0]
    for group, parts in slices.items():
        g = torch.zeros(k, k, dtype=torch.float64, device=jacobian.device)
        for part in parts:
            block = jacobian[:, part].double()
            g += block @ block.T
        grams[group] = g.cpu()  # one transfer per group
    grams["all"] = sum(grams.values(), torch.zeros_like(next(iter(grams.values()))))
    return grams


def task_jacobian(
    losses: list[torch.Tensor], params: list[nn.Parameter], present: list[bool]
) -> torch.Tensor:
    """(K, P): row k the gradient of losses[k] on `params`, flattened, averaged over DDP ranks;
    zero for a task without rows (in this process) and for parameters a loss does not reach. The
    graph is kept for the real backward. Every rank must call this at the same step."""
    rows = []
    for loss, here in zip(losses, present, strict=True):
        grads = (
            torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            if here and loss.requires_grad
            else [None] * len(params)
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g.to(p.dtype)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return mean_over_ranks(torch.stack(rows))


class ConflictMonitor:
    """The running conflict shares of one fold (in the checkpoint: a resumed fold goes on)."""

    def __init__(self, task_names: list[str], every: int):
        self.task_names = list(task_names)
        self.every = int(every)
        self.counts: dict[str, list[int]] = {}  # tag → [negative steps, monitored steps]

    def due(self, global_step: int) -> bool:
        return self.every > 0 and global_step % self.every == 0

    def update(self, grams: dict[str, torch.Tensor], present: list[bool]) -> dict[str, float]:
        """The metrics of one monitored step from its Gram matrices; `present[k]`: task k had rows
        (on any rank)."""
        metrics: dict[str, float] = {}
        names = self.task_names
        for group, gram in grams.items():
            prefix = "" if group == "all" else f"{group}/"
            diag = gram.diagonal().clamp(min=0).sqrt()
            for k, name in enumerate(names):
                if present[k]:
                    metrics[f"grad/norm/{prefix}{name}"] = float(diag[k])
            for i, j in itertools.combinations(range(len(names)), 2):
                if not (present[i] and present[j]) or diag[i] == 0 or diag[j] == 0:
                    continue
                pair = f"{prefix}{names[i]}__{names[j]}"
                cos = float(gram[i, j] / (diag[i] * diag[j]))
                negative, seen = self.counts.get(pair, [0, 0])
                self.counts[pair] = [negative + (cos < 0), seen + 1]
                metrics[f"grad/cos/{pair}"] = cos
                metrics[f"grad/conflict/{pair}"] = self.counts[pair][0] / self.counts[pair][1]
        return metrics

    def state_dict(self) -> dict:
        return {"counts": {k: list(v) for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: [int(a), int(b)] for k, (a, b) in state.get("counts", {}).items()}


def monitor_losses(
    monitor: ConflictMonitor,
    losses: dict[str, torch.Tensor],
    present: dict[str, bool],
    params: list[tuple[str, nn.Parameter, str]],
) -> dict[str, float]:
    """Automatic optimisation: the conflict metrics of this step from the task losses' graphs."""
    names = monitor.task_names
    flags = torch.tensor([present[n] for n in names])
    here = flags.tolist()
    anywhere = any_over_ranks(flags.to(losses[names[0]].device)).tolist()
    jacobian = task_jacobian([losses[n] for n in names], [p for _, p, _ in params], here)
    return monitor.update(gramians(jacobian, group_slices(params)), anywhere)
