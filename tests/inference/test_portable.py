"""The export's own runtime, mtl_onnx.py and mtl_onnx_core.py (copies of mtl/portable_model.py and
mtl/portable.py): it must answer exactly as OnnxPredictor does, with mtl, torch, transformers,
pandas and scikit-learn unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO

from mtl.inference.export import CORE_FILE, RUNTIME_FILE
from mtl.inference.onnx_predict import OnnxPredictor

# A meta path finder that refuses the training stack: what a machine with only numpy,
# onnxruntime and tokenizers installed would do.
BLOCKED = ("mtl", "torch", "transformers", "lightning", "pandas", "sklearn", "scipy", "box")
RUNNER = textwrap.dedent(
    """
    import json, sys
    BLOCKED = {blocked!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())
    sys.path.insert(0, sys.argv[1])
    from mtl_onnx import ExportedModel

    texts = json.loads(sys.stdin.read())
    model = ExportedModel(sys.argv[1], model=sys.argv[2], batch_size=int(sys.argv[3]))
    probs = model.predict_proba(texts)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{
        "probs": {{k: v.tolist() for k, v in probs.items()}},
        "records": model.predict(texts),
        "loaded": loaded,
    }}))
    """
).format(blocked=BLOCKED)


def run_portable(folder: Path, texts: list[str], model: str, batch_size: int = 4) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder), model, str(batch_size)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",  # nothing importable from the repository by accident
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tweet_run(blended_export) -> Path:
    """The export of conftest: weighted blend, tuned thresholds, tweet preprocessing, int8."""
    return blended_export


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    rows = pd.read_csv(data_dir / "toxicity_val.csv")["text"].head(30).tolist()
    return rows + ["", None, "@someone look www.example.com &amp; more", "idiot " * 300, "ok"]


@pytest.mark.parametrize("model", ["fp32", "int8"])
def test_the_exports_own_runtime_answers_as_onnx_predictor_without_mtl_or_torch(
    tweet_run, texts, model
):
    assert (tweet_run / RUNTIME_FILE).is_file()
    got = run_portable(tweet_run, texts, model)
    assert got["loaded"] == []  # nothing of the training stack was imported
    reference = OnnxPredictor.from_export(tweet_run, model=model, device="cpu", batch_size=4)
    assert reference.blend_method == "weighted" and len(reference.models) == 2
    expected = reference.predict_proba(texts)
    for task, values in expected.items():
        np.testing.assert_allclose(np.asarray(got["probs"][task]), values, rtol=0, atol=1e-6)
    from mtl.inference.records import prediction_records

    assert got["records"] == json.loads(json.dumps(prediction_records(texts, reference, expected)))


def test_the_runtime_is_listed_in_the_manifest_with_its_checksum(tweet_run):
    from mtl.io import file_sha256

    spec = json.loads((tweet_run / "predictor.json").read_text())
    assert len(spec["thresholds"]["toxicity"]) == 1  # a tuned binary threshold travels too
    assert len(spec["thresholds"]["emotion"]) == 7
    manifest = json.loads((tweet_run / "manifest.json").read_text())
    for name, source in ((RUNTIME_FILE, "portable_model.py"), (CORE_FILE, "portable.py")):
        assert manifest["files"][name]["sha256"] == file_sha256(tweet_run / name)
        assert (tweet_run / name).read_text() == (REPO / "mtl" / source).read_text()


def test_the_runtime_command_line(tweet_run, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("I love this\nyou idiot\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(tweet_run / RUNTIME_FILE), "--input", str(lines), "--text", "ok"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in records] == ["ok", "I love this", "you idiot"]
    assert set(records[0]) == {"text", "toxicity", "emotion", "sentiment"}
    assert isinstance(records[0]["emotion"]["labels"], list)
    bad = subprocess.run(
        [sys.executable, str(tweet_run / RUNTIME_FILE), "--text", "x", "--model", "int8",
         str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd="/",
    )  # fmt: skip
    assert bad.returncode == 2 and "error:" in bad.stderr
