"""ONNX export of a run (scripts/export.py) and the ONNX predictor: parity with Predictor, int8
agreement, the manifest, a self-contained folder, any task set, scripts/predict.py --backend onnx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, TOPICS, make_topics, tiny_overrides, topic_task

from mtl.cli.export import main as export_main
from mtl.cli.predict import main as predict_main
from mtl.config import load_config
from mtl.errors import PredictError
from mtl.harness.bench.serve_paths import agreement
from mtl.inference.export import export_run
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor
from mtl.io import file_sha256
from mtl.run.train import train


@pytest.fixture(scope="module")
def exported(blended_export) -> Path:
    """Three tasks, 2 folds, tuned emotion thresholds, the score-weighted blend (conftest)."""
    return blended_export


@pytest.fixture(scope="module")
def run(exported) -> Path:
    return exported.parent


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    rows = [pd.read_csv(data_dir / f"{t}_val.csv")["text"] for t in ("toxicity", "emotion")]
    return pd.concat(rows).tolist() + ["", "   ", "love " * 400, "idiot"]


def test_fp32_export_equals_predictor(run, exported, texts):
    reference = Predictor.from_run(run, device="cpu")
    onnx = OnnxPredictor.from_export(exported, model="fp32", device="cpu")
    assert onnx.blend_method == reference.blend_method == "weighted"
    assert onnx.fold_scores == reference.fold_scores and len(onnx.models) == 2
    assert {k: v.tolist() for k, v in onnx.thresholds.items()} == {
        k: v.tolist() for k, v in reference.thresholds.items()
    }
    expected, got = reference.predict_proba(texts), onnx.predict_proba(texts)
    for task in expected:
        assert np.abs(got[task] - expected[task]).max() <= 1e-4, task
    assert onnx.labels(got) == reference.labels(expected)
    frame = onnx.predict(texts[:5])
    assert list(frame.columns) == ["text"] + reference.output_columns()


def test_int8_agreement_in_the_manifest_is_what_int8_and_fp32_answer(run, exported):
    """The manifest's int8-vs-fp32 agreement is measured, not assumed: recomputed here on the same
    val texts it equals the recorded one. A one-epoch tiny random model sits near its cuts, so the
    bar is loose (a broken quantization agrees on about half); the 99% gate has its own tests."""
    from mtl.inference.int8_check import val_texts

    fp32 = OnnxPredictor.from_export(exported, model="fp32", device="cpu")
    int8 = OnnxPredictor.from_export(exported, device="cpu")  # auto: int8 when exported
    assert int8.model_kind == "int8"
    texts, _ = val_texts(Predictor.from_run(run, device="cpu").cfg, run, list(fp32.metas))
    a, b = fp32.labels(fp32.predict_proba(texts)), int8.labels(int8.predict_proba(texts))
    recorded = json.loads((exported / "manifest.json").read_text())["int8_agreement"]["tasks"]
    for task, meta in fp32.metas.items():
        # per label decision, as the benchmark reports it: a multi-label text holds 7 of them
        per_label, _ = agreement(a[task], b[task], meta.multilabel, list(meta.classes))
        assert per_label == pytest.approx(recorded[task]["label_decisions"]), task
        assert per_label >= 0.9, (task, per_label)
    sizes = {p.name: p.stat().st_size for p in exported.glob("*.onnx")}
    assert sizes["fold_0.int8.onnx"] < sizes["fold_0.onnx"]


def test_manifest_names_sources_and_files_with_checksums(run, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert [s["fold"] for s in manifest["sources"]] == ["fold_0", "fold_1"]
    for source in manifest["sources"]:
        assert file_sha256(Path(source["checkpoint"])) == source["sha256"]
        assert Path(source["checkpoint"]).parent.parent == run.resolve()
    names = set(manifest["files"])
    assert {"fold_0.onnx", "fold_1.onnx", "fold_0.int8.onnx", "predictor.json"} <= names
    assert any(n.startswith("tokenizer/") for n in names)
    for name, entry in manifest["files"].items():
        assert file_sha256(exported / name) == entry["sha256"], name
    assert manifest["parity_on_probe_texts"]["fp32"]["max_abs_prob_diff"] <= 1e-4
    assert manifest["opset"] >= 17 and manifest["quantize"] == "int8"
    assert not (run / "export.tmp").exists()


def test_bert_attention_is_fused_into_one_op_per_layer(run, exported):
    # eager attention traces into the pattern ONNX Runtime fuses; SDPA's NaN guards would not fuse
    import onnx

    layers = Predictor.from_run(run).models[0].encoder.config.num_hidden_layers
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["fused_operators"] == {f"fold_{k}": {"Attention": layers} for k in (0, 1)}
    for name, fused in (("fold_0.onnx", "Attention"), ("fold_0.int8.onnx", "QAttention")):
        ops = [node.op_type for node in onnx.load(str(exported / name)).graph.node]
        assert ops.count(fused) == layers and "IsNaN" not in ops, name


def test_export_leaves_the_models_attention_as_it_was(run):
    from mtl.inference.onnx_graph import eager_attention

    model = Predictor.from_run(run).models[0]
    before = model.encoder.config._attn_implementation
    with eager_attention(model):
        assert model.encoder.config._attn_implementation == "eager"
    assert model.encoder.config._attn_implementation == before


def test_export_folder_works_when_copied_elsewhere(run, exported, texts, tmp_path):
    copy = shutil.copytree(exported, tmp_path / "shipped")
    spec = json.loads((copy / "predictor.json").read_text())
    spec["config"]["backbone"]["name"] = "/nonexistent/backbone"  # nothing read from the run side
    (copy / "predictor.json").write_text(json.dumps(spec))
    manifest = json.loads((copy / "manifest.json").read_text())  # as if exported so: re-signed
    manifest["files"]["predictor.json"]["sha256"] = file_sha256(copy / "predictor.json")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    here = OnnxPredictor.from_export(exported, model="fp32").predict_proba(texts)
    there = OnnxPredictor.from_export(copy, model="fp32").predict_proba(texts)
    for task in here:
        np.testing.assert_array_equal(here[task], there[task])


def test_one_task_multiclass_run_exports_with_parity(tiny_backbone, data_dir, tmp_path):
    folder = tmp_path / "topics"
    folder.mkdir()
    make_topics(90, 5).to_csv(folder / "train.csv", index=False)
    make_topics(30, 6).to_csv(folder / "val.csv", index=False)
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(tiny_backbone, data_dir, tmp_path)
        + [
            "tasks.toxicity=null",
            "tasks.emotion=null",
            "tasks.sentiment=null",
            *topic_task(folder / "train.csv", folder / "val.csv"),
            "trainer.max_epochs=1",
        ],
    )
    train(cfg)
    run = tmp_path / cfg.run.name
    out = export_run(run, tmp_path / "topic_export")
    texts = make_topics(30, 7)["body"].tolist()
    reference = Predictor.from_run(run, device="cpu")
    onnx = OnnxPredictor.from_export(out)
    assert onnx.model_kind == "fp32" and onnx.classes == {"topic": TOPICS}
    expected, got = reference.predict_proba(texts), onnx.predict_proba(texts)
    assert np.abs(got["topic"] - expected["topic"]).max() <= 1e-4
    assert onnx.labels(got) == reference.labels(expected)


def test_predict_script_with_the_onnx_backend(run, exported, capsys):
    argv = [str(run), "--text", "you idiot", "--text", "I love this", "--format", "json"]
    assert predict_main(argv) == 0
    torch_records = json.loads(capsys.readouterr().out)
    assert predict_main(argv + ["--backend", "onnx", "--onnx-model", "fp32"]) == 0
    onnx_records = json.loads(capsys.readouterr().out)
    for a, b in zip(torch_records, onnx_records, strict=True):
        for task in ("toxicity", "emotion", "sentiment"):
            assert a[task].get("label") == b[task].get("label")
            assert a[task].get("labels") == b[task].get("labels")
            for c, p in a[task]["probabilities"].items():
                assert abs(b[task]["probabilities"][c] - p) <= 1e-4
    assert predict_main([str(run), "--backend", "onnx", "--text", "hi"]) == 0  # int8 table
    assert "toxicity" in capsys.readouterr().out


def test_missing_export_and_missing_int8_are_clear_errors(run, tmp_path, capsys):
    with pytest.raises(PredictError, match="No ONNX export"):
        OnnxPredictor.from_export(tmp_path)
    fp32_only = tmp_path / "fp32_only"
    assert export_main([str(run), "--format", "onnx", "--out", str(fp32_only)]) == 0
    assert "fp32: max abs probability difference" in capsys.readouterr().out
    with pytest.raises(PredictError, match="no int8 models"):
        OnnxPredictor.from_export(fp32_only, model="int8")


def test_benchmark_serve_path_reports_speed_ratios_and_parity(run, exported, tmp_path):
    from mtl.cli.benchmark import main as bench_main

    out = tmp_path / "serve.json"
    argv = ["--serve", str(run), "--out", str(out), "--predict-texts", "24", "--repeats", "1"]
    assert bench_main(argv + ["--val-rows", "20", "--threads", "1", "--batch-size", "5"]) == 0
    result = json.loads(out.read_text())
    assert result["batch_size"] == 5
    assert set(result["speed"]) == {"torch_fp32", "onnx_fp32", "onnx_int8", "portable_int8"}
    assert result["speed"]["torch_fp32"]["vs_torch_fp32"] == 1.0
    assert all(entry["texts_per_s"] > 0 for entry in result["speed"].values())
    assert set(result["parity"]) == {"toxicity", "emotion", "sentiment"}
    for entry in result["parity"].values():
        assert entry["rows"] == 20 and entry["fp32_max_abs_prob_diff_vs_torch"] <= 1e-4
        assert 0.0 <= entry["int8_label_agreement_vs_fp32"] <= 1.0
        assert entry["portable_max_abs_prob_diff_vs_onnx_int8"] <= 1e-6
        assert entry["portable_labels_equal_onnx_int8"]
    assert result["file_bytes"]["fold_0.int8.onnx"] < result["file_bytes"]["fold_0.onnx"]


def test_onnx_ablation_times_int8_with_each_speed_up_on_and_off(run, exported, tmp_path):
    from mtl.cli.benchmark import main as bench_main

    out = tmp_path / "ablation.json"
    argv = ["--serve", str(run), "--onnx-ablation", "--out", str(out), "--predict-texts", "16"]
    assert bench_main(argv + ["--repeats", "1", "--val-rows", "10", "--threads", "1"]) == 0
    ablation = json.loads(out.read_text())["ablation"]
    assert set(ablation["speed"]) == {
        "torch_fp32", "int8", "int8_skipln_fusion", "int8_unfused", "int8_unfused_skipln_fusion"
    }  # fmt: skip
    assert all(entry["texts_per_s"] > 0 for entry in ablation["speed"].values())
    op = ablation["op"]
    assert op["hidden"] == 32 and op["rows"] > 0
    assert set(op["us_per_call"]) == {"SkipLayerNormalization", "Add+Add+LayerNormalization"}
    assert all(us > 0 for us in op["us_per_call"].values())


def test_onnx_ablation_needs_serve(capsys):
    from mtl.cli.benchmark import main as bench_main

    with pytest.raises(SystemExit):
        bench_main(["--onnx-ablation", "--out", "x.json"])
    assert "--onnx-ablation goes with --serve RUN" in capsys.readouterr().err


def test_skipping_the_skip_layer_norm_fusion_changes_no_answer(exported, texts):
    shipped = OnnxPredictor.from_export(exported, model="fp32", device="cpu")
    default = OnnxPredictor.from_export(exported, model="fp32", disabled_optimizers=[])
    assert (
        shipped.disabled_optimizers == ["SkipLayerNormFusion"] and default.disabled_optimizers == []
    )
    a, b = shipped.predict_proba(texts), default.predict_proba(texts)
    for task in a:
        assert np.abs(a[task] - b[task]).max() <= 1e-5, task
