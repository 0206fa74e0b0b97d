"""AdamW parameter groups (backbone / heads / log-variances, layer-wise LR decay) and schedulers."""

from __future__ import annotations

import torch
from box import Box
from torch import nn

from mtl.backbone import layer_depth
from mtl.errors import ConfigError

SCHEDULERS = ("onecycle", "linear", "cosine", "constant")  # optim.scheduler
ADAMW_IMPLS = ("auto", "fused", "foreach", "for_loop")  # optim.adamw_impl: see adamw_kwargs


def param_groups(model: nn.Module, weighting: nn.Module, optim: Box) -> list[dict]:
    """nanoGPT's rule: tensors with ≥ 2 dims decay; biases, LayerNorm and log-variances do not."""
    groups: dict[tuple, dict] = {}

    def add(param: torch.Tensor, kind: str, lr: float) -> None:
        # FSDP turns parameters into flat 1-D shards: use the shape recorded before wrapping
        decay = optim.weight_decay if getattr(param, "mtl_ndim", param.dim()) >= 2 else 0.0
        key = (kind, lr, decay)
        if key not in groups:  # LearningRateMonitor needs unique names: backbone, backbone_1, ...
            same_kind = sum(k[0] == kind for k in groups)
            name = f"{kind}_{same_kind}" if same_kind else kind
            groups[key] = {"params": [], "lr": lr, "weight_decay": decay, "name": name}
        groups[key]["params"].append(param)

    num_layers = getattr(model.encoder.config, "num_hidden_layers", 0)
    for name, param in model.encoder.named_parameters():
        if param.requires_grad:
            depth = layer_depth(f".{name}", num_layers, model.encoder.config)
            # the top layer (depth num_layers) and anything above it get lr_backbone itself
            scale = optim.layer_lr_decay ** max(0, num_layers - depth)
            add(param, "backbone", optim.lr_backbone * scale)
    for param in model.heads.parameters():
        add(param, "heads", optim.lr_heads)
    for param in weighting.parameters():
        add(param, "log_vars", optim.lr_log_vars)
    return list(groups.values())


def _fused_devices() -> set[str]:
    # torch has no public query for where fused AdamW exists (AdamW(fused=True) accepts meta
    # tensors and fails only at step time); its own helper is read defensively, CUDA if it moves
    from torch.optim import optimizer as torch_optimizer

    supported = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    return set(supported())


FP16_MIXED = ("16-mixed", "16")  # Lightning's fp16 autocast + GradScaler precision values
FUSED_FP16_CLIP = (
    "optim.adamw_impl=fused cannot be clipped under fp16 mixed precision (its GradScaler is "
    "unscaled inside the fused step; Lightning issue #21435). Use optim.adamw_impl=auto or "
    "foreach, trainer.precision=bf16-mixed, or trainer.gradient_clip_val=0."
)


def fused_allowed(trainer: Box) -> bool:
    """False where Lightning cannot clip a fused AdamW's gradients: fp16 mixed precision (its
    GradScaler is unscaled inside the fused step) with gradient clipping on. bf16-mixed is fine
    (no scaler; mtl/model/module.py clips around Lightning's check, issue #21435)."""
    clipping = bool(trainer.get("gradient_clip_val") or 0)
    return not (clipping and str(trainer.get("precision")) in FP16_MIXED)


def adamw_kwargs(params: list[torch.Tensor], impl: str, fused_ok: bool = True) -> dict:
    """`optim.adamw_impl` → AdamW's `fused` / `foreach` flags. `auto`: one fused kernel per step
    where torch has one for every parameter's device (CUDA, and CPU since torch 2.4), else the
    foreach (multi-tensor) path. torch's own default on CPU is the per-parameter Python loop, slow
    over MiniLM's ~100 tensors; fused agrees with it to float rounding (tests/model/test_optim.py).
    Clipping needs no flag: Lightning's gradient_clip_val calls torch.nn.utils.clip_grad_norm_
    with foreach=None, which torch 2.13 runs as foreach kernels on CPU and CUDA tensors alike."""
    fusable = all(p.device.type in _fused_devices() and p.is_floating_point() for p in params)
    fusable = fusable and fused_ok  # fused_ok: see fused_allowed
    if impl == "fused" and not fused_ok:
        raise ConfigError(FUSED_FP16_CLIP)
    if impl == "auto":
        impl = "fused" if fusable else "foreach"
    if impl == "fused" and not fusable:
        devices = sorted({p.device.type for p in params})
        raise ConfigError(
            f"optim.adamw_impl=fused: torch {torch.__version__} has no fused AdamW for "
            f"parameters on {', '.join(devices)}; use auto, foreach or for_loop."
        )
    return {"fused": impl == "fused", "foreach": impl == "foreach"}


def build_optimizer(
    model: nn.Module, weighting: nn.Module, optim: Box, fused_ok: bool = True
) -> torch.optim.Optimizer:
    """AdamW over param_groups; `fused_ok=False` (fused_allowed) keeps `auto` off the fused kernel."""
    groups = param_groups(model, weighting, optim)
    params = [p for g in groups for p in g["params"]]
    impl = adamw_kwargs(params, optim.get("adamw_impl", "auto"), fused_ok)
    return torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=optim.eps, **impl)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Box, total_steps: int):
    """OneCycle (torch), or linear / cosine / constant with linear warmup (transformers)."""
    from transformers import get_scheduler

    total_steps = max(1, int(total_steps))
    if optim.scheduler == "onecycle" and total_steps > 2:  # shorter runs: constant LR below
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            # OneCycleLR needs at least one step on each side of the peak
            pct_start=min(max(optim.warmup_ratio, 2.0 / total_steps), 1.0 - 1.0 / total_steps),
            anneal_strategy="cos",
            cycle_momentum=False,  # it would cycle AdamW's β₁ between 0.85 and 0.95
        )
    name = optim.scheduler if optim.scheduler in ("linear", "cosine") else "constant_with_warmup"
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=int(round(optim.warmup_ratio * total_steps)),
        num_training_steps=total_steps,
    )
