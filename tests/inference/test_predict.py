"""Predictor API and scripts/predict.py on a tiny two-fold run (random BERT, fixture CSVs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, tiny_overrides

from mtl.cli.predict import main
from mtl.config import load_config
from mtl.errors import CheckpointError, PredictError
from mtl.inference.predictor import Predictor
from mtl.portable import calibrate
from mtl.run.blend import blend
from mtl.run.train import train

TASKS = ("toxicity", "emotion", "sentiment")


@pytest.fixture(scope="module")
def run(tiny_backbone, data_dir, tmp_path_factory) -> Path:
    """A finished tiny run: 2 folds, tuned emotion thresholds, test files for every task."""
    out = tmp_path_factory.mktemp("predict_run")
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + ["cv.n_splits=2", "tasks.emotion.threshold=tuned", "trainer.max_epochs=1"],
    )
    train(cfg)
    return out / cfg.run.name


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run, device="cpu")


@pytest.fixture
def texts(data_dir) -> list[str]:
    base = pd.read_csv(data_dir / "toxicity_test.csv")["text"].tolist()
    return base + ["", "   ", "love " * 400, "idiot"]


def source_texts(data_dir: Path, task: str, rows) -> list[str]:
    """The raw texts at `rows` (0-based data rows) of the task's test file."""
    return pd.read_csv(data_dir / f"{task}_test.csv")["text"].iloc[np.asarray(rows)].tolist()


def best_checkpoint(fold_dir: Path) -> Path:
    return fold_dir / json.loads((fold_dir / "metrics.json").read_text())["best_checkpoint"]


# --- equality with the run's own predictions ------------------------------------------------


def test_predict_equals_the_runs_blended_test_predictions(run, predictor, data_dir):
    """Needs the run-folder contract's test_<task>.csv (blended over folds, with thresholds)."""
    for task in TASKS:
        path = run / f"test_{task}.csv"
        assert path.is_file(), f"{path} missing: the run folder must hold blended test_<task>.csv"
        stored = pd.read_csv(path, keep_default_na=False)
        got = predictor.predict(source_texts(data_dir, task, stored["row"]))
        columns = predictor.prob_columns(task)
        np.testing.assert_allclose(
            got[columns].to_numpy(), stored[columns].to_numpy(dtype=np.float64), atol=1e-5
        )
        assert got[f"{task}_label"].astype(str).tolist() == (
            stored[f"{task}_label"].astype(str).tolist()
        )


def test_one_checkpoint_equals_its_folds_predictions(run, data_dir):
    """fold_<k>/val_<task>.csv (out-of-fold rows of the train file) and fold_<k>/test_<task>.csv:
    the fold's own (uncalibrated) probabilities, which its checkpoint gives before calibration;
    calibrated with the fold's params (results.json) they are what it predicts (issue 26)."""
    folds = sorted(run.glob("fold_*/metrics.json"))
    assert len(folds) == 2
    calibration = json.loads((run / "results.json").read_text())["calibration"]
    assert set(calibration) == set(TASKS)  # calibrated by default
    for metrics in folds:
        fold = metrics.parent
        k = fold.name.removeprefix("fold_")
        p = Predictor.from_checkpoint(best_checkpoint(fold), device="cpu")
        for task in TASKS:
            for kind, split in (("val", "train"), ("test", "test")):
                path = fold / f"{kind}_{task}.csv"
                assert path.is_file(), f"{path} missing (run folder contract)"
                stored = pd.read_csv(path, keep_default_na=False)
                prob = p.prob_columns(task)
                # older folds name probability columns by class only
                columns = prob if prob[0] in stored else [str(c) for c in p.classes[task]]
                frame = pd.read_csv(data_dir / f"{task}_{split}.csv")
                rows = frame["text"].iloc[stored["row"].to_numpy()].tolist()
                want = stored[columns].to_numpy(dtype=np.float64)
                [raw] = p.fold_probabilities(rows)
                np.testing.assert_allclose(raw[task], want, atol=1e-5)
                params = calibration[task]["folds"][k]
                np.testing.assert_allclose(
                    p.predict_proba(rows)[task],
                    calibrate(want, p.metas[task].multilabel, params),
                    atol=1e-5,
                )


def test_run_blend_uses_every_finished_fold_and_the_runs_thresholds(run, predictor, texts):
    assert [p.parent.name for p in predictor.sources] == ["fold_0", "fold_1"]
    assert predictor.fold_scores == [
        json.loads((run / f"fold_{k}" / "metrics.json").read_text())["metrics"]["val/score"]
        for k in (0, 1)
    ]
    results = json.loads((run / "results.json").read_text())
    assert predictor.blend_method == results.get("blend", "mean")
    if "emotion" in results.get("thresholds", {}):
        np.testing.assert_allclose(
            predictor.thresholds["emotion"], results["thresholds"]["emotion"]
        )
    singles = [Predictor.from_checkpoint(p, device="cpu") for p in predictor.sources]
    folds = [s.predict_proba(texts)["toxicity"] for s in singles]
    for method in ("mean", "rank", "weighted"):
        p = Predictor.from_run(run, device="cpu", blend=method)
        np.testing.assert_allclose(
            p.predict_proba(texts)["toxicity"],
            blend(folds, method, p.fold_scores),
            atol=1e-6,
        )


# --- batching, odd texts ----------------------------------------------------------------------


def test_the_default_batch_size_is_capped_on_a_cpu_only(run, predictor):
    from box import Box

    from mtl.inference.predictor import CPU_BATCH_SIZE, default_batch_size

    configured = int(predictor.cfg.data.eval_batch_size)
    assert predictor.batch_size == min(configured, CPU_BATCH_SIZE)
    assert Predictor.from_run(run, device="cpu", batch_size=50).batch_size == 50
    cfg = Box({"data": {"eval_batch_size": 128}})
    assert default_batch_size(cfg, torch.device("cpu")) == CPU_BATCH_SIZE
    assert default_batch_size(cfg, "cuda") == default_batch_size(cfg, torch.device("cuda:1")) == 128
    assert default_batch_size(Box({"data": {"eval_batch_size": 4}}), "cpu") == 4
    with pytest.raises(PredictError, match="positive integer"):
        Predictor.from_run(run, device="cpu", batch_size=0)


def test_results_do_not_depend_on_batch_size(predictor, texts):
    outputs = [predictor.predict_proba(texts, batch_size=b) for b in (1, 7, 64)]
    for other in outputs[1:]:
        for task in TASKS:
            np.testing.assert_allclose(other[task], outputs[0][task], atol=1e-5)
    # one text alone gives what it gets among others
    alone = predictor.predict_proba([texts[3]])
    for task in TASKS:
        np.testing.assert_allclose(alone[task][0], outputs[0][task][3], atol=1e-5)


def test_empty_and_very_long_texts(predictor):
    long = "you idiot " * 1000
    frame = predictor.predict(["", "  ", None, long, long + "thanks friend nice"])
    assert len(frame) == 5
    assert frame["text"].tolist()[:3] == ["", "  ", ""]
    assert len(predictor.encode([long])[0]) == predictor.max_length  # truncated
    probs = frame[predictor.prob_columns("toxicity")].to_numpy()
    np.testing.assert_allclose(probs[3], probs[4], atol=1e-6)  # the tail is cut off
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.isfinite(frame[predictor.prob_columns("emotion")].to_numpy()).all()


def test_the_runs_preprocessing_is_applied(run, tmp_path):
    """data.preprocess from the checkpoint's config runs before tokenizing, as in training. The
    edited copy stays in a fold_0/ folder: a copy elsewhere with the calibrated run as `run_dir`
    is refused (which fold's calibration applies is unknown: test_calibrated_backends.py)."""
    path = best_checkpoint(run / "fold_0")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["data"]["preprocess"] = "tweet"
    tweet = tmp_path / "fold_0" / "tweet.ckpt"
    tweet.parent.mkdir()
    torch.save(ckpt, tweet)
    plain = Predictor.from_checkpoint(path, device="cpu")
    p = Predictor.from_checkpoint(tweet, run_dir=run, device="cpu")
    raw, clean = "@bob you   idiot https://x.y/z &amp; wow", "@user you idiot http & wow"
    assert [x.tolist() for x in p.encode([raw])] == [x.tolist() for x in plain.encode([clean])]
    np.testing.assert_allclose(
        p.predict_proba(raw)["toxicity"], plain.predict_proba([clean])["toxicity"], atol=1e-6
    )


def test_predict_frame_columns_and_labels(predictor, texts):
    frame = predictor.predict(texts)
    assert frame.columns.tolist() == ["text"] + predictor.output_columns()
    assert predictor.output_columns()[:3] == ["toxicity_0", "toxicity_1", "toxicity_label"]
    probs = predictor.predict_proba(texts)
    assert probs["emotion"].shape == (len(texts), 7)
    labels = predictor.labels(probs)
    emotions = predictor.classes["emotion"]
    for i, chosen in enumerate(labels["emotion"]):
        cuts = predictor.thresholds["emotion"]
        over = [c for c, p, t in zip(emotions, probs["emotion"][i], cuts, strict=True) if p >= t]
        assert chosen == over
        assert frame["emotion_label"][i] == "|".join(over)
    # issue 26: a binary argmax under vector calibration is a cut on the calibrated scale
    [cut] = predictor.thresholds["toxicity"]
    assert frame["toxicity_label"].tolist() == [int(p >= cut) for p in probs["toxicity"][:, 1]]


# --- files ----------------------------------------------------------------------------------


def test_predict_file_streams_csv_and_keeps_input_columns(predictor, texts, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"id": [f"{i:03d}" for i in range(len(texts))], "comment": texts, "note": ""}
    ).to_csv(src, index=False)
    out = tmp_path / "out" / "preds.csv"
    rows = predictor.predict_file(src, out, text_column="comment", chunk_size=7, batch_size=5)
    assert rows == len(texts)
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got.columns.tolist() == ["id", "comment", "note"] + predictor.output_columns()
    assert got["id"].tolist() == [f"{i:03d}" for i in range(len(texts))]  # cells kept verbatim
    assert got["comment"].tolist() == texts and set(got["note"]) == {""}
    expected = predictor.predict(texts)
    columns = [c for c in predictor.output_columns() if not c.endswith("_label")]
    np.testing.assert_allclose(got[columns].astype(float), expected[columns], atol=1e-6)
    assert got["emotion_label"].tolist() == expected["emotion_label"].tolist()
    assert not [p.name for p in out.parent.iterdir() if p.name != "preds.csv"]  # no temp files


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".tsv"])
def test_predict_file_other_formats(predictor, texts, tmp_path, suffix):
    frame = pd.DataFrame({"text": texts, "n": range(len(texts))})
    src = tmp_path / f"in{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(src, index=False)
    elif suffix == ".jsonl":
        frame.to_json(src, orient="records", lines=True)
    else:
        frame.to_csv(src, sep="\t", index=False)
    out = tmp_path / f"out{suffix}"
    assert predictor.predict_file(src, out, chunk_size=9) == len(texts)
    if suffix == ".parquet":
        got = pd.read_parquet(out)
    elif suffix == ".jsonl":
        got = pd.read_json(out, lines=True, dtype=False)
    else:
        got = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert got["n"].astype(int).tolist() == list(range(len(texts)))
    np.testing.assert_allclose(
        got[predictor.prob_columns("sentiment")].astype(float),
        predictor.predict_proba(texts)["sentiment"],
        atol=1e-6,
    )


def test_rank_blend_labels_a_text_alone_as_in_a_batch_and_as_the_mean_blend(run, texts):
    """Issue 11: a lone text under `rank` used to get ranks [0, 0], i.e. always class 0."""
    rank = Predictor.from_run(run, device="cpu", blend="rank")
    mean = Predictor.from_run(run, device="cpu", blend="mean")
    batch = rank.predict(texts)
    for i in range(3):
        alone = rank.predict([texts[i]])
        for task in rank.tasks:
            assert alone[f"{task}_label"][0] == batch[f"{task}_label"][i]
    together = mean.predict(texts)
    for task in rank.tasks:
        assert batch[f"{task}_label"].tolist() == together[f"{task}_label"].tolist()


def test_header_only_input_gives_header_only_output(predictor, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("text,id\n")
    assert predictor.predict_file(src, tmp_path / "out.csv") == 0
    got = pd.read_csv(tmp_path / "out.csv")
    assert got.empty and got.columns.tolist() == ["text", "id"] + predictor.output_columns()


def test_input_without_the_text_column_is_a_clear_error(predictor, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"comment": ["hi"], "id": [1]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(PredictError, match=r"no column 'body'.*\['comment', 'id'\]"):
        predictor.predict_file(src, out, text_column="body")
    assert list(tmp_path.iterdir()) == [src]  # nothing written, no temp file left
    with pytest.raises(PredictError, match="unknown extension '.xlsx'"):
        predictor.predict_file(src, tmp_path / "out.xlsx")
    with pytest.raises(PredictError, match="not found"):
        predictor.predict_file(tmp_path / "missing.csv", out)


# --- loading errors ---------------------------------------------------------------------------


class NotAllowed:  # pickled by torch.save; refused by weights_only=True
    pass


def test_bad_checkpoints_are_clear_errors_naming_the_file(run, tmp_path):
    real = best_checkpoint(run / "fold_0")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    no_state = tmp_path / "no_state.ckpt"
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    torch.save({"hyper_parameters": ckpt["hyper_parameters"]}, no_state)
    wrong = tmp_path / "wrong.ckpt"
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "heads" not in k}
    torch.save(ckpt, wrong)
    pickled = tmp_path / "object.pt"
    torch.save({"hyper_parameters": NotAllowed()}, pickled)
    cases = {
        tmp_path / "missing.ckpt": "not found",
        truncated: "truncated, corrupt",
        garbage: "truncated, corrupt",
        plain: "not an mtl checkpoint",
        tensor: "not an mtl checkpoint",
        no_state: "not an mtl checkpoint",
        wrong: "does not describe a model",
        pickled: "weights_only",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as info:
            Predictor.from_checkpoint(path, device="cpu")
        assert str(path) in str(info.value)


def test_run_folder_without_a_finished_fold_is_an_error(tmp_path):
    with pytest.raises(PredictError, match="Run folder not found"):
        Predictor.from_run(tmp_path / "nope")
    (tmp_path / "fold_0").mkdir()
    with pytest.raises(PredictError, match="no finished fold.*fold_0"):
        Predictor.from_run(tmp_path)


def test_checkpoint_outside_a_run_folder_uses_the_backbone_tokenizer(run, tmp_path, texts):
    """With no run around it, it has no calibration either: it answers its model's own
    probabilities, those of the same checkpoint in its run before calibration."""
    lone = tmp_path / "a" / "b" / "model.ckpt"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(best_checkpoint(run / "fold_1").read_bytes())
    alone = Predictor.from_checkpoint(lone, device="cpu")
    assert alone.calibration == {}
    got = alone.predict_proba(texts)
    ref = Predictor.from_checkpoint(best_checkpoint(run / "fold_1"), device="cpu")
    assert ref.calibration  # the run's: fold 1's params
    [want] = ref.fold_probabilities(texts)
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], atol=1e-6)


def test_cuda_request_without_a_gpu_is_an_error(run):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(PredictError, match="no CUDA GPU"):
        Predictor.from_run(run, device="cuda")


# --- command line -----------------------------------------------------------------------------


def test_cli_texts_as_table_and_json(run, predictor, capsys):
    assert main([str(run), "--text", "I love this", "--text", "you idiot", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "[1] 'I love this'" in table and "[2] 'you idiot'" in table
    assert "emotion" in table and "toxicity_" not in table
    assert main([str(run), "--text", "I love this", "--text", "", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    probs = predictor.predict_proba(["I love this", ""])
    assert [r["text"] for r in records] == ["I love this", ""]
    for i, record in enumerate(records):
        emotion = record["emotion"]
        assert list(emotion["probabilities"]) == predictor.classes["emotion"]
        np.testing.assert_allclose(
            list(emotion["probabilities"].values()), probs["emotion"][i], atol=1e-6
        )
        assert emotion["labels"] == predictor.labels(probs)["emotion"][i]
        assert record["toxicity"]["label"] in (0, 1)


def test_cli_file_and_single_checkpoint(run, tmp_path, capsys):
    src = tmp_path / "in.csv"
    pd.DataFrame({"body": ["I love this", "you idiot", ""]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    ckpt = best_checkpoint(run / "fold_0")
    argv = ["--checkpoint", str(ckpt), "--input", str(src), "--text-column", "body"]
    assert main(argv + ["--output", str(out), "--batch-size", "2", "--no-progress"]) == 0
    got = pd.read_csv(out, keep_default_na=False)
    want = Predictor.from_checkpoint(ckpt, device="cpu").predict(["I love this", "you idiot", ""])
    np.testing.assert_allclose(got["toxicity_1"], want["toxicity_1"], atol=1e-6)
    capsys.readouterr()
    assert main(argv + ["--text-column", "text", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: Input file" in err and "'body'" in err and "Traceback" not in err
    assert main(argv + ["--output", str(out), "--batch-size", "0"]) == 2
    assert "error: The batch size must be a positive integer" in capsys.readouterr().err


def test_cli_errors_exit_2_without_traceback(tmp_path):
    garbage = tmp_path / "broken.ckpt"
    garbage.write_bytes(b"\x00garbage" * 100)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "predict.py"),
            "--checkpoint",
            str(garbage),
            "--text",
            "hi",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: Cannot read checkpoint {garbage}"), done.stderr
    assert "Traceback" not in done.stderr


def test_import_mtl_does_not_import_torch():
    code = (
        "import sys, mtl; assert 'torch' not in sys.modules, 'torch imported'; "
        "from mtl import Predictor; print(Predictor.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Predictor"
