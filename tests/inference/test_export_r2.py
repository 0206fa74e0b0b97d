"""Issue 22 on the ONNX export: what --out may replace (item 8), exports checked against their
manifest and their run on load (item 9), int8 refused when it changes labels (item 23)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from mtl.cli.export import main as export_main
from mtl.cli.predict import main as predict_main
from mtl.errors import PredictError
from mtl.inference.onnx_predict import OnnxPredictor, load_runtime
from mtl.inference.predictor import Predictor
from mtl.io import file_sha256


@pytest.fixture
def run(blended_export, tmp_path) -> Path:
    """A copy of conftest's run (2 folds, int8 export in export/) that a test may change."""
    return Path(shutil.copytree(blended_export.parent, tmp_path / "run", symlinks=True))


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): file_sha256(p) for p in folder.rglob("*") if p.is_file()
    }


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith((".export~", ".shipped~"))]


def flipped_quantizer(source: Path, target: Path) -> None:
    """A stand-in for int8 quantization that answers 1 - p: a model whose labels change."""
    model = onnx.load(str(source))
    graph = model.graph
    graph.initializer.append(helper.make_tensor("flip_one", TensorProto.FLOAT, [], [1.0]))
    for output in graph.output:
        raw = output.name + "_unflipped"
        for node in graph.node:
            node.output[:] = [raw if name == output.name else name for name in node.output]
        graph.node.append(helper.make_node("Sub", ["flip_one", raw], [output.name]))
    onnx.save(model, str(target))


# --- item 8: what --out may replace --------------------------------------------------------------


@pytest.mark.parametrize("where", ["run", "parent"])
def test_export_never_replaces_the_run_folder_or_a_folder_holding_it(run, where, capsys):
    before = snapshot(run)
    out = run if where == "run" else run.parent
    for extra in ([], ["--overwrite"]):
        assert export_main([str(run), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "never replaces it" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_export_never_replaces_a_folder_with_a_run_inside_even_with_overwrite(
    run, tmp_path, capsys
):
    holder = tmp_path / "holder"
    shutil.copytree(run / "fold_0", holder / "old_run" / "fold_0")
    assert export_main([str(run), "--out", str(holder), "--overwrite"]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert (holder / "old_run" / "fold_0" / "best.ckpt").is_file()
    # a folder of the run that is not an export (its tokenizer) is not replaced either
    before = snapshot(run / "tokenizer")
    assert export_main([str(run), "--out", str(run / "tokenizer"), "--overwrite"]) == 2
    assert "is a folder of the run" in capsys.readouterr().err
    assert snapshot(run / "tokenizer") == before


def test_export_refuses_a_folder_it_did_not_make_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export_main([str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not an mtl export" in err and "--overwrite" in err
    assert (out / "notes.txt").read_text() == "keep me" and hidden_leftovers(tmp_path) == []
    assert export_main([str(run), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "manifest.json").is_file()


def test_an_export_with_files_it_did_not_write_is_kept_unless_overwrite(run, capsys):
    (run / "export" / "my_notes.txt").write_text("keep me")
    assert export_main([str(run), "--out", str(run / "export")]) == 2
    assert "my_notes.txt" in capsys.readouterr().err
    assert (run / "export" / "my_notes.txt").is_file()


def test_a_failed_export_keeps_the_previous_one_and_leaves_no_temp_folder(run, monkeypatch):
    before = snapshot(run / "export")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("mtl.inference.export.export_onnx", broken)
    with pytest.raises(PredictError, match="exporter crashed"):
        from mtl.inference.export import export_run

        export_run(run)
    assert snapshot(run / "export") == before and hidden_leftovers(run) == []


def test_reexport_replaces_its_own_export_whole(run):
    from mtl.inference.export import export_run

    (run / "export" / "__pycache__").mkdir()  # Python's, from importing mtl_onnx.py there
    export_run(run)  # fp32 only now: the int8 files of the old export must not linger
    assert not list((run / "export").glob("*.int8.onnx")) and hidden_leftovers(run) == []
    assert OnnxPredictor.from_export(run).model_kind == "fp32"


def test_a_killed_exports_staging_folder_is_removed_by_the_next_one(run, tmp_path):
    import subprocess
    import sys

    from mtl.inference.export import export_run
    from mtl.io import tmp_prefix

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = tmp_prefix("x").split("@")[1].rstrip("~")
    orphan = tmp_path / f".shipped~{dead}@{host}~abc"  # kill -9 mid-export left it
    orphan.mkdir()
    (orphan / "fold_0.onnx").write_text("partial")
    other = tmp_path / f".notes~{dead}@{host}~xyz.tmp"  # not the export's: not its to remove
    other.write_text("someone else's")
    export_run(run, tmp_path / "shipped")
    assert not orphan.exists() and other.exists()
    assert hidden_leftovers(tmp_path) == [] and (tmp_path / "shipped" / "manifest.json").is_file()


# --- item 9: a changed export, or one older than its run, is refused on load ----------------------


def test_a_swapped_fold_model_is_refused_by_every_loader(run, tmp_path, capsys):
    export = run / "export"
    shutil.copyfile(export / "fold_0.int8.onnx", export / "fold_1.int8.onnx")
    with pytest.raises(PredictError, match=r"fold_1\.int8\.onnx .*sha256.*re-export"):
        OnnxPredictor.from_export(run)
    with pytest.raises(ValueError, match=r"fold_1\.int8\.onnx .*sha256"):
        load_runtime(export).ExportedModel(export)
    assert predict_main([str(run), "--backend", "onnx", "--text", "hi"]) == 2
    assert "fold_1.int8.onnx" in capsys.readouterr().err
    from mtl.inference.serve import load_predictor

    with pytest.raises(PredictError, match="fold_1.int8.onnx"):
        load_predictor(run, "onnx", "cpu")  # serve.py's worker loads through OnnxPredictor
    from mtl.cli.serve import main as serve_main

    assert serve_main([str(run), "--backend", "onnx"]) == 2  # refused before a server starts
    assert "fold_1.int8.onnx" in capsys.readouterr().err
    with pytest.raises(PredictError, match="fold_1.int8.onnx"):
        OnnxPredictor.from_export(export, model="fp32")  # one changed file: the export is suspect


def test_an_edited_predictor_json_is_refused(run):
    spec_path = run / "export" / "predictor.json"
    spec = json.loads(spec_path.read_text())
    spec["thresholds"]["toxicity"] = [0.01]
    spec_path.write_text(json.dumps(spec))
    for load in (
        lambda: OnnxPredictor.from_export(run / "export", model="fp32"),
        lambda: load_runtime(run / "export").ExportedModel(run / "export", "fp32"),
    ):
        with pytest.raises((PredictError, ValueError), match=r"predictor\.json .*sha256"):
            load()  # mtl's loader raises PredictError, the export's own runtime ValueError


def test_an_export_older_than_the_runs_folds_is_refused_on_the_run_folder(run, capsys):
    from mtl.inference.export import export_run

    hidden = run / "fold_1" / "metrics.json"
    hidden.rename(run / "fold_1" / "metrics.hidden")  # the run had one finished fold
    export_run(run)
    assert OnnxPredictor.from_export(run).models  # current: loads
    (run / "fold_1" / "metrics.hidden").rename(hidden)  # now it has two
    with pytest.raises(PredictError, match=r"older than the run.*fold_0, fold_1.*Re-export"):
        OnnxPredictor.from_export(run)
    with pytest.raises(PredictError, match="older than the run"):
        OnnxPredictor.from_export(run / "export")  # the export inside the run it came from
    assert predict_main([str(run), "--backend", "onnx", "--text", "hi"]) == 2
    assert "older than the run" in capsys.readouterr().err
    copy = shutil.copytree(run / "export", run.parent / "shipped")
    assert OnnxPredictor.from_export(copy).models  # a copy elsewhere is its own thing
    holder = shutil.copytree(run / "export", run.parent / "srv" / "export")
    assert OnnxPredictor.from_export(holder.parent).models  # so is a folder that just holds one


def test_an_export_whose_checkpoint_changed_since_is_refused(run):
    checkpoint = run / "fold_0" / "best.ckpt"
    with open(checkpoint, "ab") as handle:
        handle.write(b"retrained")
    with pytest.raises(PredictError, match=r"best\.ckpt changed after the export"):
        OnnxPredictor.from_export(run)


def test_an_export_shipped_without_its_fp32_models_still_loads_int8(run, tmp_path):
    shipped = Path(shutil.copytree(run / "export", tmp_path / "shipped"))
    for path in shipped.glob("fold_?.onnx"):
        path.unlink()
    assert OnnxPredictor.from_export(shipped).model_kind == "int8"
    with pytest.raises(PredictError, match=r"fold_0\.onnx .*is missing"):
        OnnxPredictor.from_export(shipped, model="fp32")


# --- item 23: int8 that changes labels is refused ------------------------------------------------


def test_int8_export_records_its_agreement_with_fp32_on_the_runs_val_texts(blended_export):
    agreement = json.loads((blended_export / "manifest.json").read_text())["int8_agreement"]
    assert agreement["texts"] == 120
    # conftest forces its int8 export (a tiny model may flip a few labels): the record says which
    assert agreement["passed"] == (agreement["min_label_decisions"] >= agreement["minimum"])
    assert agreement["forced"] == (not agreement["passed"])
    assert set(agreement["tasks"]) == {"toxicity", "emotion", "sentiment"}
    assert all("val file" in s and s.endswith("_val.csv") for s in agreement["sources"].values())
    assert agreement["minimum"] == 0.99


def test_int8_that_changes_labels_is_refused_and_keeps_the_previous_export(
    run, monkeypatch, capsys
):
    before = snapshot(run / "export")
    monkeypatch.setattr("mtl.inference.export.quantize_int8", flipped_quantizer)
    assert export_main([str(run), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert (
        "below --min-int8-agreement 99.00%" in err and "--force" in err and "Traceback" not in err
    )
    assert snapshot(run / "export") == before and hidden_leftovers(run) == []
    assert export_main([str(run), "--quantize", "int8", "--force"]) == 0
    out = capsys.readouterr().out
    assert "FORCED below 99%" in out
    agreement = json.loads((run / "export" / "manifest.json").read_text())["int8_agreement"]
    assert agreement["forced"] and not agreement["passed"]
    assert agreement["min_label_decisions"] < 0.5


def test_the_int8_minimum_is_a_share(run, capsys):
    assert export_main([str(run), "--quantize", "int8", "--min-int8-agreement", "99"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_int8_check_falls_back_to_the_runs_report_rows(run):
    from mtl.inference.int8_check import val_texts

    cfg = Predictor.from_run(run).cfg
    cfg.tasks.toxicity.val = "moved_away.csv"
    cfg.tasks.emotion.val = None
    (run / "val_emotion.csv").unlink()
    texts, sources = val_texts(cfg, run, ["toxicity", "emotion", "sentiment"])
    assert sources["toxicity"] == f"40 texts of the report rows {run / 'val_toxicity.csv'}"
    selection = pd.read_csv(run / "fold_0" / "val_emotion.csv")  # the rows that chose fold 0
    assert (
        sources["emotion"]
        == f"{len(selection)} texts of the selection rows {run / 'fold_0' / 'val_emotion.csv'}"
    )
    assert sources["sentiment"].startswith("40 texts of the val file")
    assert texts[40 : 40 + len(selection)] == selection["text"].tolist()


def test_int8_check_samples_a_large_val_file_with_a_seed(run, tmp_path):
    from mtl.inference.int8_check import ROWS_PER_TASK, val_texts

    big = tmp_path / "big.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(1000)], "label": 0}).to_csv(big, index=False)
    cfg = Predictor.from_run(run).cfg
    cfg.tasks.toxicity.val = str(big)  # sorted files (all of one label first) are common
    texts, _ = val_texts(cfg, run, ["toxicity"])
    assert len(texts) == ROWS_PER_TASK and texts != [f"row {i}" for i in range(ROWS_PER_TASK)]
    assert texts == sorted(texts, key=lambda t: int(t.split()[1]))  # in file order
    assert val_texts(cfg, run, ["toxicity"])[0] == texts  # the same sample every export


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("{not json", None), ("[1, 2]", None), ('{"blend": "rank"}', {"blend": "rank"})],
)
def test_the_staleness_checks_read_results_json_only_when_it_is_a_json_object(
    tmp_path, text, expected
):
    """An export loads beside a run whose results.json is missing or unreadable (Predictor.from_run
    says why); only a JSON object is compared with the export's blend, cuts and calibration."""
    from mtl.inference.onnx_predict import readable_results

    if text is not None:
        (tmp_path / "results.json").write_text(text, encoding="utf-8")
    assert readable_results(tmp_path) == expected
