"""The network: a Hugging Face encoder, pooling, and one head per task. No training logic here.

encoder = load_encoder(cfg.backbone)                # mtl/backbone.py
model = MultiTaskModel(encoder, {"toxicity": 2, "emotion": 7}, pooling="mean")
logits = model(input_ids, attention_mask)          # {"toxicity": (B, 2), "emotion": (B, 7)}
"""

from __future__ import annotations

import torch
from torch import nn

# loading the encoder and its tokenizer lives in mtl/backbone.py (data and inference need it
# too); these names stay importable from here for code written before it moved
from mtl.backbone import backbone_path, load_encoder, load_tokenizer, position_limit  # noqa: F401
from mtl.errors import ConfigError

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
        return self.classify(self.encode(input_ids, attention_mask), index)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled representation every head reads, (B, H): the last shared features."""
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.pool(outputs, attention_mask)

    def classify(
        self, pooled: torch.Tensor, index: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Each head on the pooled rows of its task (all rows without `index`)."""
        if index is None:
            return {name: head(pooled) for name, head in self.heads.items()}
        # a head on an empty selection still joins the graph, so DDP sees every parameter used
        return {name: head(pooled[index[name]]) for name, head in self.heads.items()}
