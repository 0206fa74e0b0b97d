"""A run's calibration travels to every backend: Predictor, OnnxPredictor, the export's own
mtl_onnx.py (with mtl and torch unimportable) and the HTTP API answer the same calibrated
probabilities, each fold calibrated with its own params before the blend. Runs and exports from
before calibration load and answer as they did; calibration that does not fit is refused, naming
the file and the fix.

The calibrated run is a copy of conftest's trained run (2 folds, weighted blend) with its
"calibration" block replaced by hand: params far from identity, different per fold, so
probabilities move far more than any tolerance here. A run from before calibration is a copy with
no "calibration" block at all (conftest's run is calibrated, the default)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_portable

from mtl.errors import PredictError
from mtl.harness.loadtest import ServerProcess, post
from mtl.inference.export import RUNTIME_FILE, export_run
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor
from mtl.inference.records import prediction_records
from mtl.io import file_sha256, write_json

EMOTION_BIAS = [0.6, -0.6, 0.3, -0.3, 0.9, -0.9, 0.0]
CALIBRATION = {  # results.json's form: params per fold id
    "toxicity": {
        "method": "vector",
        "folds": {
            "0": {"scale": [2.0], "bias": [0.0, 0.8]},
            "1": {"scale": [0.5], "bias": [0.4, -0.4]},
        },
    },
    "emotion": {
        "method": "vector",
        "folds": {
            "0": {"scale": [1.5] * 7, "bias": EMOTION_BIAS},
            "1": {"scale": [0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8], "bias": EMOTION_BIAS[::-1]},
        },
    },
    "sentiment": {
        "method": "temperature",
        "folds": {
            "0": {"scale": [3.0], "bias": [0.0, 0.0]},
            "1": {"scale": [0.25], "bias": [0.0, 0.0]},
        },
    },
}


@pytest.fixture(scope="module")
def calibrated(blended_export, tmp_path_factory) -> Path:
    """conftest's run, copied, with CALIBRATION in its results.json, exported fp32 + int8."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(blended_export.parent, run, ignore=shutil.ignore_patterns("export"))
    results = json.loads((run / "results.json").read_text())
    write_json(run / "results.json", dict(results, calibration=CALIBRATION))
    export_run(run, quantize="int8", force=True)
    return run


@pytest.fixture(scope="module")
def before_calibration(blended_export, tmp_path_factory) -> Path:
    """conftest's run, copied, as results.json was before calibration existed (no "calibration"
    block), exported fp32."""
    run = tmp_path_factory.mktemp("before_calibration") / "run"
    shutil.copytree(blended_export.parent, run, ignore=shutil.ignore_patterns("export"))
    results = json.loads((run / "results.json").read_text())
    assert results.pop("calibration")  # conftest's run is calibrated by default
    write_json(run / "results.json", results)
    export_run(run, force=True)
    return run


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    rows = [
        pd.read_csv(data_dir / f"{t}_val.csv")["text"].head(12) for t in ("toxicity", "emotion")
    ]
    return pd.concat(rows).tolist() + ["", "@someone www.example.com &amp; wow", "idiot " * 300]


def by_hand(fold: dict, task: str, k: int, multilabel: bool) -> np.ndarray:
    """Fold k's probabilities calibrated with fold k's params, written out without mtl.portable."""
    params = CALIBRATION[task]["folds"][str(k)]
    p = np.asarray(fold[task], dtype=np.float64)
    a, b = np.asarray(params["scale"]), np.asarray(params["bias"])
    if multilabel:
        return 1.0 / (1.0 + np.exp(-(a * np.log(p / (1.0 - p)) + b)))
    z = np.exp(a * np.log(p) + b)
    return z / z.sum(axis=1, keepdims=True)


def test_predictor_calibrates_each_fold_with_its_own_params_before_the_weighted_blend(
    calibrated, blended_export, texts, tmp_path
):
    predictor = Predictor.from_run(calibrated, device="cpu")
    assert [p.parent.name for p in predictor.sources] == ["fold_0", "fold_1"]
    assert predictor.blend_method == "weighted" and set(predictor.calibration) == set(CALIBRATION)
    folds = predictor.fold_probabilities(texts)
    weights = np.asarray(predictor.fold_scores) / np.sum(predictor.fold_scores)
    got = predictor.blend(folds)
    uncalibrated = Predictor.from_run(blended_export.parent, device="cpu").predict_proba(texts)
    for task, meta in predictor.metas.items():
        want = sum(w * by_hand(f, task, k, meta.multilabel) for k, (w, f) in enumerate(zip(weights, folds, strict=True)))  # fmt: skip
        np.testing.assert_allclose(got[task], want, rtol=0, atol=1e-9)
        # the params move every task's probabilities far beyond any tolerance below
        assert np.abs(got[task] - uncalibrated[task]).max() > 0.05, task
    np.testing.assert_allclose(predictor.predict_proba(texts)["emotion"], got["emotion"], atol=0)
    # predict.py --input's path (chunked files) blends through the same calibration
    source, out = tmp_path / "texts.csv", tmp_path / "preds.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    predictor.predict_file(source, out)
    written = pd.read_csv(out, keep_default_na=False)
    for task in got:
        columns = predictor.prob_columns(task)
        np.testing.assert_allclose(written[columns].to_numpy(float), got[task], atol=1e-6)


def test_every_backend_answers_the_same_calibrated_probabilities(calibrated, texts):
    torch_backend = Predictor.from_run(calibrated, device="cpu")
    spec = json.loads((calibrated / "export" / "predictor.json").read_text())
    # predictor.json: per task, the params of each exported fold in `files` order
    assert spec["files"]["fp32"] == ["fold_0.onnx", "fold_1.onnx"]
    for task, entry in CALIBRATION.items():
        assert spec["calibration"][task] == {
            "method": entry["method"],
            "folds": [entry["folds"]["0"], entry["folds"]["1"]],
        }
    expected = torch_backend.predict_proba(texts)
    for model in ("fp32", "int8"):
        onnx = OnnxPredictor.from_export(calibrated, model=model, device="cpu", batch_size=4)
        assert onnx.calibration == spec["calibration"]
        got = onnx.predict_proba(texts)
        portable = test_portable.run_portable(calibrated / "export", texts, model)
        assert portable["loaded"] == []  # mtl, torch, pandas... unimportable
        for task in expected:
            if model == "fp32":  # ONNX Runtime against PyTorch: test_export.py's tolerance
                np.testing.assert_allclose(got[task], expected[task], rtol=0, atol=1e-4)
            own = np.asarray(portable["probs"][task])
            np.testing.assert_allclose(own, got[task], rtol=0, atol=1e-6)
        records = json.loads(json.dumps(prediction_records(texts, onnx, got)))
        assert portable["records"] == records


def served_probabilities(predictions: list[dict], metas: dict) -> dict[str, np.ndarray]:
    return {
        task: np.asarray([[r[task]["probabilities"][str(c)] for c in meta.classes] for r in predictions])
        for task, meta in metas.items()
    }  # fmt: skip


def test_the_http_api_answers_the_calibrated_probabilities(calibrated, texts):
    """A real server on the ONNX backend; the PyTorch backend's request path in-process (one
    server start is enough to cover HTTP: both backends answer through RunAPI.answer)."""
    from mtl.inference.serve import RunAPI

    asked = texts[:6] + texts[-3:]
    local = OnnxPredictor.from_export(calibrated, model="fp32", device="cpu")
    want = local.predict_proba(asked)
    with ServerProcess(calibrated, "--backend", "onnx", "--onnx-model", "fp32") as server:
        status, body = post(server.url + "/predict", {"texts": asked})
    assert status == 200, body
    assert body["predictions"] == json.loads(json.dumps(prediction_records(asked, local, want)))
    for task, values in served_probabilities(body["predictions"], local.metas).items():
        np.testing.assert_allclose(values, want[task], rtol=0, atol=1e-6)

    api = RunAPI(calibrated, "torch", "auto", max_batch_size=4, batch_timeout=0.01)
    api.setup("cpu")
    assert api.predictor.calibration and not isinstance(api.predictor, OnnxPredictor)
    requests = [asked[:2], asked[2:7], asked[7:]]  # batched together, blended per request
    answers = [api.encode_response(a)["predictions"] for a in api.predict(requests)]
    torch_want = Predictor.from_run(calibrated, device="cpu").predict_proba(asked)
    served = served_probabilities([r for a in answers for r in a], api.predictor.metas)
    for task, values in served.items():
        np.testing.assert_allclose(values, torch_want[task], rtol=0, atol=1e-6)
        np.testing.assert_allclose(values, want[task], rtol=0, atol=1e-4)  # torch against ONNX


def test_the_int8_check_compares_labels_of_calibrated_probabilities(calibrated):
    """The export's int8-vs-fp32 agreement (manifest.json) is that of the calibrated predictors,
    deciding with the run's thresholds."""
    from mtl.inference.int8_check import label_agreement, val_texts

    fp32, int8 = (
        OnnxPredictor.from_export(calibrated, model=m, device="cpu") for m in ("fp32", "int8")
    )
    assert fp32.calibration and int8.calibration == fp32.calibration
    texts, _ = val_texts(fp32.cfg, calibrated, list(fp32.metas))
    a, b = fp32.labels(fp32.predict_proba(texts)), int8.labels(int8.predict_proba(texts))
    recorded = json.loads((calibrated / "export" / "manifest.json").read_text())["int8_agreement"]
    for task, meta in fp32.metas.items():
        share, _ = label_agreement(a[task], b[task], meta.multilabel, list(meta.classes))
        assert share == pytest.approx(recorded["tasks"][task]["label_decisions"]), task


def test_a_checkpoint_in_its_fold_folder_takes_its_folds_calibration(calibrated, texts, tmp_path):
    path = next((calibrated / "fold_1").glob("*.ckpt"))
    alone = Predictor.from_checkpoint(path, device="cpu")
    raw = alone.fold_probabilities(texts)[0]
    got = alone.predict_proba(texts)
    for task, meta in alone.metas.items():
        np.testing.assert_allclose(got[task], by_hand(raw, task, 1, meta.multilabel), atol=1e-9)
    # a lone copy cannot say which fold's params apply; the run's thresholds are calibrated ones
    lone = tmp_path / "model.ckpt"
    shutil.copyfile(path, lone)
    with pytest.raises(PredictError, match=r"not in a fold_<k>/ folder"):
        Predictor.from_checkpoint(lone, run_dir=calibrated, device="cpu")
    # with no run around it, it has no calibration to apply
    assert Predictor.from_checkpoint(lone, device="cpu").calibration == {}


def test_a_run_and_an_export_from_before_calibration_answer_as_before(
    before_calibration, texts, tmp_path
):
    old = Predictor.from_run(before_calibration, device="cpu")
    assert "calibration" not in json.loads((before_calibration / "results.json").read_text())
    assert old.calibration == {}
    folds = old.fold_probabilities(texts)
    got = old.predict_proba(texts)
    weights = np.asarray(old.fold_scores) / np.sum(old.fold_scores)
    for task in got:  # the blend of the folds' own probabilities, untouched
        want = sum(w * f[task].astype(np.float64) for w, f in zip(weights, folds, strict=True))
        np.testing.assert_allclose(got[task], want, rtol=0, atol=1e-12)
    # an export made before predictor.json had "calibration"
    export = tmp_path / "export"
    shutil.copytree(before_calibration / "export", export)
    spec = json.loads((export / "predictor.json").read_text())
    assert spec.pop("calibration") == {}
    rewrite(export, spec)
    reference = OnnxPredictor.from_export(before_calibration, model="fp32", device="cpu")
    reference = reference.predict_proba(texts)
    assert OnnxPredictor.from_export(export, model="fp32", device="cpu").calibration == {}
    got = OnnxPredictor.from_export(export, model="fp32", device="cpu").predict_proba(texts)
    portable = test_portable.run_portable(export, texts, "fp32")
    for task, values in reference.items():
        np.testing.assert_array_equal(got[task], values)
        np.testing.assert_allclose(np.asarray(portable["probs"][task]), values, rtol=0, atol=1e-6)


def rewrite(export: Path, spec: dict) -> None:
    """predictor.json replaced, and the manifest's checksum of it with it (a hand-made export)."""
    write_json(export / "predictor.json", spec)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"]["predictor.json"]["sha256"] = file_sha256(export / "predictor.json")
    write_json(export / "manifest.json", manifest)


def broken(block: dict, task: str, **change) -> dict:
    """A deep copy of `block` with task's entry changed."""
    block = json.loads(json.dumps(block))
    block[task].update(change)
    return block


def test_an_export_with_calibration_that_does_not_fit_is_refused_by_every_runtime(
    calibrated, tmp_path
):
    export = tmp_path / "export"
    shutil.copytree(calibrated / "export", export)
    good = json.loads((export / "predictor.json").read_text())
    tox = good["calibration"]["toxicity"]["folds"]
    cases = [
        (broken(good["calibration"], "emotion", method="isotonic"), "unknown calibration method"),
        (
            broken(good["calibration"], "toxicity", folds=tox[:1]),
            "'folds' holds 1, not one {scale, bias} per model",
        ),
        (
            broken(
                good["calibration"], "toxicity", folds=[tox[0], {"scale": [0.0], "bias": [0, 0]}]
            ),  # fmt: skip
            "task 'toxicity', fold_1.onnx: scale [0.0]",
        ),
        (
            broken(good["calibration"], "emotion", folds=[{"scale": [1.0], "bias": [0.0]}] * 2),
            "do not fit a task of 7 outputs: one scale per label",
        ),  # fmt: skip
    ]
    for block, words in cases:
        rewrite(export, dict(good, calibration=block))
        with pytest.raises(PredictError) as err:
            OnnxPredictor.from_export(export, model="fp32", device="cpu")
        message = str(err.value)
        assert words in message and str(export / "predictor.json") in message, message
        assert "Re-export the run" in message
        done = subprocess.run(
            [sys.executable, str(export / RUNTIME_FILE), "--text", "ok", "--model", "fp32"],
            capture_output=True, text=True, timeout=300, cwd="/",
        )  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert words in done.stderr and "re-export the run" in done.stderr, done.stderr
    # edited without the manifest: the checksum refuses it first
    (export / "predictor.json").write_text(json.dumps(dict(good, calibration={})))
    with pytest.raises(PredictError, match="does not match the sha256"):
        OnnxPredictor.from_export(export, model="fp32", device="cpu")


@pytest.fixture(scope="module")
def scratch(calibrated, tmp_path_factory) -> Path:
    """A copy of the calibrated run (no export) whose results.json the tests below rewrite."""
    run = tmp_path_factory.mktemp("scratch") / "run"
    shutil.copytree(calibrated, run, ignore=shutil.ignore_patterns("export"))
    return run


@pytest.mark.parametrize(
    "block, words",
    [
        (
            broken(CALIBRATION, "emotion", folds={"0": CALIBRATION["emotion"]["folds"]["0"]}),
            "but not for fold(s) 1, which are being loaded",
        ),  # fmt: skip
        (
            broken(CALIBRATION, "emotion", folds=[{"scale": [1.0], "bias": [0.0]}]),
            "no 'folds' object",
        ),  # fmt: skip
        (
            broken(CALIBRATION, "toxicity", method="histogram"),
            "unknown calibration method 'histogram'",
        ),  # fmt: skip
        (
            broken(
                CALIBRATION,
                "toxicity",
                folds={
                    "0": {"scale": [1.0], "bias": [0.0, 0.0]},
                    "1": {"scale": [float("nan")], "bias": [0.0, 0.0]},
                },
            ),  # fmt: skip
            "task 'toxicity', fold 1: scale [nan]",
        ),
        (
            broken(
                CALIBRATION,
                "sentiment",
                folds={k: {"scale": [1.0, 1.0], "bias": [0, 0]} for k in "01"},
            ),  # fmt: skip
            "do not fit a task of 2 outputs: one scale and",
        ),
        (
            dict(CALIBRATION, topic=CALIBRATION["toxicity"]),
            "task 'topic' is not among the models' tasks",
        ),  # fmt: skip
    ],
)
def test_a_run_whose_calibration_does_not_fit_is_refused_naming_results_json(scratch, block, words):
    results = json.loads((scratch / "results.json").read_text())
    write_json(scratch / "results.json", dict(results, calibration=block))
    with pytest.raises(PredictError) as err:
        Predictor.from_run(scratch, device="cpu")
    message = str(err.value)
    assert words in message and str(scratch / "results.json") in message, message
    assert f"python scripts/blend.py {scratch}" in message


@pytest.mark.parametrize("exported", ["before calibration", "calibrated"])
def test_an_export_older_than_its_runs_calibration_is_refused(
    exported, before_calibration, blended_export, tmp_path
):
    """A run exported before calibration, then refitted (scripts/blend.py) with it, or exported
    calibrated and then refitted with other params: its export would answer other probabilities
    than Predictor."""
    source = before_calibration if exported == "before calibration" else blended_export.parent
    run = tmp_path / "run"
    shutil.copytree(source, run)
    OnnxPredictor.from_export(run, model="fp32", device="cpu")  # as exported: the same
    results = json.loads((run / "results.json").read_text())
    write_json(run / "results.json", dict(results, calibration=CALIBRATION))
    with pytest.raises(PredictError) as err:
        OnnxPredictor.from_export(run, model="fp32", device="cpu")
    message = str(err.value)
    had, quantized = (
        ("none", "") if exported == "before calibration"
        else ("toxicity, emotion, sentiment", " --quantize int8")
    )  # fmt: skip
    assert "older than the run" in message and f"its calibration ({had})" in message, message
    assert message.endswith(f"python scripts/export.py {run} --format onnx{quantized}"), message


@pytest.mark.parametrize("change", ["blend", "thresholds"])
def test_an_export_older_than_its_runs_blend_or_thresholds_is_refused(
    change, blended_export, tmp_path
):
    """`scripts/blend.py RUN cv.blend=rank` re-blends a run and re-tunes its cuts: an export made
    before would answer other labels than Predictor.from_run, so it is refused as stale."""
    run = tmp_path / "run"
    shutil.copytree(blended_export.parent, run)
    OnnxPredictor.from_export(run, model="fp32", device="cpu")  # as exported: the same
    results = json.loads((run / "results.json").read_text())
    if change == "blend":
        assert results["blend"] == "weighted"
        results["blend"] = "rank"
        words = "it blends its folds by 'weighted'"
    else:
        results["thresholds"]["emotion"][3] += 0.05
        words = "its thresholds for 'emotion' are ["
    write_json(run / "results.json", results)
    with pytest.raises(PredictError) as err:
        OnnxPredictor.from_export(run, model="fp32", device="cpu")
    message = str(err.value)
    assert "older than the run" in message and words in message, message
    assert str(run / "results.json") in message, message
