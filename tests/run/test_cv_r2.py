"""The blend, round two (issue 22): every report column scored under one threshold rule (item 6),
blends under the run lock (item 13), non-finite fold predictions refused (item 12), and a
read-only or full run folder refused with nothing half-written (item 21)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl.data.tasks import TaskMeta
from mtl.model.metrics import score_arrays
from mtl.run.blend import tune_binary_threshold, tune_thresholds
from mtl.run.calibrate_folds import reexpress
from mtl.run.threshold_bootstrap import check_cuts


@pytest.fixture(scope="module")
def finished_run(tiny_backbone, data_dir, tmp_path_factory):
    """A finished 3-fold tiny run (one epoch) with tuned emotion and toxicity thresholds."""
    from helpers import tiny_overrides

    from mtl.config import load_config
    from mtl.run.train import train

    out = tmp_path_factory.mktemp("r2")
    cfg = load_config(
        "configs/default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + [
            "cv.n_splits=3",
            "trainer.max_epochs=1",
            "tasks.emotion.threshold=tuned",
            "tasks.toxicity.threshold=tuned",
        ],
    )
    results = train(cfg)
    return cfg, Path(cfg.run.output_dir) / cfg.run.name, results


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run folder, for tests that change or break it."""
    cfg, folder, _ = finished_run
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return cfg, copy


def metas_of(folder: Path) -> dict[str, TaskMeta]:
    return {n: TaskMeta(**m) for n, m in json.loads((folder / "tasks.json").read_text()).items()}


def arrays(frame: pd.DataFrame, meta: TaskMeta):
    truth = frame[meta.truth_columns()].to_numpy()
    truth = truth if meta.multilabel else truth[:, 0].astype(int)
    return frame[meta.prob_columns()].to_numpy(), truth


def transferred(cfg, meta: TaskMeta, probs, truth, call: int, fallback) -> list[float]:
    """The documented rule, recomputed: the cuts tuned on these rows (in the OOF file's order),
    each kept or replaced by the fallback cut as the bootstrap seeded [seed, crc32(task), call]
    decides (call k: fold k's cuts; call n_splits: every OOF row's)."""
    seed = [cfg.seed, zlib.crc32(meta.name.encode()), call]
    checks = check_cuts(probs, truth, meta.multilabel, fallback, cfg.cv.threshold_bootstrap, seed)
    return [c.used for c in checks]


def cross_fitted(frames: dict[int, pd.DataFrame], meta: TaskMeta, method: str):
    """Issue 26: each fold's own rows calibrated by params fitted on the other folds' rows,
    recomputed from the prediction files: {fold: (probs, truth)}."""
    from mtl.calibration import fit
    from mtl.portable import calibrate

    out = {}
    for k, frame in frames.items():
        others = pd.concat([f for j, f in frames.items() if j != k])
        params = fit(*arrays(others, meta), meta.multilabel, method)
        probs, truth = arrays(frame, meta)
        out[k] = (calibrate(probs, meta.multilabel, params), truth)
    return out


def in_oof_order(frames: dict[int, pd.DataFrame], meta: TaskMeta, folds: list[int]):
    """(probs, truth) of these folds' rows in the OOF file's order (by row, then fold), as the
    prediction files hold them (uncalibrated)."""
    rows = np.concatenate([frames[j]["row"].to_numpy() for j in folds])
    fold_of = np.concatenate([np.full(len(frames[j]), j) for j in folds])
    order = np.lexsort((fold_of, rows))
    probs, truth = zip(*(arrays(frames[j], meta) for j in folds), strict=True)
    return np.concatenate(probs)[order], np.concatenate(truth)[order]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder (the lock file aside: taking a lock writes its holder's name)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# --- item 6: every column under one threshold rule ---------------------------------------------


def test_each_fold_column_is_its_prediction_file_scored_at_thresholds_tuned_on_the_other_folds(
    finished_run,
):
    cfg, folder, results = finished_run
    metas = metas_of(folder)
    for task in ("emotion", "toxicity"):
        meta, entry = metas[task], results["tasks"][task]
        assert entry["threshold_rule"] == "tuned"
        frames = {k: pd.read_csv(folder / f"fold_{k}" / f"val_{task}.csv") for k in range(3)}
        # issue 26: tuned on the uncalibrated rows of the other folds, re-expressed on the scale
        # fold k's rows are scored on (calibrated, vector by default, by the other folds' params)
        calibrated = cross_fitted(frames, meta, "vector")
        crossed = results["calibration"][task]["own_rows_params"]
        for k in frames:
            others = in_oof_order(frames, meta, [j for j in frames if j != k])
            raw_cut = transferred(
                cfg, meta, *others, call=k, fallback=list(meta.threshold) or [0.5]
            )
            assert results["threshold_tuning"][task]["folds"][str(k)]["used"] == raw_cut
            cut = reexpress(meta, raw_cut, crossed[str(k)])
            assert entry["fold_thresholds"][str(k)] == pytest.approx(cut)
            expected = score_arrays(meta, *calibrated[k], cut)
            scored = {m: v for m, v in entry["folds"][str(k)].items() if m != "loss"}
            assert scored == pytest.approx(expected, nan_ok=True)
        assert entry["mean"]["f1_macro"] == pytest.approx(
            np.mean([entry["folds"][str(k)]["f1_macro"] for k in range(3)])
        )
    # the tiny one-epoch model puts every emotion below 0.5: the old 0.5-cut column read 0.0000
    emotion, meta = results["tasks"]["emotion"], metas["emotion"]
    at_half = [
        score_arrays(meta, *arrays(pd.read_csv(folder / f"fold_{k}" / "val_emotion.csv"), meta))
        for k in range(3)
    ]
    assert [emotion["folds"][str(k)]["f1_macro"] for k in range(3)] != pytest.approx(
        [s["f1_macro"] for s in at_half]
    )
    logged = [
        json.loads((folder / f"fold_{k}" / "metrics.json").read_text())["metrics"] for k in range(3)
    ]
    assert [s["f1_macro"] for s in at_half] == pytest.approx(
        [m["val/emotion/f1_macro"] for m in logged], abs=1e-6
    )  # the logged (0.5) value, which the fold column used to show


def test_oof_pools_the_fold_columns_and_the_report_says_which_rows_chose_each_columns_thresholds(
    finished_run,
):
    cfg, folder, results = finished_run
    metas = metas_of(folder)
    oof = pd.read_csv(folder / "oof_emotion.csv")
    entry = results["tasks"]["emotion"]
    cut = np.asarray([entry["fold_thresholds"][str(k)] for k in oof.fold])
    assert entry["oof"] == pytest.approx(score_arrays(metas["emotion"], *arrays(oof, metas["emotion"]), cut))  # fmt: skip
    meta = metas["emotion"]
    frames = {k: pd.read_csv(folder / f"fold_{k}" / "val_emotion.csv") for k in range(3)}
    fallback = list(meta.threshold) or [0.5] * meta.num_outputs
    raw_cut = transferred(
        cfg, meta, *in_oof_order(frames, meta, [0, 1, 2]), call=3, fallback=fallback
    )
    own = results["calibration"]["emotion"]["folds"].values()
    blended = np.mean([reexpress(meta, raw_cut, params) for params in own], axis=0)
    assert results["thresholds"]["emotion"] == pytest.approx(blended.tolist())
    assert results["tasks"]["sentiment"]["threshold_rule"] == "argmax"
    report = (folder / "report.md").read_text()
    assert "emotion: **tuned**" in report and "toxicity: **tuned**" in report
    assert "tuned on the other finished folds' validation rows" in report
    assert "tuned on every OOF row" in report
    # issue 26: sentiment's argmax under vector calibration is a cut on the calibrated scale
    assert "sentiment: argmax of the uncalibrated model, re-expressed" in report
    assert len(results["thresholds"]["sentiment"]) == 1
    assert "Thresholds that transfer" in report and "| emotion | joy |" in report


# --- item 13: blends take turns under the run lock ---------------------------------------------


def test_a_blend_that_read_fewer_folds_never_lands_after_one_that_read_more(run_copy, monkeypatch):
    import mtl.run.cv as cv

    cfg, folder = run_copy
    done = folder / "fold_2" / "metrics.json"
    hidden = done.with_name("metrics.json.later")
    done.rename(hidden)  # fold 2 still training when the first blend starts
    paused, release, errors = threading.Event(), threading.Event(), []
    real = cv.summarise

    def slow_when_two_folds(cfg, metas, folds, *rest):
        if list(folds) == [0, 1]:
            paused.set()
            release.wait(60)
        return real(cfg, metas, folds, *rest)

    monkeypatch.setattr(cv, "summarise", slow_when_two_folds)

    def blend():
        try:
            cv.collect(cfg, folder)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    first = threading.Thread(target=blend)
    first.start()
    assert paused.wait(60)
    hidden.rename(done)  # fold 2 finishes; its job blends
    second = threading.Thread(target=blend)
    second.start()
    second.join(timeout=2.0)
    assert second.is_alive(), "the second blend ran while the first held the run folder"
    release.set()
    first.join(60)
    second.join(60)
    assert not errors
    assert json.loads((folder / "results.json").read_text())["folds"] == [0, 1, 2]
    assert "fold 2" in (folder / "report.md").read_text()


# --- item 12: non-finite predictions are refused, never blended --------------------------------


@pytest.mark.parametrize("bad", ["", "nan", "inf", "-inf", "1.7"])
def test_a_fold_prediction_file_with_a_non_probability_is_refused_naming_the_fold(
    run_copy, capsys, bad
):
    from mtl.cli.blend import main

    _, folder = run_copy
    path = folder / "fold_1" / "test_emotion.csv"
    frame = pd.read_csv(path, keep_default_na=False).astype({"emotion_joy": object})
    frame.loc[3, "emotion_joy"] = bad
    frame.to_csv(path, index=False)
    before = snapshot(folder)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fold 1's predictions") and str(path) in err
    assert "emotion_joy" in err and f"Delete the folder {folder / 'fold_1'}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(folder) == before  # nothing written


def test_a_weighted_blend_refuses_a_fold_whose_score_is_not_finite(run_copy, capsys):
    from mtl.cli.blend import main

    _, folder = run_copy
    path = folder / "fold_0" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["metrics"]["val/score"] = float("nan")
    path.write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(
        (folder / "config.yaml").read_text().replace("blend: mean", "blend: weighted")
    )
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Fold 0's val/score" in err and "cv.blend=weighted" in err


# --- item 21: a read-only or full run folder: a clear error, nothing half-written --------------


def test_blend_on_a_folder_whose_lock_cannot_be_opened_read_only_exits_2(
    run_copy, capsys, monkeypatch
):
    import mtl.run.runfolder as runfolder
    from mtl.cli.blend import main

    _, folder = run_copy

    def read_only(path):  # what open() raises on a read-only mount, as root or not
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runfolder, "open_lock_file", read_only)
    before = snapshot(folder)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "nothing there was changed" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(folder) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_write_that_fails_midway_leaves_every_old_file_and_no_temp_file(
    run_copy, capsys, monkeypatch, code
):
    import mtl.run.cv as cv
    from mtl.cli.blend import main

    _, folder = run_copy
    (folder / "results.json").write_text('{"marker": "the old blend"}\n')
    real, calls = cv.write_file, []

    def fails_on_the_third(path, content):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_text("half")  # part of it reached the disk
            raise OSError(code, "simulated", path)
        real(path, content)

    monkeypatch.setattr(cv, "write_file", fails_on_the_third)
    before = snapshot(folder)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write the blend into run folder {folder}" in err
    assert "Nothing in the folder was changed" in err and len(err.strip().splitlines()) == 1
    assert snapshot(folder) == before  # every old file as it was, no temp file left


def test_a_rerun_blend_removes_the_staged_files_of_a_killed_blend(run_copy, capsys):
    from mtl.cli.blend import main
    from mtl.io import tmp_prefix

    _, folder = run_copy
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = tmp_prefix("x").split("@")[1].rstrip("~")
    staged = folder / f".results.json~{dead}@{host}~abc123.tmp"  # kill -9 mid-blend
    staged.write_text("partial")
    assert main([str(folder)]) == 0
    assert not staged.exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_blend_on_a_read_only_mount_exits_2_with_nothing_written(run_copy):
    """The real thing where the kernel lets us bind-mount the folder read-only (root here);
    the monkeypatched tests above cover the same error path everywhere."""
    _, folder = run_copy
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("no unshare -rm here: the read-only cases are covered by the tests above")
    before = snapshot(folder)
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
        f"exec {sys.executable} scripts/blend.py {folder}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Read-only file system" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(folder) == before


# --- the threshold grid search, vectorised: the same choices as scikit-learn's f1_score ----------


def test_tuned_thresholds_are_the_ones_sklearns_f1_chooses_on_the_grid():
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)  # coarse: sklearn's calls are slow

    def closest_best(scores):
        top = np.flatnonzero(np.isclose(scores, max(scores)))
        return float(grid[top[np.argmin(np.abs(grid[top] - 0.5))]])

    rng = np.random.default_rng(0)
    for _ in range(12):  # small sets, coarse probabilities: many ties and empty classes
        n = int(rng.integers(1, 50))
        labels = (rng.random((n, 3)) < rng.random()).astype(int)
        probs = np.round(rng.random((n, 3)), int(rng.integers(1, 4)))
        assert tune_thresholds(probs, labels, grid) == [
            closest_best([f1_score(labels[:, c], probs[:, c] >= t, zero_division=0) for t in grid])
            for c in range(3)
        ]
        two = np.stack([1 - probs[:, 0], probs[:, 0]], axis=1)
        macro = [
            f1_score(labels[:, 0], two[:, 1] >= t, average="macro", labels=[0, 1], zero_division=0)
            for t in grid
        ]
        assert tune_binary_threshold(two, labels[:, 0], grid) == [closest_best(macro)]
