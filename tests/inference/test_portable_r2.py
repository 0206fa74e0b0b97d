"""Issue 22 on the export's own runtime (mtl_onnx.py + mtl_onnx_core.py): texts over max_length are
cut on the tokenizer's side (item 5), a bad --input is a clear error (item 21), and the runtime is
split into modules near 300 lines that travel together (item 24)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_portable
from helpers import REPO

from mtl.errors import PredictError
from mtl.inference.export import CORE_FILE, PROBE_TEXTS, RUNTIME_FILE, export_run
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor

# longer than the tiny run's max_length (32), with opposite halves: the side cut decides the answer
LONG = [
    "love wonderful great thanks kind friend " * 12 + "idiot hate stupid loser trash shut " * 12,
    "furious gross scared " * 20 + "happy wow okay " * 20,
]


@pytest.fixture(scope="module")
def left_run(blended_export, tmp_path_factory) -> Path:
    """A copy of conftest's run whose tokenizer truncates on the left, and its fp32 export."""
    run = Path(shutil.copytree(blended_export.parent, tmp_path_factory.mktemp("left") / "run"))
    config = run / "tokenizer" / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps(dict(settings, truncation_side="left")))
    export_run(run)  # replaces the copied export; its self-check runs the long probe text
    return run


def run_cli(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(folder / RUNTIME_FILE), *args],
        capture_output=True,
        timeout=300,
        cwd="/",
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_every_backend_cuts_texts_over_max_length_on_the_tokenizers_side(
    side, blended_export, left_run
):
    run = left_run if side == "left" else blended_export.parent
    spec = json.loads((run / "export" / "predictor.json").read_text())
    assert spec["tokenizer"]["truncation_side"] == side
    reference = Predictor.from_run(run, device="cpu")
    assert reference.tokenizer.truncation_side == side
    assert all(len(ids) > reference.max_length for ids in reference.tokenizer(LONG)["input_ids"])
    expected = reference.predict_proba(LONG)
    reference.tokenizer.truncation_side = "left" if side == "right" else "right"
    other = reference.predict_proba(LONG)  # the side matters for these texts
    assert max(np.abs(other[t] - expected[t]).max() for t in expected) > 1e-3
    onnx = OnnxPredictor.from_export(run, model="fp32", device="cpu")
    got = onnx.predict_proba(LONG)
    portable = test_portable.run_portable(run / "export", LONG, "fp32")
    assert portable["loaded"] == []
    for task, values in expected.items():
        np.testing.assert_allclose(got[task], values, rtol=0, atol=1e-4)
        np.testing.assert_allclose(np.asarray(portable["probs"][task]), got[task], atol=1e-6)


def test_the_exports_self_check_probes_past_max_length_and_covers_its_own_runtime(left_run):
    reference = Predictor.from_run(left_run, device="cpu")
    assert len(reference.tokenizer(PROBE_TEXTS[-1])["input_ids"]) > 512  # past any BERT limit
    parity = json.loads((left_run / "export" / "manifest.json").read_text())
    assert parity["parity_on_probe_texts"]["fp32"]["runtime_max_abs_prob_diff"] <= 1e-5


def test_the_export_refuses_a_runtime_that_cuts_on_the_wrong_side(left_run, tmp_path, monkeypatch):
    from mtl.inference import onnx_predict

    real = onnx_predict.load_runtime

    def right_cutting_runtime(folder):  # mtl_onnx.py as it was before issue 22
        module = real(folder)

        class RightCutting(module.ExportedModel):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                limit = self.tokenizer.truncation["max_length"]
                self.tokenizer.enable_truncation(limit, direction="right")

        module.ExportedModel = RightCutting
        return module

    monkeypatch.setattr(onnx_predict, "load_runtime", right_cutting_runtime)
    with pytest.raises(PredictError, match=f"{RUNTIME_FILE} differs from OnnxPredictor"):
        export_run(left_run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out~*"))


def test_a_missing_or_non_utf8_input_file_is_a_clear_error(blended_export, tmp_path):
    missing = run_cli(blended_export, "--input", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2
    assert b"Cannot read --input" in missing.stderr and b"Traceback" not in missing.stderr
    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine\ncaf\u00e9 au lait\n".encode("latin-1"))
    bad = run_cli(blended_export, "--input", str(latin))
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    assert b"not UTF-8 text: byte 0xe9 on line 2" in bad.stderr and b"iconv" in bad.stderr
    assert bad.stdout == b""
    text = run_cli(blended_export, b"--text", b"caf\xe9")  # bytes the shell passed as they were
    assert text.returncode == 2 and b"--text number 1: character 4 is U+DCE9" in text.stderr
    assert b"Traceback" not in text.stderr


@pytest.mark.parametrize("bad", [7, {"text": "hi"}, ["a"], "fine \ud800"])
def test_the_exports_runtime_refuses_what_onnx_predictor_refuses(bad, blended_export):
    """Numbers, objects and lone surrogates: one rule (mtl/portable_model.as_texts) for every
    backend, so the copied runtime never stringifies a cell mtl's own predictors refuse."""
    from mtl.inference.onnx_predict import load_runtime

    with pytest.raises(PredictError, match="text 2") as ours:
        OnnxPredictor.from_export(blended_export).predict_proba(["ok", bad])
    runtime = load_runtime(blended_export).ExportedModel(str(blended_export), model="fp32")
    with pytest.raises(ValueError, match="text 2") as theirs:
        runtime.predict(["ok", bad])
    assert str(theirs.value) == str(ours.value)
    assert len(runtime.predict(["ok", None])) == 2  # an empty cell is an empty text, as in mtl


def test_the_runtime_travels_as_two_files_and_says_so_when_one_is_missing(blended_export, tmp_path):
    shipped = Path(shutil.copytree(blended_export, tmp_path / "shipped"))
    (shipped / CORE_FILE).unlink()
    done = run_cli(shipped, "--text", "ok")
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    assert CORE_FILE.encode() in done.stderr and b"copy the export folder whole" in done.stderr


def test_the_portable_modules_stay_near_300_lines():
    # portable.py: the calibration every backend applies (issue 26) took it past 300; splitting
    # it again means a third shipped file for mtl_onnx.py to load and the manifest to check
    for name, most in (("portable.py", 390), ("portable_model.py", 310)):
        lines = (REPO / "mtl" / name).read_text().count("\n")
        assert lines <= most, (name, lines)
