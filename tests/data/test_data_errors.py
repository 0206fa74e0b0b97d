"""Bad config and bad data through the real entry point: exit code 2, one `error:` paragraph that
names the file or key and the first data rows, and no traceback.

Most cases call `mtl.cli.train.main([...])` in-process (it returns the exit code and prints the error);
two run `python scripts/train.py` as a subprocess to prove the script path prints no traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_train_script, tiny_overrides

from mtl.cli.train import main
from mtl.data.files import read_table
from mtl.data.load import load_tasks
from mtl.errors import DataError
from mtl.model.network import load_tokenizer
from mtl.run.train import train

EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


@pytest.fixture
def args(tiny_backbone, data_dir, tmp_path):
    """Factory: the tiny overrides (outputs under tmp_path) plus the bad setting(s)."""

    def make(*extra: str) -> list[str]:
        return tiny_overrides(tiny_backbone, data_dir, tmp_path / "out") + list(extra)

    return make


@pytest.fixture
def bad_file(data_dir, tmp_path):
    """Factory: copy a fixture CSV into tmp_path/bad/, let `edit` change the frame, return the path."""

    def make(name: str, edit) -> Path:
        frame = pd.read_csv(data_dir / name)
        frame = edit(frame) if edit is not None else frame
        folder = tmp_path / "bad"
        folder.mkdir(exist_ok=True)
        path = folder / name
        frame.to_csv(path, index=False)
        return path

    return make


def error_paragraph(stderr: str) -> str:
    """The one `error:` paragraph: it starts a line, is the only one and is the last output."""
    starts = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(starts) == 1, stderr
    paragraph = stderr[stderr.index(starts[0]) :].strip()
    assert "\n" not in paragraph, stderr  # one paragraph, nothing after it
    assert "Traceback" not in stderr
    return paragraph


def run_main(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    return error_paragraph(captured.err)


def run_script(argv: list[str]) -> str:
    proc = run_train_script(argv)
    assert proc.returncode == 2, proc.stderr
    return error_paragraph(proc.stderr)


def set_values(column: str, values: dict):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        if frame[column].dtype != object and any(isinstance(v, str) for v in values.values()):
            frame[column] = frame[column].astype(object)
        for index, value in values.items():
            frame.loc[index, column] = value
        return frame

    return edit


# --- through the script, as a user runs it ------------------------------------------------------


def test_script_unknown_config_key_exits_2_with_spelling_hint_and_no_traceback(args):
    message = run_script(args("trainer.max_epoch=1"))
    assert "'trainer.max_epoch'" in message
    assert "Did you mean 'max_epochs'" in message


def test_script_empty_text_rows_exit_2_naming_file_and_rows_without_traceback(args, bad_file):
    path = bad_file("toxicity_train.csv", set_values("text", {2: "", 5: "   "}))
    message = run_script(args(f"tasks.toxicity.train={path}"))
    assert str(path) in message
    assert "'tasks.toxicity.train'" in message
    assert "empty or missing text" in message
    assert "data rows 3, 6 " in message  # 1-based data rows, header not counted


# --- in-process through mtl.cli.train.main ----------------------------------------------------------


def test_unknown_config_key_suggests_spelling(capsys, args):
    message = run_main(capsys, args("tasks.toxicity.typ=binary"))
    assert "'tasks.toxicity.typ'" in message and "Did you mean 'type'" in message


def test_wrong_type_names_the_key(capsys, args):
    message = run_main(capsys, args("data.batch_size=big"))
    assert "'data.batch_size'" in message and "int" in message and "'big'" in message


def test_bad_choice_names_the_key(capsys, args):
    message = run_main(capsys, args("backbone.pooling=max"))
    assert "'backbone.pooling'" in message and "cls, pooler, mean" in message


def test_missing_config_file(capsys, args, tmp_path):
    message = run_main(capsys, ["--config", str(tmp_path / "nope.yaml"), *args()])
    assert "Config file not found" in message and "nope.yaml" in message


def test_missing_data_file_names_file_and_key(capsys, args, data_dir):
    message = run_main(capsys, args("tasks.sentiment.train=nope.csv"))
    assert "File not found" in message
    assert str(data_dir / "nope.csv") in message
    assert "'tasks.sentiment.train'" in message


def test_missing_label_column_names_file_columns_and_key(capsys, args, bad_file):
    path = bad_file("toxicity_train.csv", lambda f: f.rename(columns={"label": "target"}))
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert str(path) in message
    assert "no column 'label'" in message
    assert "['text', 'target']" in message  # the columns it does have
    assert "tasks.toxicity.text_column / label_columns" in message


def test_missing_text_column_from_config(capsys, args, data_dir):
    message = run_main(capsys, args("tasks.sentiment.text_column=comment"))
    assert "no column 'comment'" in message
    assert str(data_dir / "sentiment_train.csv") in message


def test_empty_and_nan_text_rows_are_named(capsys, args, bad_file):
    path = bad_file("sentiment_train.csv", set_values("text", {0: None, 9: "", 10: " \t "}))
    message = run_main(capsys, args(f"tasks.sentiment.train={path}"))
    assert str(path) in message
    assert "empty or missing text in data rows 1, 10, 11 " in message
    assert "data.on_bad_rows=drop" in message  # the fix


def test_binary_label_outside_declared_classes(capsys, args, bad_file):
    path = bad_file("toxicity_train.csv", set_values("label", {4: 2, 30: 2}))
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert str(path) in message
    assert "column 'label' outside the declared classes [0, 1]" in message
    assert "data rows 5, 31 " in message


def test_bad_label_in_validation_file_names_the_val_key(capsys, args, bad_file):
    path = bad_file("toxicity_val.csv", set_values("label", {0: "yes"}))
    message = run_main(capsys, args(f"tasks.toxicity.val={path}"))
    assert "'tasks.toxicity.val'" in message and str(path) in message
    assert "data rows 1 " in message


def test_many_bad_rows_show_the_first_five_and_a_count(capsys, args, bad_file):
    path = bad_file("toxicity_train.csv", set_values("label", dict.fromkeys(range(7), 5)))
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert "data rows 1, 2, 3, 4, 5 (and 2 more)" in message


@pytest.mark.parametrize("value", [0.5, 3])
def test_non_binary_value_in_multi_hot_column(capsys, args, bad_file, value):
    def edit(frame):
        frame[EMOTIONS] = frame[EMOTIONS].astype(float)
        frame.loc[1, "joy"] = value
        frame.loc[7, "anger"] = value
        return frame

    path = bad_file("emotion_train.csv", edit)
    message = run_main(capsys, args(f"tasks.emotion.train={path}"))
    assert str(path) in message
    assert f"a value other than 0/1 in columns [{', '.join(EMOTIONS)}]" in message
    assert "data rows 2, 8 " in message


def test_empty_file(capsys, args, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert str(path) in message and "is empty" in message
    assert "'tasks.toxicity.train'" in message


def test_header_only_file(capsys, args, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert str(path) in message and "header but no data rows" in message


def test_unknown_extension(capsys, args, tmp_path):
    path = tmp_path / "toxicity.xlsx"
    path.write_text("text,label\nhi,0\n")
    message = run_main(capsys, args(f"tasks.toxicity.train={path}"))
    assert "unknown extension '.xlsx'" in message


def test_drop_with_every_row_bad_leaves_no_training_rows(capsys, args, bad_file):
    path = bad_file("toxicity_train.csv", lambda f: f.assign(label=2))
    message = run_main(capsys, args("data.on_bad_rows=drop", f"tasks.toxicity.train={path}"))
    assert "would drop 120 of 120 rows" in message
    assert str(path) in message


# --- dropping bad rows --------------------------------------------------------------------------


def test_drop_bad_rows_trains_and_logs_the_drop_count(tiny_cfg, bad_file, caplog):
    path = bad_file("toxicity_train.csv", set_values("text", {2: "", 5: "  "}))
    cfg = tiny_cfg(
        "data.on_bad_rows=drop",
        f"tasks.toxicity.train={path}",
        "tasks.emotion=null",
        "tasks.sentiment=null",
        "trainer.max_epochs=1",
        "data.batch_size=8",
    )
    with caplog.at_level(logging.WARNING, logger="mtl.data"):
        results = train(cfg)
    drops = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 1
    assert "dropping 2 rows with empty or missing text (data rows 3, 6)" in drops[0]
    assert set(results["tasks"]) == {"toxicity"}
    folds = pd.read_csv(Path(cfg.run.output_dir) / cfg.run.name / "folds.csv")
    assert len(folds) == 118
    assert not {2, 5} & set(folds["row"])  # kept rows keep their source row numbers


def test_drop_keeps_source_row_numbers(tiny_cfg, tiny_backbone, bad_file):
    path = bad_file("toxicity_train.csv", set_values("label", {0: 7, 3: 9}))
    cfg = tiny_cfg("data.on_bad_rows=drop", f"tasks.toxicity.train={path}")
    data, _ = load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
    part = data["toxicity"]["train"]
    assert len(part) == 118
    assert part.rows[:3].tolist() == [1, 2, 4]
    assert len(part.input_ids) == len(part.texts) == len(part.labels) == 118


# --- other file formats -------------------------------------------------------------------------


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame({"text": ["you idiot", "thanks friend", "NA"], "label": [1, 0, 0]})


def test_parquet_file_loads(tmp_path):
    path = tmp_path / "tox.parquet"
    sample_frame().to_parquet(path)
    frame = read_table(path, "tasks.toxicity.train")
    pd.testing.assert_frame_equal(frame, sample_frame())


def test_json_lines_file_loads(tmp_path):
    path = tmp_path / "tox.jsonl"
    sample_frame().to_json(path, orient="records", lines=True)
    frame = read_table(path, "tasks.toxicity.train")
    assert frame["text"].tolist() == ["you idiot", "thanks friend", "NA"]
    assert frame["label"].tolist() == [1, 0, 0]


def test_csv_keeps_na_like_words_as_text_but_empty_fields_as_missing(tmp_path):
    path = tmp_path / "tox.csv"
    path.write_text("text,label\nNA,0\nnull,1\n,0\n")
    frame = read_table(path, "tasks.toxicity.train")
    assert frame["text"].tolist()[:2] == ["NA", "null"]
    assert pd.isna(frame["text"].iloc[2])


def test_read_table_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="tasks.toxicity.train"):
        read_table(tmp_path / "nope.parquet", "tasks.toxicity.train")
