"""Scale-out: DDP on CPU (gloo) through scripts/train.py, rank-aware sharding, SLURM requeue resume.

DDP runs `scripts/train.py` in a subprocess: Lightning's `ddp` starts the other ranks by re-running
the script (`_SubprocessScriptLauncher`), which cannot happen inside pytest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_train_script, tiny_overrides

from mtl.data.sampling import MultiTaskBatchSampler
from mtl.model.metrics import score_arrays
from mtl.run.cv import read_metas

TASKS = ("toxicity", "emotion", "sentiment")


def truth_of(frame: pd.DataFrame, meta) -> np.ndarray:
    values = frame[meta.truth_columns()].to_numpy()
    return values if meta.multilabel else values[:, 0].astype(np.int64)


def test_ddp_on_two_cpu_processes_gathers_every_validation_row_once(
    tiny_backbone, data_dir, tmp_path
):
    argv = tiny_overrides(tiny_backbone, data_dir, tmp_path) + [
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    ]
    done = run_train_script(argv, timeout=240)  # waits for both ranks (they share its pipes)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("done: val-set score") == 1  # rank 1 trains but reports nothing
    run = tmp_path / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == set(TASKS)
    for name in ("config.yaml", "folds.csv", "tasks.json", "tokenizer", "report.md"):
        assert (run / name).exists(), name
    assert not list(run.rglob("*.tmp")) and not list(run.glob(".tokenizer.*"))
    assert [p.name for p in (run / "csv").iterdir()] == ["fold_0"]  # one writer: rank 0

    fold = json.loads((run / "fold_0" / "metrics.json").read_text())
    folds = pd.read_csv(run / "folds.csv")
    metrics, metas = fold["metrics"], read_metas(run)
    primaries = []
    for task in TASKS:
        meta = metas[task]
        # the val file (reported) and the selection slice of the training rows (validated)
        valfile = pd.read_csv(run / "fold_0" / f"valfile_{task}.csv", keep_default_na=False)
        n_val = len(pd.read_csv(data_dir / f"{task}_val.csv"))
        assert valfile.row.tolist() == list(range(n_val))  # both ranks' shards, each row once
        val = pd.read_csv(run / "fold_0" / f"val_{task}.csv", keep_default_na=False)
        chosen = folds.query("task == @task and fold == 0").row
        assert val.row.tolist() == sorted(chosen)
        test = pd.read_csv(run / "fold_0" / f"test_{task}.csv", keep_default_na=False)
        assert test.row.tolist() == list(range(len(pd.read_csv(data_dir / f"{task}_test.csv"))))
        # the logged (torchmetrics, synced over ranks) metrics are those of all rows
        expected = score_arrays(meta, val[meta.prob_columns()].to_numpy(), truth_of(val, meta))
        for key, value in expected.items():
            assert metrics[f"val/{task}/{key}"] == pytest.approx(value, abs=1e-5), (task, key)
        primaries.append(expected[meta.primary_metric])
    assert metrics["val/score"] == pytest.approx(np.mean(primaries), abs=1e-5)

    # each rank stepped through half of every epoch's batches
    rows = int((folds.fold == -1).sum())  # the rows that train (not the selection slice)
    per_rank = math.ceil(math.ceil(rows / 16) / 2)
    last = torch.load(run / "fold_0" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == fold["epochs_trained"] * per_rank


@pytest.mark.parametrize("strategy", ["ddp", "auto"])
def test_ddp_detects_unused_parameters(tiny_cfg, tmp_path, strategy):
    """The pooler is unused under mean pooling and absent tasks' heads get no gradient: DDP must
    look for unused parameters, also when `auto` picks DDP for several devices."""
    from lightning.pytorch.strategies import DDPStrategy

    from mtl.run.fit import make_trainer

    cfg = tiny_cfg(f"trainer.strategy={strategy}", "trainer.devices=2")
    trainer = make_trainer(cfg, tmp_path / "fold_0", tmp_path, 0)  # builds, launches nothing
    assert isinstance(trainer.strategy, DDPStrategy)
    # Lightning has no public getter for the kwargs it hands DistributedDataParallel; our code
    # only passes them through the public constructor (mtl/run/fit.py), the test reads them back
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    single = make_trainer(tiny_cfg(), tmp_path / "fold_0", tmp_path, 0)
    assert not isinstance(single.strategy, DDPStrategy)


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_hold_rows_of_every_task_on_every_rank(world_size):
    rng = np.random.default_rng(0)
    # one task's texts all longer than the others': plain length order would put them on one rank
    task_ids = np.repeat([0, 1, 2], [200, 7, 50])
    lengths = np.concatenate(
        [rng.integers(5, 40, 200), rng.integers(90, 99, 7), rng.integers(5, 40, 50)]
    )
    seen = []
    for rank in range(world_size):
        sampler = MultiTaskBatchSampler(
            task_ids, lengths, 64, train=False, rank=rank, world_size=world_size
        )
        batches = list(sampler)
        assert len(batches) == len(sampler)
        mine = [i for b in batches for i in b]
        assert set(task_ids[mine]) == {0, 1, 2}
        assert np.all(np.diff(lengths[mine]) >= 0)  # still sorted by length: little padding
        seen.extend(mine)
    assert sorted(seen) == list(range(len(task_ids)))  # disjoint, complete
    single = MultiTaskBatchSampler(task_ids, lengths, 64, train=False)
    order = np.argsort(lengths, kind="stable")  # one device: the order is unchanged
    assert [i for b in single for i in b] == order.tolist()


def test_every_rank_gets_a_training_batch_even_with_fewer_batches_than_ranks():
    task_ids, lengths = np.array([0, 0, 1, 1, 1]), np.array([3, 4, 5, 6, 7])
    for rank in range(4):
        sampler = MultiTaskBatchSampler(task_ids, lengths, 16, seed=1, rank=rank, world_size=4)
        assert len(list(sampler)) == len(sampler) == 1


def test_datamodule_refuses_fewer_validation_rows_than_ranks(tiny_cfg):
    from types import SimpleNamespace

    from mtl.data.datamodule import MultiTaskDataModule
    from mtl.errors import ConfigError

    module = MultiTaskDataModule(tiny_cfg())  # one split: validates on the 40-row val files
    module.setup("fit")
    module.trainer = SimpleNamespace(global_rank=0, world_size=64)
    with pytest.raises(ConfigError, match="fewer than the 64 processes"):
        module.val_dataloader()


def test_resume_prefers_a_slurm_checkpoint_only_when_it_got_further(tmp_path):
    from mtl.run.fit import resume_checkpoint

    assert resume_checkpoint(tmp_path) is None
    torch.save({"global_step": 40}, tmp_path / "last.ckpt")
    assert resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    torch.save({"global_step": 40}, tmp_path / "hpc_ckpt_1.ckpt")
    assert resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"  # a tie: the epoch boundary
    torch.save({"global_step": 47}, tmp_path / "hpc_ckpt_2.ckpt")
    assert resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"
    (tmp_path / "last.ckpt").unlink()
    assert resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"


def test_slurm_requeue_checkpoint_resumes_the_same_fold(tiny_cfg, tmp_path, monkeypatch, caplog):
    """SIGUSR1 before the time limit → Lightning saves fold_<k>/hpc_ckpt_1.ckpt and requeues the
    array task; the requeued job resumes that fold from it and predicts with the best weights."""
    import lightning as L

    import mtl.run.fit
    from mtl.inference.predictor import Predictor
    from mtl.portable import calibrate
    from mtl.run.train import train

    scontrol = tmp_path / "bin" / "scontrol"  # records the requeue instead of calling SLURM
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NAME": "kfold",
        "SLURM_JOB_ID": "71",
        "SLURM_ARRAY_JOB_ID": "70",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)

    class TimeLimit(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                os.kill(os.getpid(), signal.SIGUSR1)  # what `#SBATCH --signal=SIGUSR1@90` sends
            if trainer.current_epoch == 1 and batch_idx == 4:
                raise SystemExit("requeued")  # the job is stopped and queued again

    extra = ["cv.n_splits=2", "cv.folds=1", "trainer.max_epochs=3", "early_stopping.enabled=false"]
    cfg = tiny_cfg(*extra)
    original = mtl.run.fit.make_trainer
    monkeypatch.setattr(
        mtl.run.fit,
        "make_trainer",
        lambda cfg, fold_dir, run_dir, fold, callbacks=None: original(
            cfg, fold_dir, run_dir, fold, [TimeLimit()]
        ),
    )
    with pytest.raises(SystemExit):
        train(cfg)
    fold_dir = Path(cfg.run.output_dir) / cfg.run.name / "fold_1"
    assert (fold_dir / "hpc_ckpt_1.ckpt").is_file()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "70_1"]
    hpc_step = torch.load(fold_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]
    last_step = torch.load(fold_dir / "last.ckpt", weights_only=True)["global_step"]
    assert hpc_step > last_step  # saved mid-epoch 1, after the epoch-0 last.ckpt

    monkeypatch.setattr(mtl.run.fit, "make_trainer", original)
    with caplog.at_level(logging.INFO, logger="mtl.run.fit"):
        train(cfg)
    assert f"fold 1: resuming from {fold_dir / 'hpc_ckpt_1.ckpt'}" in caplog.text
    fold = json.loads((fold_dir / "metrics.json").read_text())
    assert fold["epochs_trained"] == 3
    assert not list(fold_dir.glob("hpc_ckpt_*"))  # a finished fold is never resumed
    assert not (fold_dir.parent / "fold_0").exists()  # only the array task's own fold
    # test predictions come from best.ckpt, not from the leftover requeue checkpoint; the fold
    # file holds the model's probabilities, the Predictor fold 1's calibrated ones (issue 26)
    test = pd.read_csv(fold_dir / "test_toxicity.csv", keep_default_na=False)
    probs = Predictor.from_checkpoint(fold_dir / "best.ckpt").predict_proba(test.text.tolist())
    results = json.loads((fold_dir.parent / "results.json").read_text())
    raw = test[read_metas(fold_dir.parent)["toxicity"].prob_columns()].to_numpy()
    params = results["calibration"]["toxicity"]["folds"]["1"]
    np.testing.assert_allclose(probs["toxicity"], calibrate(raw, False, params), atol=1e-5)


def test_fsdp_gets_one_unit_per_encoder_block_through_its_public_argument(tiny_backbone):
    """The block classes come from the backbone's config, so FSDPStrategy(auto_wrap_policy=...)
    is built before the model exists (no override of Lightning's private setup)."""
    from box import Box
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

    from mtl.run.fit import EncoderFSDP, encoder_blocks, make_strategy

    assert encoder_blocks(str(tiny_backbone)) == {BertEmbeddings, BertLayer}
    assert encoder_blocks(str(tiny_backbone / "missing")) == set()  # unknown: FSDP's default
    cfg = Box({"trainer": {"strategy": "fsdp"}, "backbone": {"name": str(tiny_backbone)}})
    assert isinstance(make_strategy(cfg), EncoderFSDP)
