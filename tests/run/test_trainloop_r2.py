"""Issue 22, the training loop: mid-epoch resume (item 11), `last.ckpt` every epoch (15), a stop
at a non-finite loss (12), `limit_val_batches` as a random share (4), checkpoints staged beside
their target (17) and a full disk while writing one (21). Tiny one-task runs on the tiny BERT.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import tiny_overrides
from test_reliability import exit_2

import mtl.run.fit
from mtl.config import DEFAULT_CONFIG, load_config
from mtl.inference.checkpoint import load_checkpoint
from mtl.run.train import train

ONE_TASK = ("tasks.emotion=null", "tasks.sentiment=null", "early_stopping.enabled=false")


@pytest.fixture
def overrides(tiny_backbone, data_dir, tmp_path):
    """`overrides(...)`: the tiny one-task run (folder tmp_path/tiny) as command-line overrides."""

    def make(*extra: str) -> list[str]:
        return [*tiny_overrides(tiny_backbone, data_dir, tmp_path), *ONE_TASK, *extra]

    return make


@pytest.fixture
def one_task(overrides):
    return lambda *extra: load_config(DEFAULT_CONFIG, overrides(*extra))


def fold_dir(cfg, fold: int = 0) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name / f"fold_{fold}"


@pytest.fixture
def with_callbacks(monkeypatch):
    """`with_callbacks(cb, ...)`: the folds' Trainers get these callbacks too (until undone)."""
    original = mtl.run.fit.make_trainer

    def install(*callbacks: L.Callback) -> None:
        monkeypatch.setattr(
            mtl.run.fit,
            "make_trainer",
            lambda cfg, fold_dir, run_dir, fold, extra=None: original(
                cfg, fold_dir, run_dir, fold, [*(extra or []), *callbacks]
            ),
        )

    yield install
    monkeypatch.setattr(mtl.run.fit, "make_trainer", original)


# --- item 11: a fold resumed mid-epoch equals the uninterrupted fold ---------------------------


class Interrupted(Exception):
    pass


class SaveAndStop(L.Callback):
    """What a SLURM requeue does: a checkpoint (`hpc_ckpt_1.ckpt`) mid-epoch, then the job ends.
    `batch` < 0 counts from the epoch's end; `hook` is where in the batch the save happens."""

    def __init__(self, epoch: int, batch: int, hook: str):
        self.epoch, self.batch, self.hook = epoch, batch, hook

    def _maybe(self, trainer, batch_idx: int) -> None:
        target = self.batch % trainer.num_training_batches
        if trainer.current_epoch == self.epoch and batch_idx == target:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "hpc_ckpt_1.ckpt")
            raise Interrupted

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.hook == "start":  # mid-batch: the loop redoes this batch
            self._maybe(trainer, batch_idx)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.hook == "end":
            self._maybe(trainer, batch_idx)


class SeenRows(L.Callback):
    def __init__(self):
        self.rows: list[tuple[int, int, tuple[int, ...]]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        rows = tuple(batch["rows"]["toxicity"].tolist())
        self.rows.append((trainer.current_epoch, batch_idx, rows))


def final_state(cfg) -> tuple[dict, dict]:
    """(weights, metrics) the fold ended with: `cv.selection=last`, so best.ckpt is the last epoch."""
    state = torch.load(fold_dir(cfg) / "best.ckpt", weights_only=True)["state_dict"]
    return state, json.loads((fold_dir(cfg) / "metrics.json").read_text())["metrics"]


@pytest.mark.parametrize(
    "batch, hook, workers, epochs",
    [
        (2, "end", 0, 2),  # after batch 2's step, as SIGUSR1 between batches saves it
        (2, "start", 0, 2),  # before batch 2's step
        # after the epoch's last step: Lightning restarts in the next epoch without validating
        # this one (docs/reliability.md), so the fold is compared after one more epoch
        (-1, "end", 0, 3),
        (2, "end", 2, 2),  # worker processes draw their first batches when the loader starts
    ],
)
def test_a_fold_resumed_mid_epoch_equals_the_uninterrupted_fold(
    one_task, with_callbacks, batch, hook, workers, epochs
):
    extra = ("cv.selection=last", f"data.num_workers={workers}", f"trainer.max_epochs={epochs}")
    whole = one_task("run.name=whole", *extra)
    seen_whole = SeenRows()
    with_callbacks(seen_whole)
    train(whole)

    cut = one_task("run.name=cut", *extra)
    seen_cut = SeenRows()
    with_callbacks(seen_cut, SaveAndStop(epoch=1, batch=batch, hook=hook))
    with pytest.raises(Interrupted):
        train(cut)
    assert (fold_dir(cut) / "hpc_ckpt_1.ckpt").is_file()
    with_callbacks(seen_cut)
    train(cut)  # resumes from hpc_ckpt_1.ckpt (it got further than last.ckpt)

    assert seen_cut.rows == seen_whole.rows  # each batch once, in the same order
    weights, metrics = final_state(whole)
    resumed_weights, resumed_metrics = final_state(cut)
    assert resumed_metrics == metrics
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


class KilledAt(L.Callback):
    """A kill with no warning: no checkpoint of its own, the job just ends before a batch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Interrupted


def test_a_fold_killed_mid_epoch_resumes_from_its_periodic_last_ckpt(one_task, with_callbacks):
    """trainer.checkpoint_every_minutes: last.ckpt also mid-epoch (here after every batch), so a
    kill loses the batches since, not the epoch; the resumed fold equals the uninterrupted one."""
    extra = ("cv.selection=last", "trainer.max_epochs=2", "trainer.checkpoint_every_minutes=1e-9")
    whole = one_task("run.name=whole", *extra)
    seen_whole = SeenRows()
    with_callbacks(seen_whole)
    train(whole)
    steps_per_epoch = len(seen_whole.rows) // 2

    cut = one_task("run.name=cut", *extra)
    seen_cut = SeenRows()
    with_callbacks(seen_cut, KilledAt(epoch=1, batch=3))
    with pytest.raises(Interrupted):
        train(cut)
    saved = load_checkpoint(fold_dir(cut) / "last.ckpt", mtl_only=False)
    assert saved["global_step"] == steps_per_epoch + 3  # epoch 1's batches 0-2, not epoch 0's end
    with_callbacks(seen_cut)
    train(cut)

    assert seen_cut.rows == seen_whole.rows
    weights, metrics = final_state(whole)
    resumed_weights, resumed_metrics = final_state(cut)
    assert resumed_metrics == metrics
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def test_a_training_pass_starts_after_the_batches_done_once():
    from mtl.data.sampling import MultiTaskBatchSampler

    task_ids, lengths = np.repeat([0, 1], 40), np.arange(80) % 13 + 1
    sampler = MultiTaskBatchSampler(task_ids, lengths, 8, seed=3)
    full = [list(b) for b in sampler]
    sampler.start_after(3)
    assert [list(b) for b in sampler] == full[3:]
    assert [list(b) for b in sampler] == full  # the next pass is whole again
    assert len(sampler) == len(full)  # Lightning counts the skipped batches as done


def test_the_training_loader_starts_its_pass_at_the_first_batch(tiny_cfg):
    # Lightning iterates the loader before it restores a checkpoint's loop state; the pass must
    # not draw its batches (worker processes would) until the first one is asked for
    from mtl.data.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule(tiny_cfg(*ONE_TASK))
    dm.setup("fit")
    loader = dm.train_dataloader()
    done = [0]
    loader.batches_done = lambda: done[0]
    first = next(iter(loader))
    passes = iter(loader)
    done[0] = 2  # the loop's count when it asks for its first batch
    assert not torch.equal(next(passes)["input_ids"], first["input_ids"])
    assert len(list(passes)) == len(loader) - 3


# --- item 15: last.ckpt at every epoch end ------------------------------------------------------


def test_last_ckpt_holds_the_latest_epoch_when_its_score_is_worse(one_task, monkeypatch):
    from mtl.model.metrics import TaskMetrics

    real_compute = TaskMetrics.compute
    scores = iter([0.9, 0.1, 0.9])  # epoch 0, epoch 1, then the final validate of best.ckpt

    def scripted(self):
        return {**real_compute(self), self.meta.primary_metric: next(scores)}

    monkeypatch.setattr(TaskMetrics, "compute", scripted)
    cfg = one_task("trainer.max_epochs=2")
    train(cfg)
    load = lambda name: torch.load(fold_dir(cfg) / name, weights_only=True)  # noqa: E731
    assert load("best.ckpt")["epoch"] == 0
    assert load("last.ckpt")["epoch"] == 1  # before: written only when the score improved
    assert json.loads((fold_dir(cfg) / "metrics.json").read_text())["best_epoch"] == 0


# --- item 12: a loss or weights that turn non-finite stop the fold -----------------------------


def assert_nothing_finished(cfg) -> None:
    folder = fold_dir(cfg)
    assert not (folder / "metrics.json").exists()
    assert not list(folder.glob("*.csv"))  # no predictions
    assert not (folder.parent / "results.json").exists()


def test_a_loss_that_turns_nan_stops_the_fold_with_a_clear_error(
    one_task, overrides, capsys, monkeypatch
):
    from mtl.model.module import MultiTaskModule

    real_step = MultiTaskModule.training_step

    def nan_from_step_3(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(MultiTaskModule, "training_step", nan_from_step_3)
    message = exit_2(capsys, overrides())
    assert "Fold 0 stopped: its training loss became nan in batch 3 of epoch 0" in message
    assert "learning rate too high" in message and "fp16" in message and "data" in message
    assert "does not count as finished" in message
    assert_nothing_finished(one_task())


def test_weights_that_turn_nan_stop_the_fold_before_that_epochs_checkpoint(
    one_task, with_callbacks
):
    from mtl.run.guards import TrainingDiverged

    class PoisonLastStep(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == trainer.num_training_batches - 1:
                with torch.no_grad():
                    next(module.parameters()).fill_(float("inf"))

    with_callbacks(PoisonLastStep())
    cfg = one_task("trainer.max_epochs=2")
    with pytest.raises(
        TrainingDiverged, match="weights are no longer finite after epoch 1's last batch"
    ):
        train(cfg)
    assert_nothing_finished(cfg)
    last = torch.load(fold_dir(cfg) / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # epoch 1's poisoned weights were never saved
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_huge_learning_rate_does_not_finish_a_fold(one_task, overrides, capsys):
    huge = ("optim.lr_backbone=1e30", "optim.lr_heads=1e30")
    message = exit_2(capsys, overrides(*huge))
    assert "Fold 0 stopped" in message and "optim.lr_backbone=1e+30" in message
    assert_nothing_finished(one_task(*huge))


# --- item 4: trainer.limit_val_batches validates a random share, not the shortest texts --------


class ValRows(L.Callback):
    def __init__(self):
        self.rows: dict[int, list[int]] = {}

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "fit":
            rows = self.rows.setdefault(trainer.current_epoch, [])
            rows.extend(batch["rows"]["toxicity"].tolist())


def test_limit_val_batches_validates_a_random_share_not_the_shortest_texts(
    one_task, with_callbacks
):
    from mtl.data.datamodule import MultiTaskDataModule

    seen = ValRows()
    with_callbacks(seen)
    cfg = one_task(
        "trainer.limit_val_batches=1", "data.eval_batch_size=8", "data.val_fraction=0.25"
    )
    train(cfg)
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    val = dm.fold_parts()[1]["toxicity"]
    length = dict(zip(val.rows.tolist(), (len(ids) for ids in val.input_ids), strict=True))
    assert len(length) > 16
    assert len(seen.rows[0]) == 8  # one batch of 8, not cut again by Lightning
    assert seen.rows[1] == seen.rows[0]  # the same rows choose every epoch
    eighth_shortest = sorted(length.values())[7]
    assert max(length[r] for r in seen.rows[0]) > eighth_shortest  # before: the 8 shortest


def test_limit_val_rows_takes_a_seeded_share_of_every_task(tiny_cfg):
    from mtl.data.datamodule import MultiTaskDataModule, limit_val_rows
    from mtl.errors import ConfigError

    dm = MultiTaskDataModule(tiny_cfg("cv.n_splits=2", "trainer.limit_val_batches=0.5"))
    dm.setup("fit")
    _, parts = dm.fold_parts()
    limited = limit_val_rows(dm.cfg, parts, fold=0)
    for name, part in parts.items():
        assert len(limited[name]) == round(0.5 * len(part))
        assert set(limited[name].rows) < set(part.rows)
        assert np.array_equal(limit_val_rows(dm.cfg, parts, fold=0)[name].rows, limited[name].rows)
    dm.cfg.trainer.limit_val_batches = 1.5
    with pytest.raises(ConfigError, match="'trainer.limit_val_batches' is 1.5"):
        limit_val_rows(dm.cfg, parts, fold=0)


# --- item 17: checkpoints are staged beside their target, not in the system temp dir ----------


def run_python(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        timeout=120,
    )


def test_a_checkpoint_write_killed_before_its_rename_leaves_nothing_in_the_temp_dir(tmp_path):
    from mtl.io import remove_orphaned_tmp

    system_tmp, folder = tmp_path / "system_tmp", tmp_path / "fold_0"
    system_tmp.mkdir()
    folder.mkdir()
    killed_at_rename = f"""
import os, shutil, signal, torch
from mtl.run.fit import AtomicCheckpointIO
def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = shutil.move = kill
AtomicCheckpointIO().save_checkpoint({{"w": torch.zeros(10_000)}}, {str(folder / "last.ckpt")!r})
"""
    done = run_python(killed_at_rename, TMPDIR=str(system_tmp))
    assert done.returncode == -9, done.stderr
    assert list(system_tmp.iterdir()) == []  # before: a checkpoint-sized fsspec temp file
    leftovers = list(folder.iterdir())
    assert [p.name.startswith(".last.ckpt~") for p in leftovers] == [True]
    assert remove_orphaned_tmp(folder) == leftovers  # the next run clears it


# --- item 21: no room to write a checkpoint ----------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_is_a_clear_error_and_keeps_the_old_one(
    one_task, overrides, capsys, monkeypatch
):
    real_save = torch.save
    saves = []

    def full_after_epoch_0(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj:
            saves.append(obj["epoch"])
            if obj["epoch"] >= 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_epoch_0)
    message = exit_2(capsys, overrides("trainer.max_epochs=2"))
    folder = fold_dir(one_task())
    assert f"No room to write {folder}" in message and "(ENOSPC)" in message
    assert "is intact" in message and "run the same command again" in message
    assert 1 in saves
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # the old checkpoint, whole
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial file
    assert not (folder / "metrics.json").exists()


def test_a_real_write_past_the_file_size_limit_is_recognised_as_no_room(tmp_path):
    # torch.save reports a failed write as a RuntimeError; the file object's OSError is its context
    target = tmp_path / "last.ckpt"
    torch.save({"old": torch.ones(1)}, target)
    over_the_limit = f"""
import resource, signal, torch
from mtl.errors import MTLError
from mtl.run.fit import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    AtomicCheckpointIO().save_checkpoint({{"w": torch.zeros(100_000)}}, {str(target)!r})
except MTLError as err:
    print(err)
"""
    done = run_python(over_the_limit)
    assert done.returncode == 0, done.stderr
    assert f"No room to write {target}" in done.stdout and "(EFBIG)" in done.stdout
    assert torch.load(target, weights_only=True)["old"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
