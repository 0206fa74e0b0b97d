"""Task files, issue 22 item 18: a text cell that is not text (a JSON object, list, number or
boolean) is refused naming the file, the rows and the column, in every split; texts are read as
written (CSV "4.50" stays "4.50"); empty and null texts keep the documented empty-text rule."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import tiny_overrides

from mtl.cli.train import main
from mtl.config import DEFAULT_CONFIG, load_config
from mtl.data.files import read_table
from mtl.data.load import load_tasks
from mtl.errors import DataError
from mtl.model.network import load_tokenizer


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def good_rows(n: int = 20) -> list[dict]:
    return [
        {"text": f"you idiot number {i}" if i % 2 else "thanks friend", "label": i % 2}
        for i in range(n)
    ]


@pytest.fixture
def one_task_args(tiny_backbone, data_dir, tmp_path):
    def make(*extra: str) -> list[str]:
        return tiny_overrides(tiny_backbone, data_dir, tmp_path / "out") + [
            "tasks.emotion=null",
            "tasks.sentiment=null",
            *extra,
        ]

    return make


@pytest.mark.parametrize(
    "cell, kind",
    [
        ({"a": 1}, "an object"),
        (["x", "y"], "a list"),
        (42, "a number"),
        (1.5, "a number"),
        (True, "a boolean"),
    ],
)
def test_non_text_cells_in_a_jsonl_text_column_are_refused_naming_file_rows_and_column(
    tmp_path, cell, kind
):
    rows = good_rows()
    rows[3]["text"] = cell
    rows[8]["text"] = cell
    path = write_jsonl(tmp_path / "tox.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "tox.jsonl", "tasks.toxicity.train", text_column="text")
    message = str(info.value)
    assert path in message and "'tasks.toxicity.train'" in message
    assert "text column 'text'" in message and kind in message
    assert "data rows 4, 9 " in message


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_split_refuses_non_text_cells_through_the_cli(one_task_args, tmp_path, capsys, split):
    rows = good_rows()
    rows[5]["text"] = {"body": "hello"}
    path = write_jsonl(tmp_path / f"tox_{split}.jsonl", rows)
    assert main(one_task_args(f"tasks.toxicity.{split}={path}")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"'tasks.toxicity.{split}'" in err
    assert "data rows 6 " in err and "an object" in err
    assert not (tmp_path / "out" / "tiny").exists()


def test_a_numeric_parquet_text_column_is_refused(tmp_path):
    path = tmp_path / "tox.parquet"
    pd.DataFrame({"text": [1, 2, 3], "label": [0, 1, 0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"holds a number instead of text in data rows 1, 2, 3 "):
        read_table(path, "tasks.toxicity.train", text_column="text")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_number_like_texts_are_read_as_written(tmp_path, suffix):
    """JSON Lines texts "1", "2" were read as ints by pandas' dtype inference; a CSV's "4.50"
    became 4.5 and trained as "4.5" (predict reads both as text)."""
    texts = ["4.50", "007", "1e3", "12"]
    frame = pd.DataFrame({"text": texts, "label": [0, 1, 0, 1]})
    path = tmp_path / f"tox.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    read = read_table(path, "tasks.toxicity.train", text_column="text")
    assert read["text"].tolist() == texts
    assert read["label"].tolist() == [0, 1, 0, 1]


def test_null_texts_keep_the_empty_text_rule(tiny_backbone, data_dir, tmp_path):
    rows = good_rows()
    rows[2]["text"] = None
    path = write_jsonl(tmp_path / "tox.jsonl", rows)
    cfg = load_config(
        DEFAULT_CONFIG,
        tiny_overrides(tiny_backbone, data_dir, tmp_path / "out")
        + ["tasks.emotion=null", "tasks.sentiment=null", f"tasks.toxicity.train={path}"],
    )
    with pytest.raises(DataError, match=r"empty or missing text in data rows 3 "):
        load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
