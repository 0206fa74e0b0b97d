"""K-fold: disjoint stratified deterministic folds, OOF coverage, blending, resume, --folds + blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl.run.blend import blend, tune_thresholds
from mtl.run.train import train


def run_dir(cfg) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


@pytest.fixture(scope="module")
def kfold_run(tiny_backbone, data_dir, tmp_path_factory):
    """One finished 3-fold run shared by the read-only checks below."""
    from helpers import tiny_overrides

    from mtl.config import load_config

    out = tmp_path_factory.mktemp("kfold")
    cfg = load_config(
        "configs/default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + ["cv.n_splits=3", "tasks.emotion.threshold=tuned"],
    )
    return cfg, train(cfg)


def test_folds_are_disjoint_cover_every_row_and_are_stratified(kfold_run):
    cfg, _ = kfold_run
    folds = pd.read_csv(run_dir(cfg) / "folds.csv")
    train = pd.read_csv(Path(cfg.data_dir) / "toxicity_train.csv")
    tox = folds[folds.task == "toxicity"].sort_values("row")
    assert tox.row.tolist() == list(range(len(train)))  # every row exactly once
    assert sorted(tox.fold.unique()) == [0, 1, 2]
    rates = train.label.groupby(tox.fold.to_numpy()).mean()
    assert rates.max() - rates.min() < 0.06  # stratified: same positive rate per fold
    emo = folds[folds.task == "emotion"]
    emo_train = pd.read_csv(Path(cfg.data_dir) / "emotion_train.csv")
    per_fold = emo_train.drop(columns="text").groupby(emo.sort_values("row").fold.to_numpy()).mean()
    assert (per_fold.max() - per_fold.min()).max() < 0.1  # iterative stratification per label


def test_fold_assignment_is_deterministic_from_the_seed(tiny_cfg, kfold_run):
    from mtl.data.folds import fold_assignments
    from mtl.data.load import load_tasks
    from mtl.model.network import load_tokenizer

    cfg, _ = kfold_run
    data, _ = load_tasks(cfg, load_tokenizer(cfg.backbone.name))
    again = fold_assignments(cfg, data)
    saved = pd.read_csv(run_dir(cfg) / "folds.csv")
    for task, assignment in again.items():
        assert saved[saved.task == task].fold.tolist() == assignment.tolist()
    cfg.seed = cfg.seed + 1
    assert any((fold_assignments(cfg, data)[t] != again[t]).any() for t in again)


def test_oof_covers_each_training_row_once_and_results_hold_the_cv_table(kfold_run):
    cfg, results = kfold_run
    folder = run_dir(cfg)
    for task in ("toxicity", "emotion", "sentiment"):
        oof = pd.read_csv(folder / f"oof_{task}.csv")
        n_train = len(pd.read_csv(Path(cfg.data_dir) / f"{task}_train.csv"))
        assert sorted(oof.row) == list(range(n_train))
        entry = results["tasks"][task]
        assert set(entry["folds"]) == {"0", "1", "2"}
        assert entry["oof_rows"] == n_train
        assert "f1_macro" in entry["oof"] and "f1_macro" in entry["test_blended"]
        assert entry["mean"]["f1_macro"] == pytest.approx(
            np.mean([f["f1_macro"] for f in entry["folds"].values()])
        )
    assert len(results["thresholds"]["emotion"]) == 7
    assert results["missing_folds"] == []
    assert (folder / "report.png").stat().st_size > 10_000
    assert "| toxicity | f1_macro |" in (folder / "report.md").read_text()


def test_mean_blend_equals_the_mean_of_the_fold_predictions(kfold_run):
    """The mean of the folds' calibrated predictions (issue 26: each fold's probabilities by its
    own results.json "calibration" params, before the blend), labels at the blends' cut (a binary
    argmax re-expressed on the calibrated scale)."""
    from mtl.portable import calibrate

    cfg, results = kfold_run
    folder = run_dir(cfg)
    cols = [f"sentiment_{c}" for c in (0, 1)]
    params = results["calibration"]["sentiment"]["folds"]
    folds = [
        calibrate(
            pd.read_csv(folder / f"fold_{k}" / "test_sentiment.csv")[cols].to_numpy(),
            False,
            params[str(k)],
        )
        for k in range(3)
    ]
    blended = pd.read_csv(folder / "test_sentiment.csv")
    np.testing.assert_allclose(blended[cols].to_numpy(), np.mean(folds, axis=0), atol=1e-9)
    labels = blended["sentiment_label"].to_numpy()
    [cut] = results["thresholds"]["sentiment"]
    np.testing.assert_array_equal(labels, (np.mean(folds, axis=0)[:, 1] >= cut).astype(int))


def test_mean_blend_without_calibration_is_the_plain_mean(tiny_backbone, data_dir, tmp_path):
    """calibration: none leaves the blend as it was before issue 26: the plain mean, argmax."""
    from helpers import tiny_overrides

    from mtl.config import load_config

    cfg = load_config(
        "configs/default.yaml",
        tiny_overrides(tiny_backbone, data_dir, tmp_path)
        + [
            "cv.n_splits=2",
            *(f"tasks.{t}.calibration=none" for t in ("toxicity", "emotion", "sentiment")),
        ],
    )
    results = train(cfg)
    folder = run_dir(cfg)
    cols = [f"sentiment_{c}" for c in (0, 1)]
    folds = [
        pd.read_csv(folder / f"fold_{k}" / "test_sentiment.csv")[cols].to_numpy() for k in range(2)
    ]
    blended = pd.read_csv(folder / "test_sentiment.csv")
    np.testing.assert_allclose(blended[cols].to_numpy(), np.mean(folds, axis=0), atol=1e-9)
    labels = blended["sentiment_label"].to_numpy()
    np.testing.assert_array_equal(labels, np.mean(folds, axis=0).argmax(axis=1))
    assert results["calibration"] == {} and "sentiment" not in results["thresholds"]
    assert not (folder / "calibration.png").exists()


def test_blend_methods():
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    b = np.array([[0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    np.testing.assert_allclose(blend([a, b], "mean"), (a + b) / 2)
    np.testing.assert_allclose(blend([a, b], "weighted", [3.0, 1.0]), 0.75 * a + 0.25 * b)
    ranks = blend([a, b], "rank")
    assert ranks[:, 1].argsort().tolist() == [1, 2, 0]  # same order as both folds agree on
    with pytest.raises(ValueError):
        blend([a, b], "median")


def test_tuned_thresholds_beat_or_match_a_fixed_half():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 2)) < 0.2).astype(int)
    probs = np.clip(labels * 0.3 + rng.random((400, 2)) * 0.4, 0, 1)  # positives score 0.3-0.7
    tuned = tune_thresholds(probs, labels)
    from sklearn.metrics import f1_score

    for c in range(2):
        assert f1_score(labels[:, c], probs[:, c] >= tuned[c]) >= f1_score(
            labels[:, c], probs[:, c] >= 0.5
        )
    assert all(0.05 <= t <= 0.95 for t in tuned)


class CrashAt:
    """A callback that kills the run (like kill -9 would) in the middle of a given fold and epoch."""

    def __new__(cls, fold: int, epoch: int, batch: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch_, batch_idx):
                here = Path(trainer.default_root_dir).name == f"fold_{fold}"
                if here and trainer.current_epoch == epoch and batch_idx == batch:
                    raise SystemExit("simulated crash")

        return _Crash()


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "run"}


def test_resume_after_a_crash_mid_fold_gives_the_same_results_as_a_clean_run(tiny_cfg, monkeypatch):
    import mtl.run.fit

    extra = [
        "cv.n_splits=2",
        "trainer.max_epochs=3",
        "backbone.dropout=0.1",
        "early_stopping.enabled=false",
    ]
    clean = train(tiny_cfg(*extra, "run.name=clean"))

    original = mtl.run.fit.make_trainer
    monkeypatch.setattr(
        mtl.run.fit,
        "make_trainer",
        lambda cfg, fold_dir, run_dir, fold, callbacks=None: original(
            cfg, fold_dir, run_dir, fold, [CrashAt(1, 1, 2)]
        ),
    )
    cfg = tiny_cfg(*extra, "run.name=crashed")
    with pytest.raises(SystemExit):
        train(cfg)
    folder = run_dir(cfg)
    assert (folder / "fold_0" / "metrics.json").is_file()
    assert not (folder / "fold_1" / "metrics.json").is_file()
    assert (folder / "fold_1" / "last.ckpt").is_file()
    monkeypatch.setattr(mtl.run.fit, "make_trainer", original)

    fold0_mtime = (folder / "fold_0" / "metrics.json").stat().st_mtime_ns
    resumed = train(cfg)
    assert (
        folder / "fold_0" / "metrics.json"
    ).stat().st_mtime_ns == fold0_mtime  # skipped, not retrained
    assert comparable(resumed) == comparable(clean)


def test_folds_as_separate_jobs_then_blend_equals_a_full_run(tiny_cfg, kfold_run):
    import subprocess
    import sys

    cfg_full, full = kfold_run
    extra = ["cv.n_splits=3", "tasks.emotion.threshold=tuned", "run.name=split"]
    cfg = tiny_cfg(*extra)
    train(tiny_cfg(*extra, "cv.folds=[0,2]"))
    partial = json.loads((run_dir(cfg) / "results.json").read_text())
    assert partial["missing_folds"] == [1]
    train(tiny_cfg(*extra, "cv.folds=1"))
    done = subprocess.run(
        [sys.executable, "scripts/blend.py", str(run_dir(cfg))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    blended = json.loads((run_dir(cfg) / "results.json").read_text())
    assert comparable(blended) == comparable(full)
    for task in ("toxicity", "emotion"):
        pd.testing.assert_frame_equal(
            pd.read_csv(run_dir(cfg) / f"test_{task}.csv"),
            pd.read_csv(run_dir(cfg_full) / f"test_{task}.csv"),
        )
