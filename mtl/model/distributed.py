"""Collectives for state that every DDP rank must agree on (FAMO's logits, the aggregated gradient).

Each is the identity in a single process. They are collectives: every rank must call them at the
same point of every step (training steps are in lockstep under DDP; validation is not, so nothing
here runs outside training).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all ranks (a new tensor; the input is not changed). For a task's
    loss under `task_loss_norm: expected` this is exactly its loss on the union of the ranks'
    batches; for a gradient it is what DDP itself averages."""
    n = world_size()
    if n == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / n


def average_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """`mean_over_ranks` in place, for a fresh buffer too large to copy (a Jacobian)."""
    n = world_size()
    if n > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(n)
    return tensor


def any_over_ranks(flags: torch.Tensor) -> torch.Tensor:
    """Elementwise logical OR of a bool tensor over all ranks: e.g. which tasks had rows anywhere."""
    if world_size() == 1:
        return flags
    out = flags.to(torch.int32)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.bool()


def broadcast_from_first(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (in place): replicas stay identical even where a computation
    on identical inputs is not bit-reproducible across processes."""
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor
