"""Issue 26: calibration in the run's blend (mtl/run/summary.py, mtl/run/calibrate_folds.py), on
hand-made fold frames: which rows fit what, what the tables hold, decisions of each fold kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtl.calibration import fit, scores
from mtl.config import load_config
from mtl.data.tasks import TaskMeta
from mtl.portable import calibrate
from mtl.run.summary import summarise

EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
TOPICS = ["calm", "positive", "toxic"]


def metas(threshold_tox=(), threshold_emo=0.5) -> dict[str, TaskMeta]:
    return {
        "toxicity": TaskMeta("toxicity", "binary", [0, 1], threshold=list(threshold_tox)),
        "emotion": TaskMeta("emotion", "multilabel", EMOTIONS, threshold=[threshold_emo] * 7),
        "topic": TaskMeta("topic", "multiclass", TOPICS),
    }


def config(*extra: str):
    return load_config(
        "configs/default.yaml",
        [
            "tasks.topic.type=multiclass",
            "tasks.topic.train=topic_train.csv",
            "tasks.topic.val=topic_val.csv",
            "tasks.topic.label_columns=[topic]",
            *extra,
        ],
    )


def frame(meta: TaskMeta, n: int, rng, start: int, labelled: bool = True, truth_seed=None):
    """Over-confident predictions with a shifted base rate (what class weights do); the folds'
    predictions of one file share `truth_seed` (the same rows, the same labels)."""
    width = meta.num_outputs
    truth_rng = rng if truth_seed is None else np.random.default_rng(truth_seed)
    if meta.multilabel:
        truth = (truth_rng.random((n, width)) < 0.2).astype(int)
        z = 3.0 * (2 * truth - 1) * rng.random((n, width)) + 1.0 + rng.normal(0, 2, (n, width))
        probs = 1 / (1 + np.exp(-z))
        columns = {f"true_{c}": truth[:, i] for i, c in enumerate(meta.classes)}
    else:
        truth = truth_rng.choice(width, size=n, p=[0.7, 0.3] if width == 2 else None)
        z = rng.normal(0, 2, (n, width))
        z[np.arange(n), truth] += 2.5
        z[:, -1] += 1.0
        e = np.exp(2.0 * z)
        probs = e / e.sum(axis=1, keepdims=True)
        columns = {"true": truth}
    out = pd.DataFrame({"row": np.arange(start, start + n), "text": [f"t{i}" for i in range(n)]})
    if labelled:
        for name, values in columns.items():
            out[name] = values
    out[meta.prob_columns()] = probs.astype(np.float32)  # as the fold files hold them
    return out


def predictions(all_metas: dict, n_folds: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, meta in all_metas.items():
        val = {k: frame(meta, 120, rng, 120 * k) for k in range(n_folds)}
        out[name] = {  # one val set and one test file, every fold's own predictions of them
            "val": val,
            "valfile": {k: frame(meta, 200, rng, 0, truth_seed=seed + 100) for k in val},
            "test": {k: frame(meta, 50, rng, 0, False, truth_seed=seed + 200) for k in val},
        }
    return out


def run(cfg, all_metas, preds):
    folds = {k: {"metrics": {"val/score": 0.5}} for k in preds["toxicity"]["val"]}
    return summarise(cfg, all_metas, folds, preds, {}, "the best epoch")


def methods(method: str) -> list[str]:
    return [f"tasks.{t}.calibration={method}" for t in ("toxicity", "emotion", "topic")]


@pytest.mark.parametrize("n_splits", [1, 3])
@pytest.mark.parametrize(("tox", "emo"), [((), 0.5), ((0.3,), 0.4)])  # argmax / fixed cuts
def test_each_folds_decisions_and_macro_f1_are_its_models_under_fixed_and_argmax_rules(
    n_splits, tox, emo
):
    all_metas = metas(tox, emo)
    preds = predictions(all_metas, n_splits)
    cut = [f"tasks.toxicity.threshold={tox[0] if tox else 0.5}", f"tasks.emotion.threshold={emo}"]
    plain = run(config(f"cv.n_splits={n_splits}", *cut, *methods("none")), all_metas, preds)
    for method in ("vector", "temperature"):
        cfg = config(f"cv.n_splits={n_splits}", *cut, *methods(method))
        calibrated = run(cfg, all_metas, preds).results
        assert set(calibrated["calibration"]) == {"toxicity", "emotion", "topic"}
        tasks = ("toxicity", "emotion") + (("topic",) if method == "temperature" else ())
        for task in tasks:  # multiclass vector: a class bias may move the argmax (documented)
            before, after = plain.results["tasks"][task], calibrated["tasks"][task]
            for k in before["folds"]:
                assert after["folds"][k]["f1_macro"] == before["folds"][k]["f1_macro"], (task, k)
            if n_splits > 1:
                assert after["oof"]["f1_macro"] == before["oof"]["f1_macro"]
            else:  # one model: its blend is itself, its decisions unchanged
                assert after["valfile_blended"]["f1_macro"] == pytest.approx(
                    before["valfile_blended"]["f1_macro"], abs=1e-12
                )
        # the probabilities did change: the over-confident folds' rows are better calibrated
        rows = calibrated["calibration"]["emotion"]["metrics"][
            "oof" if n_splits > 1 else "selection"
        ]
        assert rows["after"]["nll"] < rows["before"]["nll"]
        assert rows["after"]["ece"] < rows["before"]["ece"]
    # a binary argmax under vector calibration carries its re-expressed cut, sigmoid(b1 - b0)
    if not tox:
        assert "toxicity" not in plain.results["thresholds"]
        vector = run(
            config(f"cv.n_splits={n_splits}", *methods("vector")), all_metas, preds
        ).results
        folds = vector["calibration"]["toxicity"]["folds"].values()
        expected = np.mean([1 / (1 + np.exp(-(p["bias"][1] - p["bias"][0]))) for p in folds])
        assert vector["thresholds"]["toxicity"] == [pytest.approx(expected)]


def test_each_fold_is_fitted_on_its_own_validation_rows_never_the_val_or_test_files():
    all_metas = metas()
    preds = predictions(all_metas, 3)
    results = run(config("cv.n_splits=3"), all_metas, preds).results
    for name, meta in all_metas.items():
        for k, val in preds[name]["val"].items():
            probs = val[meta.prob_columns()].to_numpy(np.float64)
            truth = val["true"].to_numpy() if not meta.multilabel else val[meta.truth_columns()]
            expected = fit(probs, np.asarray(truth), meta.multilabel, "vector")
            assert results["calibration"][name]["folds"][str(k)] == expected
            assert results["calibration"][name]["fitted_rows"][str(k)] == len(val)
    # other val-file and test rows, other labels there: the same params
    changed = predictions(all_metas, 3, seed=0)
    for name in all_metas:
        for kind in ("valfile", "test"):
            for k in changed[name][kind]:
                changed[name][kind][k] = frame(all_metas[name], 77, np.random.default_rng(k), 0, truth_seed=9)  # fmt: skip
    again = run(config("cv.n_splits=3"), all_metas, changed).results
    assert {n: e["folds"] for n, e in again["calibration"].items()} == {
        n: e["folds"] for n, e in results["calibration"].items()
    }


def test_oof_rows_are_calibrated_by_params_fitted_on_the_other_folds():
    all_metas = metas()
    preds = predictions(all_metas, 3)
    summary = run(config("cv.n_splits=3"), all_metas, preds)
    meta = all_metas["emotion"]
    oof = summary.tables["oof_emotion.csv"]
    entry = summary.results["calibration"]["emotion"]
    assert entry["own_rows_in_sample"] is False and "oof" in entry["metrics"]
    raw_all, after_all, truth_all = [], [], []
    for k, val in preds["emotion"]["val"].items():
        others = pd.concat([f for j, f in preds["emotion"]["val"].items() if j != k])
        params = fit(
            others[meta.prob_columns()].to_numpy(np.float64),
            others[meta.truth_columns()].to_numpy(),
            True,
            "vector",
        )
        assert entry["own_rows_params"][str(k)] == params
        raw = val[meta.prob_columns()].to_numpy(np.float64)
        mine = oof[oof.fold == k].sort_values("row")[meta.prob_columns()].to_numpy()
        np.testing.assert_allclose(mine, calibrate(raw, True, params), atol=1e-12)
        raw_all.append(raw)
        after_all.append(calibrate(raw, True, params))
        truth_all.append(val[meta.truth_columns()].to_numpy())
    truth = np.concatenate(truth_all)
    metrics = entry["metrics"]["oof"]
    assert metrics["before"] == pytest.approx(scores(np.concatenate(raw_all), truth, True))
    assert metrics["after"] == pytest.approx(scores(np.concatenate(after_all), truth, True))


def test_the_blends_average_each_folds_probabilities_calibrated_by_its_own_params():
    all_metas = metas()
    preds = predictions(all_metas, 3)
    summary = run(config("cv.n_splits=3"), all_metas, preds)
    meta = all_metas["toxicity"]
    params = summary.results["calibration"]["toxicity"]["folds"]
    raw = [f[meta.prob_columns()].to_numpy(np.float64) for f in preds["toxicity"]["valfile"].values()]  # fmt: skip
    expected = np.mean([calibrate(p, False, params[str(k)]) for k, p in enumerate(raw)], axis=0)
    table = summary.tables["val_toxicity.csv"]
    np.testing.assert_allclose(table[meta.prob_columns()].to_numpy(), expected, atol=1e-12)
    truth = preds["toxicity"]["valfile"][0]["true"].to_numpy()
    metrics = summary.results["calibration"]["toxicity"]["metrics"]["valfile"]
    assert metrics["n"] == len(truth)
    assert metrics["before"] == pytest.approx(scores(np.mean(raw, axis=0), truth, False))
    assert metrics["after"] == pytest.approx(scores(expected, truth, False))
    assert "test" not in summary.results["calibration"]["toxicity"]["metrics"]  # unlabelled
    test = summary.tables["test_toxicity.csv"]
    raw_test = [f[meta.prob_columns()].to_numpy(np.float64) for f in preds["toxicity"]["test"].values()]  # fmt: skip
    np.testing.assert_allclose(
        test[meta.prob_columns()].to_numpy(),
        np.mean([calibrate(p, False, params[str(k)]) for k, p in enumerate(raw_test)], axis=0),
        atol=1e-12,
    )
    # the reliability diagram's rows: the val set, blended, before and after
    before, after, diagram_truth, multilabel = summary.reliability["toxicity"]
    np.testing.assert_allclose(after, expected)
    assert not multilabel and (diagram_truth == truth).all()


def test_one_fold_reports_its_own_rows_as_in_sample():
    all_metas = metas()
    results = run(config("cv.n_splits=1"), all_metas, predictions(all_metas, 1)).results
    entry = results["calibration"]["emotion"]
    assert entry["own_rows_in_sample"] is True
    assert set(entry["metrics"]) == {"valfile", "selection"}
    assert "in-sample" in entry["metrics"]["selection"]["rows"]
    assert entry["own_rows_params"] == entry["folds"]
    assert "the selection rows" in entry["fitted_on"]


def test_one_split_choosing_nothing_has_no_rows_to_fit_and_says_so(caplog):
    all_metas = metas()
    preds = predictions(all_metas, 1)
    results = run(config("cv.n_splits=1", "cv.selection=last"), all_metas, preds).results
    assert results["calibration"] == {}
    assert "cv.selection=last" in results["calibration_note"]
    assert "calibration: not fitted" in caplog.text


def test_none_leaves_a_task_out_of_the_calibration_block_and_its_tables_as_they_were():
    all_metas = metas()
    preds = predictions(all_metas, 2)
    summary = run(config("cv.n_splits=2", "tasks.emotion.calibration=none"), all_metas, preds)
    assert "emotion" not in summary.results["calibration"]
    meta = all_metas["emotion"]
    expected = np.mean(
        [f[meta.prob_columns()].to_numpy(np.float64) for f in preds["emotion"]["valfile"].values()],
        axis=0,
    )
    np.testing.assert_allclose(
        summary.tables["val_emotion.csv"][meta.prob_columns()].to_numpy(), expected, atol=1e-12
    )
