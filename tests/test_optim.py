"""AdamW parameter groups: layer depth, layer-wise LR decay, weight decay by tensor rank."""

from __future__ import annotations

import pytest
from box import Box
from transformers import BertModel

from mtl.model import MultiTaskModel
from mtl.optim import layer_depth, param_groups
from mtl.weighting import UncertaintyWeighting

LAYERS = 2  # tests/conftest.py: tiny_backbone


def optim(**changes) -> Box:
    settings = dict(
        lr_backbone=1.0, lr_heads=0.01, lr_log_vars=0.1, weight_decay=0.05, layer_lr_decay=0.5
    )
    return Box({**settings, **changes})


@pytest.fixture
def model(tiny_backbone) -> MultiTaskModel:
    encoder = BertModel.from_pretrained(tiny_backbone)
    assert encoder.config.num_hidden_layers == LAYERS
    return MultiTaskModel(encoder, {"a": 2, "b": 3}, head="mlp", head_hidden=4)


def settings_of(groups: list[dict]) -> dict[int, tuple[float, float, str]]:
    """id(parameter) → (lr, weight decay, group name)."""
    return {id(p): (g["lr"], g["weight_decay"], g["name"]) for g in groups for p in g["params"]}


def test_layer_depth_counts_embeddings_as_0_layer_i_as_i_plus_1_and_the_rest_above():
    assert layer_depth(".embeddings.word_embeddings.weight", LAYERS) == 0
    assert layer_depth(".encoder.layer.0.attention.self.query.weight", LAYERS) == 1
    assert layer_depth(f".encoder.layer.{LAYERS - 1}.output.dense.bias", LAYERS) == LAYERS
    assert layer_depth(".encoder.layer.11.output.dense.bias", 12) == 12  # two digits
    assert layer_depth(".pooler.dense.weight", LAYERS) == LAYERS + 1
    assert layer_depth(".transformer.blocks.1.attn.weight", LAYERS) == 2  # other layer names


def test_layer_decay_gives_the_top_layer_lr_backbone_and_each_layer_below_one_more_factor(model):
    weighting = UncertaintyWeighting(["a", "b"])
    lr = settings_of(param_groups(model, weighting, optim()))
    encoder = dict(model.encoder.named_parameters())
    for i in range(LAYERS):
        # the top layer (i = LAYERS - 1) gets lr itself, not lr · decay
        want = 0.5 ** (LAYERS - 1 - i)
        names = [n for n in encoder if n.startswith(f"encoder.layer.{i}.")]
        assert names and all(lr[id(encoder[n])][0] == pytest.approx(want) for n in names), i
    assert lr[id(encoder["embeddings.word_embeddings.weight"])][0] == pytest.approx(0.5**LAYERS)
    assert lr[id(encoder["pooler.dense.weight"])][0] == 1.0  # above the layers: no decay
    assert {lr[id(p)][0] for p in model.heads.parameters()} == {0.01}
    assert lr[id(weighting.log_vars)][0] == 0.1


def test_without_layer_decay_every_backbone_tensor_gets_lr_backbone(model):
    groups = param_groups(model, UncertaintyWeighting(["a", "b"]), optim(layer_lr_decay=1.0))
    lr = settings_of(groups)
    assert {lr[id(p)][0] for p in model.encoder.parameters()} == {1.0}
    assert sorted(g["name"] for g in groups) == sorted(
        ["backbone", "backbone_1", "heads", "heads_1", "log_vars"]
    )  # decay / no decay for each; unique names for LearningRateMonitor


def test_matrices_decay_while_biases_layernorm_and_log_variances_do_not(model):
    weighting = UncertaintyWeighting(["a", "b"])
    groups = param_groups(model, weighting, optim())
    decay = {k: v[1] for k, v in settings_of(groups).items()}
    for name, param in list(model.named_parameters()) + [("log_vars", weighting.log_vars)]:
        assert decay[id(param)] == (0.05 if param.dim() >= 2 else 0.0), name
    assert decay[id(model.encoder.embeddings.LayerNorm.weight)] == 0.0
    # every trainable tensor is in exactly one group
    counted = [id(p) for g in groups for p in g["params"]]
    assert len(counted) == len(set(counted)) == len(list(model.parameters())) + 1
