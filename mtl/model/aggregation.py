"""Jacobian descent on the shared encoder through torchjd (`gradient.aggregator`).

Instead of the gradient of one summed loss, the encoder gets an aggregation of the tasks' own
gradients, the rows of the Jacobian J (K × P): UPGrad (Quinton & Rey 2024), MGDA (Désidéri 2012;
Sener & Koltun 2018), PCGrad (Yu et al. 2020), CAGrad (Liu et al. 2021, c = 0.4), IMTL-G (Liu et
al. 2021), Aligned-MTL (Senushkin et al. 2023), Nash-MTL (Navon et al. 2022), DualProj
(Lopez-Paz & Ranzato 2017), all as torchjd 0.18 implements them. The heads keep their own task's
gradient.

One optimizer step (mtl/model/module.py drives it under Lightning's manual optimisation):
1. per micro-batch, `torchjd.autojac.mtl_backward` with the pooled representation as the shared
   features fills each encoder parameter's `.jac` (K rows, one per task, summed over the
   accumulation window) and each head's `.grad`;
2. at the window's end `step_gradients` gathers J, averages it and the heads' gradients over the
   DDP ranks (so the step is that of one process on the union batch), divides by the window's
   length and applies `tasks.<t>.weight` (under `loss_weighting: fixed`);
3. rows of tasks that had no rows anywhere in the window are dropped (a zero row would pull MGDA's
   min-norm point to zero); with one row left that task's gradient is the step;
4. the aggregator's task weights w are computed (rank 0's are broadcast, so replicas never drift;
   PCGrad's random task order is seeded by the seed and the step) and wᵀJ becomes `.grad`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtl.errors import ConfigError
from mtl.model.distributed import any_over_ranks, average_over_ranks_, broadcast_from_first

CAGRAD_C = 0.4  # CAGrad's radius scale (the value of its paper's multi-task experiments)
NEEDS_EXTRA = {"cagrad": "cagrad", "nash_mtl": "nash-mtl"}  # mtl's extras (pyproject.toml)


def make_aggregator(name: str, n_tasks: int):
    """The torchjd aggregator called `name` for `n_tasks` rows; a ConfigError naming the install
    command where torchjd or the solver it needs is missing."""
    try:
        from torchjd import aggregation as agg
    except ImportError:
        raise ConfigError(
            f"gradient.aggregator={name} needs torchjd: pip install 'torchjd[quadprog-projector]"
            "==0.18.0' (or reinstall mtl: pip install -e .)."
        ) from None
    builders = {
        "upgrad": agg.UPGrad,
        "mgda": agg.MGDA,
        "pcgrad": agg.PCGrad,
        "cagrad": lambda: agg.CAGrad(c=CAGRAD_C),
        "imtl_g": agg.IMTLG,
        "aligned_mtl": agg.AlignedMTL,
        "nash_mtl": lambda: agg.NashMTL(n_tasks=n_tasks),
        "dualproj": agg.DualProj,
    }
    try:
        return builders[name]()
    except ImportError as err:
        extra = NEEDS_EXTRA.get(name)
        how = (
            f"pip install -e '.[{extra}]' (torchjd[{extra}]: cvxpy and its solvers)"
            if extra
            else "pip install 'torchjd[quadprog-projector]==0.18.0' (the quadprog QP solver)"
        )
        raise ConfigError(
            f"gradient.aggregator={name} needs packages that are not installed ({err}). "
            f"Install them with {how}, or choose another gradient.aggregator."
        ) from None


def check_config(cfg: dict) -> None:
    """The combinations of keys the gradient methods cannot honour, refused before any work."""
    name, t = cfg["gradient"]["aggregator"], cfg["trainer"]
    fsdp = str(t["strategy"]).startswith("fsdp")
    refusals = []
    if fsdp and name != "none":
        refusals.append(
            f"gradient.aggregator={name} needs each task's gradient on whole "
            "parameters, which FSDP shards; use trainer.strategy=ddp"
        )
    if fsdp and cfg["gradient"]["log_every_n_steps"]:
        refusals.append(
            "gradient.log_every_n_steps needs each task's gradient on whole "
            "parameters, which FSDP shards; use trainer.strategy=ddp or set it to 0"
        )
    if fsdp and cfg["loss_weighting"] == "famo":
        refusals.append(
            "loss_weighting=famo recomputes the step's losses outside the FSDP "
            "root's forward; use trainer.strategy=ddp"
        )
    if name != "none":
        if cfg["loss_weighting"] not in ("equal", "fixed"):
            refusals.append(
                f"gradient.aggregator={name} weighs the tasks' gradients itself, so "
                f"loss_weighting must be equal (or fixed: tasks.<t>.weight scales a task's "
                f"gradient), got {cfg['loss_weighting']}"
            )
        if str(t["precision"]) in ("16-mixed", "16"):
            refusals.append(
                f"gradient.aggregator={name} cannot run under trainer.precision=16-mixed (its "
                "GradScaler scales one loss, not a Jacobian); use bf16-mixed or 32-true"
            )
        if t["compile"]:
            refusals.append(
                f"gradient.aggregator={name} differentiates through torch.vmap, which does not "
                "work on compiled modules (PyTorch issue #138422); set trainer.compile=false"
            )
    if refusals:
        raise ConfigError("; ".join(refusals) + ".")


def check_installed(cfg: dict) -> None:
    """Training with `gradient.aggregator`: its packages are importable (a ConfigError if not).
    Not part of config validation: a run folder is still readable without them."""
    if cfg["gradient"]["aggregator"] != "none":
        make_aggregator(cfg["gradient"]["aggregator"], max(2, len(cfg["tasks"])))


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class JacobianDescent:
    """The aggregator of one fold and the window's bookkeeping. Not an nn.Module: nothing of it
    belongs in the checkpoint (Nash-MTL's warm start restarts from equal weights on resume)."""

    def __init__(self, name: str, task_names: list[str], seed: int, sequential: bool = False):
        self.name = name
        # sequential: one task's backward at a time instead of torch.vmap over the K rows, for
        # gradient checkpointing (its re-run forward draws dropout masks, which vmap refuses)
        self.chunk = 1 if sequential else None
        self.task_names = list(task_names)
        self.seed = int(seed)
        self._aggregators: dict[tuple[int, ...], object] = {}  # Nash-MTL is sized per row set
        self.present: torch.Tensor | None = None  # (K,) bool: tasks with rows in the window
        self.last_weights: dict[str, float] = {}
        self.last_present: list[bool] = []  # per task: rows anywhere in the last window

    def aggregator(self, rows: tuple[int, ...]):
        if rows not in self._aggregators:
            self._aggregators[rows] = make_aggregator(self.name, len(rows))
        return self._aggregators[rows]

    def backward(
        self,
        losses: list[torch.Tensor],
        present: list[bool],
        features: torch.Tensor,
        heads: list[nn.Module],
    ) -> None:
        """One micro-batch: J rows into the shared parameters' `.jac`, head gradients into `.grad`."""
        from torchjd.autojac import mtl_backward

        flags = torch.tensor(present, device=features.device)
        self.present = flags if self.present is None else self.present | flags
        mtl_backward(
            losses,
            features=features,
            tasks_params=[[p for p in head.parameters() if p.requires_grad] for head in heads],
            parallel_chunk_size=self.chunk,
        )

    def step_gradients(
        self,
        shared: list[nn.Parameter],
        heads: list[nn.Module],
        task_weight: torch.Tensor,
        window: int,
        step: int,
    ) -> torch.Tensor | None:
        """The window's end: the aggregated gradient into the shared parameters' `.grad`; the heads'
        gradients averaged over ranks, divided by `window` (its micro-batches) and multiplied by
        their task's `task_weight` (K,). Returns the unweighted J (K, P), averaged over ranks and
        the window, for the conflict monitor; None if no parameter got a Jacobian."""
        with_jac = [p for p in shared if hasattr(p, "jac")]
        if not with_jac:
            return None
        head_params = [[p for p in head.parameters() if p.grad is not None] for head in heads]
        k, width = len(self.task_names), sum(p.numel() for p in with_jac)
        flat_heads = [p.grad.reshape(-1) for params in head_params for p in params]
        # one buffer, one collective for J and the heads' gradients (the union batch's, averaged
        # as DDP's are); each .jac is copied in and freed, so J exists once
        first = with_jac[0].jac
        packed = first.new_empty(k * width + sum(g.numel() for g in flat_heads))
        jacobian = packed[: k * width].view(k, width)  # (K, P)
        start = 0
        for p in with_jac:
            jacobian[:, start : start + p.numel()] = p.jac.reshape(k, -1)
            start += p.numel()
            del p.jac
        if flat_heads:
            packed[k * width :] = torch.cat(flat_heads)
        average_over_ranks_(packed).div_(window)
        task_weight = task_weight.to(jacobian.device, jacobian.dtype)
        offset = jacobian.numel()
        for task, params in enumerate(head_params):
            for p in params:
                n = p.numel()
                p.grad.copy_(packed[offset : offset + n].view_as(p.grad) * task_weight[task])
                offset += n
        present = self.last_present = any_over_ranks(self.present).tolist()
        self.present = None
        rows = [i for i in range(k) if present[i]]
        weighted = jacobian[rows] * task_weight[rows, None]
        # in full precision whatever the autocast around the training step (bf16-mixed)
        with torch.autocast(jacobian.device.type, enabled=False):
            weights = self.task_weights(weighted, tuple(rows), step)
            gradient = weights.to(weighted.dtype) @ weighted  # (P,)
        self.last_weights = {
            self.task_names[r]: float(w) for r, w in zip(rows, weights.tolist(), strict=True)
        }
        start = 0
        for p in with_jac:
            n = p.numel()
            p.grad = gradient[start : start + n].view_as(p).to(p.dtype).clone()
            start += n
        return jacobian

    def task_weights(
        self, jacobian: torch.Tensor, rows: tuple[int, ...], step: int
    ) -> torch.Tensor:
        """The aggregator's weight of each row (rank 0's on every rank); 1 for a single row."""
        if len(rows) == 1:
            return torch.ones(1, device=jacobian.device)
        with torch.random.fork_rng(devices=[]):  # PCGrad's task order: from (seed, step) alone
            # the CPU generator only (PCGrad draws there): torch.manual_seed would also reseed
            # CUDA's, and with it the dropout masks of every following step
            torch.default_generator.manual_seed(step_seed(self.seed, step))
            weights = self.aggregator(rows).weighting(jacobian)
        return broadcast_from_first(weights.detach().to(jacobian.device).contiguous())
