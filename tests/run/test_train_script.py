"""End to end: `python scripts/train.py` writes the run folder; one-task and multiclass configs train."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import (
    EMOTIONS,
    TOPICS,
    make_topics,
    run_train_script,
    scalar_tags,
    tiny_overrides,
    topic_task,
)

from mtl.cli.train import main


@pytest.fixture(scope="module")
def script_run(tiny_backbone, data_dir, tmp_path_factory):
    """One real `python scripts/train.py` run (1 epoch, three tasks); shared by the tests below."""
    out = tmp_path_factory.mktemp("script_run")
    # uncertainty weighting (not the default), so that its σ curves are logged and checked
    argv = tiny_overrides(tiny_backbone, data_dir, out) + [
        "trainer.max_epochs=1",
        "loss_weighting=uncertainty",
    ]
    return run_train_script(argv), out / "tiny"


def test_train_script_exits_0_and_reports_the_run_folder(script_run):
    proc, run = script_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"run folder {run}" in proc.stdout
    assert "done: val-set score" in proc.stdout and "selection-biased" in proc.stdout


def test_train_script_writes_the_run_folder(script_run):
    proc, run = script_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "results.json", "fold_0/best.ckpt", "fold_0/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1  # the resolved config, overrides applied
    assert config["tasks"]["emotion"]["loss"] == "bce"  # defaults filled in
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == {"toxicity", "emotion", "sentiment"}
    assert 0.0 <= results["score"] <= 1.0
    for task in results["tasks"].values():
        assert "f1_macro" in task["mean"]


def test_train_script_logs_per_task_curves_to_tensorboard(script_run):
    proc, run = script_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = scalar_tags(run / "tensorboard")
    for tag in ("val/score", "val/toxicity/f1_macro", "sigma/emotion", "weight/sentiment"):
        assert tag in tags, sorted(tags)


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_checkpoint_loads_with_weights_only_and_carries_config_and_tasks(script_run, name):
    proc, run = script_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "fold_0" / name, map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["config"] == yaml.safe_load((run / "config.yaml").read_text())
    tasks = hparams["tasks"]
    assert list(tasks) == ["toxicity", "emotion", "sentiment"]
    assert tasks["emotion"]["type"] == "multilabel"
    assert tasks["emotion"]["classes"] == EMOTIONS
    assert tasks["toxicity"]["classes"] == [0, 1]
    assert hparams["backbone_config"]["hidden_size"] == 32  # rebuildable without the backbone
    assert any(k.startswith("weighting.log_vars") for k in ckpt["state_dict"])


def test_one_task_config_trains(tiny_backbone, data_dir, tmp_path, capsys):
    argv = tiny_overrides(tiny_backbone, data_dir, tmp_path) + [
        "tasks.emotion=null",
        "tasks.sentiment=null",
    ]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == {"toxicity"}
    ckpt = torch.load(run / "fold_0" / "best.ckpt", map_location="cpu", weights_only=True)
    assert list(ckpt["hyper_parameters"]["tasks"]) == ["toxicity"]
    assert not any("emotion" in k or "sentiment" in k for k in ckpt["state_dict"])


def test_multiclass_task_with_string_classes_trains(tiny_backbone, data_dir, tmp_path, capsys):
    folder = tmp_path / "topics"
    folder.mkdir()
    make_topics(120, 5).to_csv(folder / "train.csv", index=False)
    make_topics(40, 6).to_csv(folder / "val.csv", index=False)
    argv = tiny_overrides(tiny_backbone, data_dir, tmp_path) + [
        "tasks.emotion=null",
        "tasks.sentiment=null",
        *topic_task(folder / "train.csv", folder / "val.csv"),
        "trainer.max_epochs=1",
    ]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == {"toxicity", "topic"}
    assert "f1_macro" in results["tasks"]["topic"]["mean"]
    ckpt = torch.load(run / "fold_0" / "best.ckpt", map_location="cpu", weights_only=True)
    topic = ckpt["hyper_parameters"]["tasks"]["topic"]
    assert topic["type"] == "multiclass"
    assert topic["classes"] == TOPICS  # inferred from the training labels, sorted
    head = [v for k, v in ckpt["state_dict"].items() if "topic" in k and k.endswith("weight")]
    assert head and head[-1].shape[0] == 3  # one output per class


def test_short_one_epoch_run_with_onecycle_trains(tiny_backbone, data_dir, tmp_path):
    # one task, 120 rows, batch 16, 1 epoch: 8 optimiser steps
    argv = tiny_overrides(tiny_backbone, data_dir, tmp_path) + [
        "tasks.emotion=null",
        "tasks.sentiment=null",
        "trainer.max_epochs=1",
    ]
    assert main(argv) == 0


@pytest.mark.parametrize("total_steps", [1, 2, 3, 8, 11])
def test_onecycle_schedule_survives_very_short_runs(total_steps):
    import torch
    from box import Box

    from mtl.model.optim import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = build_scheduler(optimizer, Box(scheduler="onecycle", warmup_ratio=0.1), total_steps)
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
    assert 0.0 < optimizer.param_groups[0]["lr"] <= 1e-3  # no crash, never above the peak
