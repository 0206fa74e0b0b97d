"""FAMO (mtl/model/weighting/famo.py): its loss and weights against hand-computed values, the ξ
update against Adam, absent tasks, checkpointing, and a tiny k-fold run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import ConfigError
from mtl.model.weighting import FAMOWeighting, build_weighting
from mtl.model.weighting.famo import replayed_rng, rng_state

TWO = ["toxicity", "sentiment"]


def losses_of(names: list[str], *values: float) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(v, requires_grad=True) for n, v in zip(names, values, strict=True)}


def test_famo_loss_value_and_weights_by_hand():
    famo = FAMOWeighting(TWO)  # ξ = 0: z = (1/2, 1/2)
    losses = losses_of(TWO, 1.0, 2.0)
    total = famo(losses, dict.fromkeys(TWO, True))
    # c = 1 / (0.5/1 + 0.5/2) = 4/3; weights P·c·z/L = 2·(2/3, 1/3); value P·c·Σ z log L
    assert total.item() == pytest.approx(2 * (4 / 3) * 0.5 * math.log(2.0), rel=1e-6)
    total.backward()
    assert losses["toxicity"].grad.item() == pytest.approx(4 / 3, rel=1e-6)
    assert losses["sentiment"].grad.item() == pytest.approx(2 / 3, rel=1e-6)
    weights = famo.task_weights()
    assert float(weights["toxicity"] + weights["sentiment"]) == pytest.approx(2.0)


def test_famo_weight_update_on_two_losses_by_hand():
    famo = FAMOWeighting(TWO, lr=0.025, decay=0.0)
    present = dict.fromkeys(TWO, True)
    famo(losses_of(TWO, 1.0, 2.0), present)
    famo.post_step(losses_of(TWO, 0.5, 1.8), present)  # toxicity's loss fell more
    # δ = (log 2, log(2/1.8)); ∇_ξ zᵀδ = z ⊙ (δ − zᵀδ) = ±0.5·(log 2 − log(2/1.8))/2
    delta = torch.tensor([math.log(2.0), math.log(2.0 / 1.8)])
    grad = 0.5 * (delta - delta.mean())
    assert grad[0] > 0 > grad[1]
    # Adam's first step is lr · g / (|g| + eps): ±lr
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)
    z = torch.softmax(famo.logits, 0)
    assert z[0] < 0.5 < z[1]  # the task that improved more loses weight
    # and the next step's weights follow: P·c·z/L with the new z
    losses = losses_of(TWO, 1.0, 1.0)
    famo(losses, present).backward()
    assert losses["toxicity"].grad.item() == pytest.approx(2 * float(z[0]), rel=1e-5)


def test_famo_logit_updates_are_torch_adam_with_l2_decay():
    lr, decay = 0.05, 0.01
    famo = FAMOWeighting(TWO + ["emotion"], lr=lr, decay=decay)
    names = TWO + ["emotion"]
    reference = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=lr, weight_decay=decay)
    present = dict.fromkeys(names, True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = (torch.rand(3, generator=gen) + 0.5).tolist()
        after = (torch.rand(3, generator=gen) + 0.5).tolist()
        famo(losses_of(names, *before), present)
        famo.post_step(losses_of(names, *after), present)
        delta = torch.log(torch.tensor(before) + 1e-8) - torch.log(torch.tensor(after) + 1e-8)
        z = torch.softmax(reference, 0)
        (reference.grad,) = torch.autograd.grad(z, reference, grad_outputs=delta)
        adam.step()
        assert famo.logits.tolist() == pytest.approx(reference.tolist(), abs=1e-5)


def test_famo_leaves_a_task_without_rows_out():
    names = TWO + ["emotion"]
    famo = FAMOWeighting(names)
    present = {"toxicity": True, "sentiment": True, "emotion": False}
    losses = losses_of(names, 1.0, 2.0, 0.0)
    total = famo(losses, present)
    total.backward()
    # as if only the two tasks existed: weights 4/3, 2/3 (P = 2), nothing for emotion
    assert losses["toxicity"].grad.item() == pytest.approx(4 / 3, rel=1e-6)
    assert losses["emotion"].grad.item() == 0.0
    assert math.isfinite(total.item())
    famo.post_step(losses_of(names, 0.5, 1.8, 0.0), present)
    assert famo.logits[2].item() == 0.0  # no δ for the absent task (decay of 0 is 0)
    assert famo.logits[0].item() < 0 < famo.logits[1].item()


def test_famo_validates_with_the_plain_sum_and_keeps_its_state_in_the_checkpoint():
    famo = FAMOWeighting(TWO)
    present = dict.fromkeys(TWO, True)
    for _ in range(3):
        famo(losses_of(TWO, 1.0, 2.0), present)
        famo.post_step(losses_of(TWO, 0.9, 1.95), present)
    famo.eval()
    assert famo(losses_of(TWO, 1.0, 2.0), present).item() == pytest.approx(3.0)
    state = torch.nn.ModuleDict({"weighting": famo}).state_dict()
    assert {"weighting.logits", "weighting.adam_m", "weighting.adam_v", "weighting.updates"} <= set(
        state
    )
    resumed = torch.nn.ModuleDict({"weighting": FAMOWeighting(TWO)})
    resumed.load_state_dict(state)
    assert torch.equal(resumed["weighting"].logits, famo.logits)
    assert int(resumed["weighting"].updates) == 3


def test_replayed_rng_draws_the_same_dropout_masks_and_leaves_the_stream_alone():
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(64)
    state = rng_state(torch.device("cpu"))
    first = dropout(x)
    following = torch.rand(3)
    torch.set_rng_state(state["cpu"])
    dropout(x)
    with replayed_rng(state):
        assert torch.equal(dropout(x), first)
    assert torch.equal(torch.rand(3), following)  # as if the replay had not run


def test_famo_config_keys_are_built_and_checked():
    cfg = load_config(
        DEFAULT_CONFIG, ["loss_weighting=famo", "weighting.famo_lr=0.1", "weighting.famo_decay=0"]
    )
    famo = build_weighting(cfg)
    assert isinstance(famo, FAMOWeighting) and (famo.lr, famo.decay) == (0.1, 0.0)
    for bad in ("weighting.famo_lr=0", "weighting.famo_lr=inf", "weighting.famo_decay=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(DEFAULT_CONFIG, ["loss_weighting=famo", bad])
    with pytest.raises(ConfigError, match="famo.*fsdp|FSDP"):
        load_config(DEFAULT_CONFIG, ["loss_weighting=famo", "trainer.strategy=fsdp"])


def test_famo_trains_a_tiny_kfold_run_and_moves_its_weights(tiny_cfg):
    from mtl.run.train import train

    cfg = tiny_cfg(
        "loss_weighting=famo",
        "cv.n_splits=2",
        "trainer.max_epochs=1",
        "backbone.dropout=0.1",
        "trainer.accumulate_grad_batches=2",
    )
    results = train(cfg)
    assert set(results["tasks"]) == {"toxicity", "emotion", "sentiment"}
    run = __import__("pathlib").Path(cfg.run.output_dir) / cfg.run.name
    for fold in (0, 1):
        ckpt = torch.load(run / f"fold_{fold}" / "last.ckpt", map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
        assert int(state["weighting.updates"]) == ckpt["global_step"] > 0  # one update per step
        assert state["weighting.logits"].abs().sum() > 0
        metrics = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())["metrics"]
        assert all(math.isfinite(v) for v in metrics.values())


def _famo_worker(rank: int, world: int, store: str, out: str) -> None:
    """FAMO on one rank's losses (rank 0: 1.0 and 2.0 before, 0.5 and 1.8 after; rank 1: other)."""
    import torch.distributed as dist

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    before = [[1.0, 2.0], [3.0, 1.0]]
    after = [[0.5, 1.8], [2.9, 0.7]]
    famo = FAMOWeighting(TWO)
    present = dict.fromkeys(TWO, True)
    if world == 1:  # one process on the union batch: the ranks' mean losses
        b, a = torch.tensor(before).mean(0).tolist(), torch.tensor(after).mean(0).tolist()
    else:
        b, a = before[rank], after[rank]
    famo(losses_of(TWO, *b), present)
    famo.post_step(losses_of(TWO, *a), present)
    torch.save(famo.logits, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


def test_famo_logits_agree_across_gloo_ranks_and_with_the_union_batch(tmp_path):
    import torch.multiprocessing as mp

    _famo_worker(0, 1, "", str(tmp_path / "one"))
    mp.spawn(_famo_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "two")), nprocs=2)
    one = torch.load(tmp_path / "one.0")
    ranks = [torch.load(tmp_path / f"two.{r}") for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])
    assert torch.allclose(ranks[0], one, atol=1e-6)
    assert one.abs().sum() > 0
