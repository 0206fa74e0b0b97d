"""Pooling (cls / pooler / masked mean) and the heads of the network."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mtl.errors import ConfigError
from mtl.model.network import MultiTaskModel, Pooler

HIDDEN = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (B, T, H)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def outputs(pooler_output: torch.Tensor | None = None) -> BaseModelOutputWithPooling:
    return BaseModelOutputWithPooling(last_hidden_state=HIDDEN, pooler_output=pooler_output)


def test_cls_pooling_takes_the_first_token():
    assert torch.equal(Pooler("cls")(outputs(), MASK), HIDDEN[:, 0])


def test_pooler_pooling_takes_the_models_pooler_output_and_refuses_a_backbone_without_one():
    pooled = torch.randn(2, 4)
    assert torch.equal(Pooler("pooler")(outputs(pooled), MASK), pooled)
    with pytest.raises(ConfigError, match="no pooler"):
        Pooler("pooler")(outputs(None), MASK)


def test_mean_pooling_averages_only_the_tokens_the_mask_keeps():
    pooled = Pooler("mean")(outputs(), MASK)
    assert torch.allclose(pooled[0], HIDDEN[0, :2].mean(0))
    assert torch.allclose(pooled[1], HIDDEN[1, 0])  # padding would pull it towards later tokens
    empty = Pooler("mean")(outputs(), torch.zeros(2, 3, dtype=torch.long))
    assert torch.equal(empty, torch.zeros(2, 4))  # an all-padding row: zeros, not NaN


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_extra_padding_does_not_change_a_texts_logits(tiny_backbone, pooling):
    encoder = BertModel.from_pretrained(tiny_backbone)
    model = MultiTaskModel(encoder, {"a": 3}, pooling=pooling).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    padded = torch.tensor([[2, 7, 9, 3, 0, 0, 0]])
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))["a"]
        batched = model(padded, (padded != 0).long())["a"]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_heads_see_only_their_tasks_rows_when_given_an_index(tiny_backbone):
    model = MultiTaskModel(BertModel.from_pretrained(tiny_backbone), {"a": 2, "b": 5}).eval()
    ids = torch.randint(5, 30, (3, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        every = model(ids, mask)
        some = model(
            ids, mask, {"a": torch.tensor([0, 2]), "b": torch.tensor([], dtype=torch.long)}
        )
    assert every["a"].shape == (3, 2) and every["b"].shape == (3, 5)
    assert torch.allclose(some["a"], every["a"][[0, 2]]) and some["b"].shape == (0, 5)
