"""The multi-task methods under DDP on two CPU processes (gloo) through scripts/train.py: Jacobian
descent (manual optimisation, DDP's own gradient reduction blocked, each task's gradient averaged
by mtl/model/aggregation.py), FAMO (losses averaged over ranks) and the conflict monitor on both
the manual and the automatic path. The numbers themselves (two
processes = one process on the union batch) are checked in tests/model/test_aggregation.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_train_script, tiny_overrides


@pytest.mark.parametrize(
    "method",
    [
        ["gradient.aggregator=upgrad", "gradient.log_every_n_steps=2"],
        ["loss_weighting=famo", "gradient.log_every_n_steps=2"],
    ],
    ids=["upgrad", "famo_and_monitoring"],
)
def test_methods_train_under_ddp_on_two_cpu_processes(tiny_backbone, data_dir, tmp_path, method):
    argv = tiny_overrides(tiny_backbone, data_dir, tmp_path) + [
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.accumulate_grad_batches=2",
        *method,
    ]
    done = run_train_script(argv, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "tiny"
    fold = json.loads((run / "fold_0" / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in fold["metrics"].values())
    last = torch.load(run / "fold_0" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] > 0
    if "loss_weighting=famo" in method:
        assert int(last["state_dict"]["weighting.updates"]) == last["global_step"]
    # monitored on both paths: the aggregator's Jacobian, or autograd.grad inside DDP's forward
    assert last["mtl_grad_monitor"]["counts"]["toxicity__emotion"][1] > 0
