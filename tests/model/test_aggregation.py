"""Jacobian descent through torchjd (`gradient.aggregator`, mtl/model/aggregation.py): PCGrad by
hand, rows of absent tasks, two gloo processes against one on the union batch, the manual
optimisation path against Lightning's automatic one, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import ConfigError
from mtl.model.aggregation import JacobianDescent, check_installed, make_aggregator

TWO = ["toxicity", "sentiment"]


def with_jacobian(jacobian: torch.Tensor) -> torch.nn.Parameter:
    """A parameter whose `.jac` holds `jacobian` (K, P), as mtl_backward leaves it."""
    param = torch.nn.Parameter(torch.zeros(jacobian.shape[1]))
    param.jac = jacobian.clone()
    return param


def test_pcgrad_on_two_conflicting_gradients_by_hand():
    # g1·g2 = -1 < 0: g1' = g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5); g2' = g2 - (g2·g1/|g1|²) g1 = (0, 1)
    jd = JacobianDescent("pcgrad", TWO, seed=0)
    jd.present = torch.tensor([True, True])
    param = with_jacobian(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    jd.step_gradients([param], [], torch.ones(2), window=1, step=0)
    assert param.grad.tolist() == pytest.approx([0.5, 1.5])
    assert not hasattr(param, "jac")  # consumed
    assert jd.last_weights == pytest.approx({"toxicity": 2.0, "sentiment": 1.5})


def test_a_task_without_rows_contributes_no_row():
    # MGDA's min-norm point of {g, 0} is 0: a zero row for the absent task would stop training
    jd = JacobianDescent("mgda", TWO, seed=0)
    jd.present = torch.tensor([True, False])
    param = with_jacobian(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    jd.step_gradients([param], [], torch.ones(2), window=1, step=0)
    assert param.grad.tolist() == pytest.approx([1.0, 2.0])
    assert set(jd.last_weights) == {"toxicity"}


def test_window_length_and_task_weights_scale_rows_and_heads():
    jd = JacobianDescent("upgrad", TWO, seed=0)
    jd.present = torch.tensor([True, True])
    param = with_jacobian(torch.tensor([[4.0, 0.0], [0.0, 2.0]]))  # summed over a window of 2
    head = torch.nn.Linear(1, 1, bias=False)
    head.weight.grad = torch.tensor([[6.0]])
    monitored = jd.step_gradients(
        [param], [head, torch.nn.Identity()], torch.tensor([0.5, 1.0]), 2, 0
    )
    assert monitored.tolist() == [[2.0, 0.0], [0.0, 1.0]]  # unweighted window mean
    # orthogonal rows (1, 0) and (0, 1): UPGrad leaves them alone and averages them
    assert param.grad.tolist() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert head.weight.grad.item() == pytest.approx(6.0 / 2 * 0.5)


NAMES = ("upgrad", "pcgrad")


def _worker(rank: int, world: int, store: str, out: str) -> None:
    """Each aggregator's step on this process's share of a fixed batch (all of it if world == 1)."""
    import torch.distributed as dist

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    grads = {name: _step(rank, world, name) for name in NAMES}
    if rank == 0:
        torch.save(grads, out)
    if world > 1:
        dist.destroy_process_group()


def _step(rank: int, world: int, name: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 3)
    heads = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 2)]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=gen)
    y = torch.randint(0, 2, (8,), generator=gen)
    task = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])  # rank 0's half holds no row of task 1
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    x, y, task = x[rows], y[rows], task[rows]
    expected_rows = 8 / world / 2  # task_loss_norm: expected (per batch, 2 tasks alike)
    features = torch.tanh(shared(x))
    losses = [
        heads[0](features[task == 0]).squeeze(1).sub(y[task == 0]).pow(2).sum() / expected_rows,
        torch.nn.functional.cross_entropy(
            heads[1](features[task == 1]), y[task == 1], reduction="sum"
        )
        / expected_rows,
    ]
    jd = JacobianDescent(name, TWO, seed=0)
    jd.backward(losses, [bool((task == k).any()) for k in range(2)], features, heads)
    jd.step_gradients(list(shared.parameters()), heads, torch.ones(2), window=1, step=0)
    return [p.grad for p in (*shared.parameters(), *heads[0].parameters(), *heads[1].parameters())]


def test_two_gloo_processes_step_as_one_process_on_the_union_batch(tmp_path):
    _worker(0, 1, "", str(tmp_path / "one.pt"))
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "two.pt")), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name in NAMES:
        for a, b in zip(one[name], two[name], strict=True):
            assert torch.allclose(a, b, atol=1e-6), (name, a, b)


def test_aggregators_that_need_an_extra_name_the_install(monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(
        torchjd._mixins, "find_spec", lambda n: None if n in ("cvxpy", "ecos") else real(n)
    )
    for name, extra in (("cagrad", "cagrad"), ("nash_mtl", "nash-mtl")):
        cfg = load_config(DEFAULT_CONFIG, [f"gradient.aggregator={name}"])  # validates anyway
        with pytest.raises(ConfigError, match=rf"pip install -e '\.\[{extra}\]'"):
            check_installed(cfg)
    check_installed(load_config(DEFAULT_CONFIG, ["gradient.aggregator=upgrad"]))
    for name in ("upgrad", "mgda", "pcgrad", "imtl_g", "aligned_mtl", "dualproj"):
        make_aggregator(name, 3)


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss_weighting=uncertainty", "loss_weighting must be equal"),
        ("loss_weighting=famo", "loss_weighting must be equal"),
        ("trainer.precision=16-mixed", "bf16-mixed or 32-true"),
        ("trainer.strategy=fsdp", "FSDP"),
        ("trainer.compile=true", "trainer.compile=false"),
    ],
)
def test_combinations_the_aggregators_cannot_honour_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_CONFIG, ["gradient.aggregator=upgrad", override])
    load_config(DEFAULT_CONFIG, ["gradient.aggregator=upgrad", "loss_weighting=fixed"])


def test_manual_jacobian_step_with_the_sum_aggregator_is_the_automatic_step(tiny_cfg, monkeypatch):
    """Accumulation (with a partial last window), clipping, the LR schedule, heads and the number
    of optimizer steps: the manual path with torchjd's Sum equals Lightning's own equal-weighted
    training."""
    from torchjd.aggregation import Sum

    import mtl.model.aggregation
    from mtl.run.train import train

    common = [
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=3",
        "trainer.gradient_clip_val=0.05",  # small enough to clip
        "early_stopping.enabled=false",
        "cv.selection=last",
    ]
    automatic = tiny_cfg(*common, "run.name=automatic")
    train(automatic)
    monkeypatch.setattr(mtl.model.aggregation, "make_aggregator", lambda name, n: Sum())
    manual = tiny_cfg(*common, "run.name=manual", "gradient.aggregator=mgda")
    train(manual)
    states = [
        torch.load(Path(c.run.output_dir) / c.run.name / "fold_0" / "last.ckpt", weights_only=True)
        for c in (automatic, manual)
    ]
    assert states[0]["global_step"] == states[1]["global_step"]
    assert (
        states[0]["lr_schedulers"][0]["last_epoch"] == states[1]["lr_schedulers"][0]["last_epoch"]
    )
    for key, value in states[0]["state_dict"].items():
        assert torch.allclose(value, states[1]["state_dict"][key], atol=2e-5), key


def test_upgrad_trains_a_tiny_kfold_run_in_bf16_with_accumulation(tiny_cfg):
    from mtl.run.train import train

    cfg = tiny_cfg(
        "gradient.aggregator=upgrad",
        "cv.n_splits=2",
        "trainer.max_epochs=1",
        "trainer.accumulate_grad_batches=2",
        "trainer.precision=bf16-mixed",
        "gradient.log_every_n_steps=1",
    )
    results = train(cfg)
    run = Path(cfg.run.output_dir) / cfg.run.name
    assert set(results["tasks"]) == {"toxicity", "emotion", "sentiment"}
    for fold in (0, 1):
        metrics = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())
        assert all(math.isfinite(v) for v in metrics["metrics"].values())
        ckpt = torch.load(run / f"fold_{fold}" / "last.ckpt", weights_only=True)
        monitored = ckpt["mtl_grad_monitor"]["counts"]["toxicity__emotion"][1]
        assert 0 < monitored <= ckpt["global_step"]  # the aggregator's Jacobian, every step


@pytest.mark.parametrize("method", ["gradient.aggregator=pcgrad", "loss_weighting=famo"])
def test_a_fold_resumed_after_a_crash_ends_as_the_uninterrupted_one(
    tiny_cfg, monkeypatch, caplog, method
):
    """Checkpoint / resume: the optimizer, the LR schedule we step, PCGrad's seeded task order,
    FAMO's logits and Adam moments all continue where the last checkpoint left them."""
    import lightning as L

    import mtl.run.fit
    from mtl.run.train import train

    common = [
        method,
        "trainer.max_epochs=3",
        "backbone.dropout=0.1",
        "early_stopping.enabled=false",
    ]
    clean = train(tiny_cfg(*common, "run.name=clean"))

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise SystemExit("simulated crash")

    original = mtl.run.fit.make_trainer
    monkeypatch.setattr(
        mtl.run.fit,
        "make_trainer",
        lambda cfg, fold_dir, run_dir, fold, callbacks=None: original(
            cfg, fold_dir, run_dir, fold, [Crash()]
        ),
    )
    cfg = tiny_cfg(*common, "run.name=crashed")
    with pytest.raises(SystemExit):
        train(cfg)
    monkeypatch.setattr(mtl.run.fit, "make_trainer", original)
    with caplog.at_level("INFO", logger="mtl.run.fit"):
        resumed = train(cfg)
    assert "fold 0: resuming from" in caplog.text
    assert {k: v for k, v in resumed.items() if k != "run"} == {
        k: v for k, v in clean.items() if k != "run"
    }


def test_gradient_checkpointing_gives_the_same_jacobian_step(tiny_cfg):
    """Checkpointing re-runs the forward (dropout included) inside the backward, which torch.vmap
    refuses: the tasks' backward passes then run one at a time, to the same result."""
    from mtl.run.train import train

    common = ["gradient.aggregator=upgrad", "trainer.max_epochs=1", "backbone.dropout=0.1"]
    plain = tiny_cfg(*common, "run.name=plain")
    checkpointed = tiny_cfg(*common, "run.name=ckpt", "backbone.gradient_checkpointing=true")
    train(plain)
    train(checkpointed)
    states = [
        torch.load(Path(c.run.output_dir) / c.run.name / "fold_0" / "last.ckpt", weights_only=True)
        for c in (plain, checkpointed)
    ]
    for key, value in states[0]["state_dict"].items():
        assert torch.allclose(value, states[1]["state_dict"][key], atol=1e-5), key
