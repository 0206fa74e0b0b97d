"""Issue 22, prediction side: inputs never overwritten, orphaned temp files removed, clear errors
(disk full, type changes and missing columns between chunks, non-UTF-8 and non-string texts),
and never a NaN answer."""

from __future__ import annotations

import errno
import json
import os
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
from mtl.errors import PredictError
from mtl.inference.checks import NonFiniteError
from mtl.inference.predictor import Predictor
from mtl.io import tmp_prefix
from mtl.run.train import train

TEXTS = ["I love this", "you idiot", "thanks friend", "scared sad okay", "wow", "hi"]


@pytest.fixture(scope="module")
def run(tiny_backbone, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict_r2_run")
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out) + ["trainer.max_epochs=1"],
    )
    train(cfg)
    return out / cfg.run.name


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run, device="cpu")


def one_paragraph_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err  # one paragraph
    return err


# --- item 10: an input column is never replaced by a prediction column ------------------------


def test_an_input_column_named_like_a_prediction_column_is_refused_or_kept_with_a_prefix(
    run, predictor, tmp_path, capsys
):
    gold = ["1", "0", "1", "1", "0", "0"]
    src = tmp_path / "val.csv"
    pd.DataFrame({"text": TEXTS, "toxicity_label": gold}).to_csv(src, index=False)
    out = tmp_path / "preds.csv"
    with pytest.raises(PredictError, match=r"\['toxicity_label'\].*--prefix pred_"):
        predictor.predict_file(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.csv"]  # nothing written

    argv = [str(run), "--input", str(src), "--output", str(out), "--device", "cpu"]
    assert main(argv + ["--no-progress"]) == 2
    assert "toxicity_label" in one_paragraph_error(capsys)
    assert main(argv + ["--no-progress", "--prefix", "pred_"]) == 0
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got["toxicity_label"].tolist() == gold  # the user's column, as it was
    assert got.columns.tolist() == ["text", "toxicity_label"] + [
        "pred_" + c for c in predictor.output_columns()
    ]
    assert got["pred_toxicity_label"].tolist() == (
        predictor.predict(TEXTS)["toxicity_label"].astype(str).tolist()
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_input_with_two_columns_of_one_name_is_refused(predictor, tmp_path, suffix):
    src = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        src.write_text("text,id,id\nhello,1,2\n")  # pandas would rename the second to id.1
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [pa.array(["hello"]), pa.array([1]), pa.array([2])]
        pq.write_table(pa.table(columns, names=["text", "id", "id"]), src)
    with pytest.raises(PredictError, match=r"more than one column named \['id'\]"):
        predictor.predict_file(src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# --- item 19: temp files of a killed predict are removed by the next one ----------------------


def test_a_rerun_removes_a_dead_writers_temp_file_and_keeps_everyone_elses(predictor, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(src, index=False)
    out = tmp_path / "preds.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], 
                          capture_output=True, text=True)  # fmt: skip
    dead_pid = int(dead.stdout)  # a writer that has finished: its pid is no longer running
    prefix = tmp_prefix(out.name)  # this process's: .preds.csv~<pid>@<host>~
    orphan = tmp_path / (prefix.replace(f"~{os.getpid()}@", f"~{dead_pid}@") + "abc.tmp")
    orphan.write_text("half a file")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            writing = tmp_path / (prefix.replace(f"~{os.getpid()}@", f"~{live.pid}@") + "x.tmp")
            writing.write_text("a write in progress")
            others = tmp_path / ".notes.tmp"  # a hidden file that mtl did not make, hours old
            others.write_text("mine")
            os.utime(others, (0, 0))
            other_target = tmp_path / (
                tmp_prefix("other.csv").replace(f"~{os.getpid()}@", f"~{dead_pid}@") + "y.tmp"
            )
            other_target.write_text("another output's")
            assert predictor.predict_file(src, out) == len(TEXTS)
        finally:
            live.kill()
    assert not orphan.exists()
    assert writing.exists() and others.exists() and other_target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "in.csv",
        "preds.csv",
    ]


# --- item 21: clear errors, nothing half-written, the old output intact -----------------------


def test_disk_full_while_writing_predictions_is_a_clear_error_and_keeps_the_old_file(
    run, tmp_path, monkeypatch, capsys
):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(src, index=False)
    out = tmp_path / "preds.csv"
    out.write_text("the old predictions\n")
    real_to_csv = pd.DataFrame.to_csv
    calls = []

    def fills_the_disk(frame, handle, *args, **kwargs):
        calls.append(len(frame))
        if len(calls) == 2:  # the second chunk: part of the file is already written
            handle.write("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_to_csv(frame, handle, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", fills_the_disk)
    argv = [str(run), "--input", str(src), "--output", str(out), "--chunk-size", "3"]
    assert main(argv + ["--device", "cpu", "--no-progress"]) == 2
    err = one_paragraph_error(capsys)
    assert "No space left on device" in err and "ENOSPC" in err and "preds.csv is intact" in err
    assert out.read_text() == "the old predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "preds.csv"]  # no temp file


def test_jsonl_to_parquet_with_a_type_change_between_chunks_is_a_clear_error(run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [{"text": t, "n": i} for i, t in enumerate(TEXTS[:4])] + [
        {"text": t, "n": f"id-{i}"} for i, t in enumerate(TEXTS[4:])
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    argv = [str(run), "--input", str(src), "--output", str(out), "--chunk-size", "2"]
    assert main(argv + ["--device", "cpu", "--no-progress"]) == 2
    err = one_paragraph_error(capsys)
    assert "Column 'n' is int64 before row 5 but large_string in rows 5-6" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    # in one chunk the column is still two types
    assert main(argv[:-1] + ["100", "--device", "cpu", "--no-progress"]) == 2
    assert "Column 'n' (Could not convert 'id-0' with type str" in one_paragraph_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_jsonl_key_empty_in_the_first_chunk_names_the_chunk_size_as_the_fix(predictor, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"text": t, "note": None if i < 2 else f"n{i}"} for i, t in enumerate(TEXTS)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    with pytest.raises(PredictError, match=r"'note' is null before row 3.*--chunk-size above"):
        predictor.predict_file(src, out, chunk_size=2)
    assert predictor.predict_file(src, out, chunk_size=100) == len(TEXTS)
    note = pd.read_parquet(out)["note"]
    assert note.isna().tolist() == [True, True, False, False, False, False]
    assert note[2:].tolist() == ["n2", "n3", "n4", "n5"]


def test_a_later_jsonl_chunk_without_the_text_column_is_a_clear_error(run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [{"text": "hello", "id": 1}, {"text": "wow", "id": 2}, {"body": "hi", "id": 3}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.csv"
    argv = [str(run), "--input", str(src), "--output", str(out), "--chunk-size", "2"]
    assert main(argv + ["--device", "cpu", "--no-progress"]) == 2
    err = one_paragraph_error(capsys)
    assert "'text' is missing from row 3" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_later_jsonl_chunk_without_another_key_gets_empty_cells_in_its_place(predictor, tmp_path):
    """CSV output writes its header once: a chunk with fewer keys must not shift the cells."""
    src = tmp_path / "in.jsonl"
    rows = [{"text": "hello", "id": 1, "note": "a"}, {"id": 2, "text": "wow"}, {"text": "hi"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.csv"
    assert predictor.predict_file(src, out, chunk_size=1) == 3
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got[["text", "id", "note"]].values.tolist() == [
        ["hello", "1", "a"],
        ["wow", "2", ""],
        ["hi", "", ""],
    ]


def test_a_text_of_non_utf8_bytes_on_the_command_line_is_a_clear_error(run):
    # the shell passes bytes; Python keeps \xff as the lone surrogate \udcff (surrogateescape)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), str(run), "--device", "cpu",
         "--text", "fine", "--text", b"caf\xff"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: 1 text(s) are not Unicode: --text number 2: character 4")
    assert "0xff" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


# --- item 18: texts that are not strings --------------------------------------------------------


def test_texts_that_are_not_strings_are_refused_naming_the_rows(predictor, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"text": "hello"}, {"text": {"a": 1}}, {"text": None}, {"text": 42}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PredictError, match=r"row 2 of .*is of type dict.*row 4 of .*type int"):
        predictor.predict_file(src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(PredictError, match=r"text 2 is of type int"):
        predictor.predict_proba(["hello", 3])
    with pytest.raises(PredictError, match=r"text 1: character 2 is U\+D800"):
        predictor.predict(["a\ud800"])
    assert predictor.predict(["hello", None, float("nan")])["text"].tolist() == ["hello", "", ""]


# --- item 12: never a NaN answer ---------------------------------------------------------------


def test_a_model_with_nan_weights_is_an_error_not_nan_probabilities(
    run, tmp_path, capsys, monkeypatch
):
    broken = Predictor.from_run(run, device="cpu")
    with torch.no_grad():
        for parameter in broken.models[0].parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"Model 1 of 1 .*texts 1, 2, 3"):
        broken.predict_proba(TEXTS[:3])
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(src, index=False)
    with pytest.raises(NonFiniteError):
        broken.predict_file(src, tmp_path / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]

    monkeypatch.setattr(Predictor, "from_run", classmethod(lambda cls, *a, **k: broken))
    assert main([str(run), "--text", "hello", "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower() and "non-finite probabilities" in captured.err


def test_a_nan_blend_weight_is_an_error(run):
    predictor = Predictor.from_run(run, device="cpu", blend="weighted")
    predictor.fold_scores = [float("nan")]
    with pytest.raises(NonFiniteError, match=r"weighted blend.*\[nan\]"):
        predictor.predict_proba(["hello"])
    assert np.isfinite(
        Predictor.from_run(run, device="cpu").predict_proba(["hello"])["emotion"]
    ).all()
