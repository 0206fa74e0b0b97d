"""AdamW implementations (optim.adamw_impl) and frozen word embeddings (backbone.freeze_embeddings)."""

from __future__ import annotations

import pytest
import torch

from mtl.bench.meter import to_device
from mtl.bench.setup import PlainStep, Setup
from mtl.errors import ConfigError
from mtl.optim import adamw_kwargs


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


def test_freeze_embeddings_must_be_a_bool(tiny_cfg):
    with pytest.raises(ConfigError, match="backbone.freeze_embeddings"):
        tiny_cfg("backbone.freeze_embeddings=3")
