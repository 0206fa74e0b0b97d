"""Gradient-conflict monitoring (mtl/model/gradients.py): the cosine / share / norm arithmetic on
hand-made gradients, per-task gradients that leave the real backward alone, and the TensorBoard
tags of a tiny run (which trains exactly as it does without monitoring)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import scalar_tags

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import ConfigError
from mtl.model.gradients import (
    ConflictMonitor,
    gramians,
    group_slices,
    shared_parameters,
    task_jacobian,
)

TASKS = ["toxicity", "emotion", "sentiment"]
# columns 0-1: embeddings, 2-3: layers
SLICES = {"embeddings": [slice(0, 2)], "layers": [slice(2, 4)]}


def test_cosines_shares_and_norms_of_hand_made_gradients():
    monitor = ConflictMonitor(TASKS, every=1)
    jacobian = torch.tensor(
        [
            [1.0, 0.0, 3.0, 0.0],  # toxicity
            [-1.0, 1.0, 4.0, 0.0],  # emotion: against toxicity on the embeddings only
            [0.0, 2.0, 0.0, -5.0],  # sentiment
        ]
    )
    metrics = monitor.update(gramians(jacobian, SLICES), [True, True, True])
    # embeddings: (1,0)·(-1,1) = -1, norms 1 and √2
    assert metrics["grad/cos/embeddings/toxicity__emotion"] == pytest.approx(-1 / math.sqrt(2))
    # layers: (3,0)·(4,0) = 12 = 3·4: parallel
    assert metrics["grad/cos/layers/toxicity__emotion"] == pytest.approx(1.0)
    # whole encoder: (1,0,3,0)·(-1,1,4,0) = 11, norms √10 and √18
    assert metrics["grad/cos/toxicity__emotion"] == pytest.approx(11 / math.sqrt(10 * 18))
    assert metrics["grad/cos/toxicity__sentiment"] == pytest.approx(0.0)
    assert metrics["grad/cos/emotion__sentiment"] == pytest.approx(2 / math.sqrt(18 * 29))
    assert metrics["grad/norm/toxicity"] == pytest.approx(math.sqrt(10))
    assert metrics["grad/norm/embeddings/sentiment"] == pytest.approx(2.0)
    assert metrics["grad/norm/layers/sentiment"] == pytest.approx(5.0)
    # a group where a task's gradient is zero has no cosine with it (layers: sentiment vs the
    # others is defined; embeddings of toxicity vs sentiment: (1,0)·(0,2) = 0, not negative)
    assert metrics["grad/conflict/embeddings/toxicity__emotion"] == 1.0
    assert metrics["grad/conflict/toxicity__emotion"] == 0.0
    assert metrics["grad/conflict/toxicity__sentiment"] == 0.0  # 0 is no conflict

    # second step: the embeddings agree now; the running share is 1 of 2
    jacobian[1, 0] = 1.0
    metrics = monitor.update(gramians(jacobian, SLICES), [True, True, True])
    assert metrics["grad/conflict/embeddings/toxicity__emotion"] == 0.5
    assert monitor.counts["embeddings/toxicity__emotion"] == [1, 2]


def test_a_task_without_rows_gets_no_cosine_and_does_not_count():
    monitor = ConflictMonitor(TASKS, every=1)
    jacobian = torch.tensor([[1.0, 0.0, 1.0, 0.0], [-1.0, 0.0, -1.0, 0.0], [0.0] * 4])
    metrics = monitor.update(gramians(jacobian, SLICES), [True, True, False])
    assert not any("sentiment" in key for key in metrics)
    assert metrics["grad/conflict/toxicity__emotion"] == 1.0
    metrics = monitor.update(gramians(jacobian, SLICES), [True, False, True])
    assert "grad/cos/toxicity__emotion" not in metrics
    assert monitor.counts["toxicity__emotion"] == [1, 1]  # unchanged by the step without emotion
    state = monitor.state_dict()
    resumed = ConflictMonitor(TASKS, every=1)
    resumed.load_state_dict(state)
    assert resumed.counts == monitor.counts


def test_monitoring_is_due_every_n_steps_and_never_when_off():
    assert [ConflictMonitor(TASKS, 3).due(s) for s in range(7)] == [1, 0, 0, 1, 0, 0, 1]
    assert not any(ConflictMonitor(TASKS, 0).due(s) for s in range(5))


def test_task_gradients_leave_the_real_backward_unchanged():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 3)
    heads = [torch.nn.Linear(3, 1) for _ in range(2)]
    x = torch.randn(5, 4)

    def losses():
        h = torch.tanh(shared(x))
        return [heads[0](h).pow(2).mean(), (heads[1](h) - 1).abs().mean()]

    params = list(shared.parameters())
    first, second = losses()
    expected = [torch.autograd.grad(loss, params, retain_graph=True) for loss in (first, second)]
    (first + second).backward()
    untouched = [p.grad.clone() for p in params]
    for p in [*params, *heads[0].parameters(), *heads[1].parameters()]:
        p.grad = None

    first, second = losses()
    jacobian = task_jacobian([first, second], params, [True, True])
    (first + second).backward()  # after the per-task gradients, on the same graph
    assert all(torch.equal(p.grad, g) for p, g in zip(params, untouched, strict=True))
    for k in range(2):
        flat = torch.cat([g.reshape(-1) for g in expected[k]])
        assert torch.allclose(jacobian[k], flat)
    assert jacobian.shape == (2, sum(p.numel() for p in params))
    absent = task_jacobian(losses(), params, [True, False])  # the second task has no rows
    assert torch.equal(absent[1], torch.zeros(15))


def test_encoder_parameters_split_into_embeddings_and_layers(tiny_backbone):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_backbone)
    groups = {name: group for name, _, group in shared_parameters(encoder)}
    assert groups["embeddings.word_embeddings.weight"] == "embeddings"
    assert groups["embeddings.LayerNorm.bias"] == "embeddings"
    assert groups["encoder.layer.0.attention.self.query.weight"] == "layers"
    assert groups["encoder.layer.1.output.dense.weight"] == "layers"
    slices = group_slices(shared_parameters(encoder))
    total = sum(s.stop - s.start for parts in slices.values() for s in parts)
    assert total == sum(p.numel() for p in encoder.parameters())


def test_monitoring_under_fsdp_is_refused_and_off_by_default():
    assert load_config(DEFAULT_CONFIG).gradient.log_every_n_steps == 0
    with pytest.raises(ConfigError, match="FSDP"):
        load_config(DEFAULT_CONFIG, ["gradient.log_every_n_steps=5", "trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match="log_every_n_steps"):
        load_config(DEFAULT_CONFIG, ["gradient.log_every_n_steps=-1"])


def test_monitoring_logs_its_tags_and_trains_exactly_as_without(tiny_cfg):
    from mtl.run.train import train

    common = ["trainer.max_epochs=1", "backbone.dropout=0.1", "trainer.accumulate_grad_batches=2"]
    plain = tiny_cfg(*common, "run.name=plain")
    watched = tiny_cfg(*common, "run.name=watched", "gradient.log_every_n_steps=2")
    train(plain)
    train(watched)
    runs = [Path(c.run.output_dir) / c.run.name for c in (plain, watched)]
    states = [
        torch.load(r / "fold_0" / "last.ckpt", map_location="cpu", weights_only=True) for r in runs
    ]
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]), key
    counts = states[1]["mtl_grad_monitor"]["counts"]
    steps = states[1]["global_step"]
    assert counts["toxicity__emotion"][1] == math.ceil(steps / 2)  # steps 0, 2, 4, ...

    tags = scalar_tags(runs[1] / "tensorboard")
    pairs = ["toxicity__emotion", "toxicity__sentiment", "emotion__sentiment"]
    for pair in pairs:
        for group in ("", "embeddings/", "layers/"):
            assert f"grad/cos/{group}{pair}" in tags
            assert f"grad/conflict/{group}{pair}" in tags
    assert {f"grad/norm/{t}" for t in TASKS} <= tags
    assert {f"grad/norm/layers/{t}" for t in TASKS} <= tags
    assert not any(t.startswith("grad/") for t in scalar_tags(runs[0] / "tensorboard"))
    # report.png grows a conflict row (mtl/run/conflict_panel.py) only where there is data
    from PIL import Image

    heights = [Image.open(r / "report.png").size[1] for r in runs]
    assert heights[1] > heights[0]
    # report.md's table: every pair and group for the monitored run, nothing for the plain one
    watched_md, plain_md = ((r / "report.md").read_text() for r in (runs[1], runs[0]))
    assert "## Gradient conflict" in watched_md and "Gradient conflict" not in plain_md
    for pair in pairs:
        for group in ("whole encoder", "embeddings", "layers"):
            assert f"| {pair.replace('__', ' · ')} | {group} |" in watched_md


def test_the_conflict_table_summarises_the_logged_cosines(tmp_path):
    from mtl.run.conflict_panel import conflict_markdown

    log = tmp_path / "csv" / "fold_0"
    log.mkdir(parents=True)
    pd.DataFrame(
        {
            "step": [0, 5, 10, 15, 20],
            "grad/cos/a__b": [0.5, -0.1, -0.3, 0.2, None],  # step 20: b had no rows
            "grad/norm/a": [1.0, 2.0, 3.0, 4.0, 5.0],
            "grad/norm/b": [2.0, 2.0, 2.0, 2.0, None],
            "train/loss": [1.0, 1.0, 1.0, 1.0, 1.0],
        }
    ).to_csv(log / "metrics.csv", index=False)
    table = conflict_markdown(tmp_path, [0])
    assert "| a · b | whole encoder | +0.075 | +0.050 | 50.0% | 4 |" in table
    assert "a 3, b 2." in table
    assert conflict_markdown(tmp_path, [1]) == ""  # no logs for that fold
