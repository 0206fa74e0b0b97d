"""Issue 22 item 7: per-fold seeds drawn from (seed, fold); `class_weights: auto` counted on the
rows a fold trains on, not on its validation rows or the rows held out as the val set."""

from __future__ import annotations

import numpy as np
import pytest
from box import Box

import mtl.run.fit as fit
from mtl.data.datamodule import MultiTaskDataModule
from mtl.data.folds import VAL_SET
from mtl.data.tasks import TaskMeta


class Stop(Exception):
    """Raised by the spies below: everything after what they record is not under test."""


# --- (a) per-fold seeds -------------------------------------------------------------------------


def test_fold_seed_is_deterministic_and_neighbouring_seeds_do_not_share_fold_starts():
    assert fit.fold_seed(42, 1) == fit.fold_seed(42, 1)
    # seed + fold gave both 43: replicate runs at seeds 42 and 43 shared folds' initial weights
    assert fit.fold_seed(42, 1) != fit.fold_seed(43, 0)
    seeds = {fit.fold_seed(s, k) for s in range(40, 45) for k in range(5)}
    assert len(seeds) == 25
    assert all(0 <= s < 2**32 for s in seeds)  # what seed_everything accepts


def test_fit_fold_seeds_each_fold_from_the_seed_and_the_fold(monkeypatch, tmp_path):
    seen = []

    def spy(seed, **kwargs):
        seen.append(seed)
        raise Stop

    monkeypatch.setattr(fit.L, "seed_everything", spy)
    for seed, fold in ((42, 1), (43, 0)):
        with pytest.raises(Stop):
            fit.fit_fold(Box(seed=seed), fold, tmp_path, dm=None)
    assert seen[0] != seen[1]
    assert seen == [fit.fold_seed(42, 1), fit.fold_seed(43, 0)]


# --- (b) class weights on the rows that train ---------------------------------------------------


def auto_weights(meta: TaskMeta, labels: np.ndarray) -> list[float]:
    """`class_weights: auto` written out: n / (C · count) per class, negatives / positives per label."""
    counts = meta.class_counts(labels).astype(np.float64)
    if meta.multilabel:
        return ((len(labels) - counts) / counts).tolist()
    return (len(labels) / (meta.num_outputs * counts)).tolist()


def fold_model_tasks(monkeypatch, tmp_path, cfg, dm, fold: int) -> dict:
    """The task dicts fit_fold builds fold `fold`'s model with."""
    built = {}

    def spy(config, tasks, *args, **kwargs):
        built.update(tasks)
        raise Stop

    monkeypatch.setattr(fit, "MultiTaskModule", spy)
    with pytest.raises(Stop):
        fit.fit_fold(cfg, fold, tmp_path / "run", dm)
    return built


def test_each_fold_trains_with_auto_class_weights_counted_on_its_own_training_rows(
    tiny_cfg, monkeypatch, tmp_path
):
    # toxicity has no val file: a held-out quarter of its training file is its val set
    cfg = tiny_cfg("cv.n_splits=3", "tasks.toxicity.val=null", "data.val_fraction=0.25")
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    whole = {n: dm.data[n]["train"].labels for n in ("toxicity", "emotion")}
    assert (dm.folds["toxicity"] == VAL_SET).any()
    for fold in range(3):
        tasks = fold_model_tasks(monkeypatch, tmp_path, cfg, dm, fold)
        train_parts, val_parts = dm.fold_parts()
        for name in ("toxicity", "emotion"):
            meta = dm.metas[name]
            trained = train_parts[name].labels
            held = int((dm.folds[name] == VAL_SET).sum())  # toxicity's val set: never trains
            assert len(trained) == len(whole[name]) - len(val_parts[name]) - held
            got = tasks[name]["class_weights"]
            assert got == pytest.approx(auto_weights(meta, trained), rel=1e-5), (name, fold)
            assert got != pytest.approx(auto_weights(meta, whole[name]), rel=1e-5), (name, fold)
        assert tasks["sentiment"]["class_weights"] is None  # no class_weights configured


def test_one_split_counts_auto_class_weights_without_the_selection_slice(tiny_cfg):
    cfg = tiny_cfg("cv.n_splits=1", "cv.selection=best", "data.val_fraction=0.3")
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    folds = dm.folds["toxicity"]
    trains = dm.data["toxicity"]["train"].labels[folds == -1]  # fold 0 selects, never trains
    meta = dm.metas["toxicity"]
    expected = auto_weights(meta, trains)
    assert dm.fold_metas()["toxicity"].class_weights == pytest.approx(expected, rel=1e-5)
    # the run's record (tasks.json) counts the same rows
    assert meta.class_weights == pytest.approx(expected, rel=1e-5)


def test_explicit_class_weights_are_kept_as_given_in_every_fold(tiny_cfg):
    cfg = tiny_cfg("cv.n_splits=2", "tasks.toxicity.class_weights=[1.0, 3.0]")
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    for fold in range(2):
        dm.set_fold(fold)
        assert dm.fold_metas()["toxicity"].class_weights == [1.0, 3.0]
