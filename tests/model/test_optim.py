"""AdamW: parameter groups (layer depth, layer-wise LR decay, weight decay by tensor rank), its
implementations (optim.adamw_impl), frozen word embeddings (backbone.freeze_embeddings) and
frozen lower layers (backbone.freeze_layers)."""

from __future__ import annotations

import pytest
import torch
from box import Box
from transformers import BertModel

from mtl.errors import ConfigError
from mtl.harness.bench.meter import to_device
from mtl.harness.bench.setup import PlainStep, Setup
from mtl.model.network import MultiTaskModel
from mtl.model.optim import adamw_kwargs, layer_depth, param_groups
from mtl.model.weighting import UncertaintyWeighting

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


# --- AdamW implementations, frozen embeddings ---


def trained_step(cfg, steps: int = 4) -> PlainStep:
    """`steps` steps of forward, loss, backward, clipping, AdamW and scheduler on the fixture rows."""
    setup = Setup(cfg, None)
    step = PlainStep(setup, setup.module(), steps)
    batches = iter(setup.loader())
    for _ in range(steps):
        step(to_device(next(batches), setup.device))
    return step


def weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_fused_and_foreach_adamw_give_the_for_loop_weights_to_float_rounding(tiny_cfg):
    reference = weights(trained_step(tiny_cfg("optim.adamw_impl=for_loop")).module)
    for impl in ("fused", "foreach", "auto"):
        step = trained_step(tiny_cfg(f"optim.adamw_impl={impl}"))
        assert step.optimizer.defaults["fused"] == (impl in ("fused", "auto"))
        diff = (weights(step.module) - reference).abs().max().item()
        assert diff < 1e-6, (impl, diff)
    assert not torch.equal(reference, weights(Setup(tiny_cfg(), None).module()))  # it trained


def test_auto_falls_back_to_foreach_where_torch_has_no_fused_kernel():
    meta = [torch.zeros(2, device="meta")]
    assert adamw_kwargs(meta, "auto") == {"fused": False, "foreach": True}
    with pytest.raises(ConfigError, match="optim.adamw_impl=fused"):
        adamw_kwargs(meta, "fused")


def test_a_bad_adamw_impl_is_a_config_error_listing_the_choices(tiny_cfg):
    with pytest.raises(ConfigError, match="optim.adamw_impl.*auto, fused, foreach, for_loop"):
        tiny_cfg("optim.adamw_impl=fast")


def test_frozen_word_embeddings_leave_the_optimizer_and_do_not_move(tiny_cfg):
    free = trained_step(tiny_cfg(), steps=1)
    frozen = trained_step(tiny_cfg("backbone.freeze_embeddings=true"), steps=1)
    embeddings = frozen.module.model.encoder.get_input_embeddings().weight
    before = Setup(tiny_cfg(), None).module().model.encoder.get_input_embeddings().weight

    assert not embeddings.requires_grad and embeddings.grad is None
    assert torch.equal(embeddings, before)  # unchanged after a training step
    assert not torch.equal(free.module.model.encoder.get_input_embeddings().weight, before)
    in_optimizer = {id(p) for p in frozen.params}
    assert id(embeddings) not in in_optimizer
    assert len(free.params) - len(frozen.params) == 1
    counted = sum(p.numel() for p in free.params) - sum(p.numel() for p in frozen.params)
    assert counted == embeddings.numel()
    # the rest of the encoder still trains
    layer = frozen.module.model.encoder.encoder.layer[0].output.dense.weight
    assert id(layer) in in_optimizer and layer.grad is not None


def test_frozen_lower_layers_leave_the_optimizer_and_do_not_move_while_the_top_trains(tiny_cfg):
    before = Setup(tiny_cfg(), None).module().model.encoder
    step = trained_step(tiny_cfg("backbone.freeze_layers=1"), steps=1)
    encoder = step.module.model.encoder
    in_optimizer = {id(p) for p in step.params}
    old = dict(before.named_parameters())
    frozen = [
        n
        for n, _ in encoder.named_parameters()
        if n.startswith(("embeddings.", "encoder.layer.0."))
    ]
    assert len(frozen) > 10  # every embedding table, their norm, all of layer 0
    for name, param in encoder.named_parameters():
        if name in frozen:
            assert not param.requires_grad and id(param) not in in_optimizer, name
            assert torch.equal(param, old[name]), name  # unchanged after a training step
        else:  # layer 1 (the top of 2) and the pooler train as before
            assert param.requires_grad and id(param) in in_optimizer, name
    top = "encoder.layer.1.output.dense.weight"
    assert not torch.equal(dict(encoder.named_parameters())[top], old[top])


def test_freeze_layers_beyond_the_encoder_depth_is_refused_naming_the_range(tiny_cfg):
    from mtl.backbone import load_encoder

    cfg = tiny_cfg(f"backbone.freeze_layers={LAYERS + 1}")
    with pytest.raises(ConfigError, match=f"has {LAYERS} layers. Use 0..{LAYERS}"):
        load_encoder(cfg.backbone)
    with pytest.raises(ConfigError, match="backbone.freeze_layers"):
        tiny_cfg("backbone.freeze_layers=-1")
    every = load_encoder(tiny_cfg(f"backbone.freeze_layers={LAYERS}").backbone)
    assert [n for n, p in every.named_parameters() if p.requires_grad] == [
        "pooler.dense.weight", "pooler.dense.bias"
    ]  # fmt: skip


def test_freeze_embeddings_must_be_a_bool(tiny_cfg):
    with pytest.raises(ConfigError, match="backbone.freeze_embeddings"):
        tiny_cfg("backbone.freeze_embeddings=3")


def test_bf16_mixed_training_clips_a_fused_adamw_around_lightnings_refusal(tiny_cfg, monkeypatch):
    # Lightning raises for any fused optimizer + clipping under mixed precision (its issue
    # #21435), though bf16 has no GradScaler: the module clips these gradients itself
    from mtl.run.train import train

    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def counting(params, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting)
    cfg = tiny_cfg("trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5")
    assert cfg.optim.adamw_impl == "auto"  # fused on this CPU (test above)
    results = train(cfg)
    assert calls and set(calls) == {0.5}
    assert results["score"] is not None


@pytest.mark.parametrize(
    ("precision", "clip", "allowed"),
    [
        ("16-mixed", 1.0, False),
        ("16-mixed", 0.0, True),
        ("bf16-mixed", 1.0, True),
        ("32-true", 1.0, True),
    ],
)
def test_fp16_with_clipping_keeps_auto_off_the_fused_kernel(precision, clip, allowed, tiny_cfg):
    from mtl.model.optim import fused_allowed

    trainer = Box(precision=precision, gradient_clip_val=clip)
    assert fused_allowed(trainer) is allowed
    params = [torch.nn.Parameter(torch.zeros(2))]
    flags = adamw_kwargs(params, "auto", fused_allowed(trainer))
    assert flags["fused"] is allowed and flags["foreach"] is not allowed
    if not allowed:
        with pytest.raises(ConfigError, match="trainer.precision=bf16-mixed"):
            tiny_cfg("optim.adamw_impl=fused", f"trainer.precision={precision}")
