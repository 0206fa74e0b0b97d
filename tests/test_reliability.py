"""Issue 12, "nothing lost, nothing silently wrong": one test (or table row) per failure a hostile
new user found. Each case failed before the fix: a silent wrong result, lost work, an unsafe load
or a traceback. Run-folder cases drive `mtl.train` on the tiny BERT; none trains for long.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.data import load_tasks
from mtl.errors import ConfigError
from mtl.model import load_tokenizer
from mtl.train import main


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, list(overrides))
    return str(info.value)


def exit_2(capsys, argv: list[str]) -> str:
    """`mtl.train.main` exits 2 with one `error:` paragraph and no traceback; returns it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def args(tiny_backbone, data_dir, tmp_path):
    def make(*extra: str) -> list[str]:
        return tiny_overrides(tiny_backbone, data_dir, tmp_path / "out") + list(extra)

    return make


# --- 1. YAML 1.1 booleans: class names and other text stay strings ---------------------------


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("tasks.toxicity.classes=[NOT, OFF]", ("tasks", "toxicity", "classes"), ["NOT", "OFF"]),
        ("tasks.toxicity.classes=[no, yes]", ("tasks", "toxicity", "classes"), ["no", "yes"]),
        ("tasks.toxicity.classes=[n, y]", ("tasks", "toxicity", "classes"), ["n", "y"]),
        ("run.name=off", ("run", "name"), "off"),
        ("tasks.toxicity.label_columns=[ON]", ("tasks", "toxicity", "label_columns"), ["ON"]),
        # where a bool is meant, the YAML 1.1 words still work
        ("early_stopping.enabled=no", ("early_stopping", "enabled"), False),
        ("trainer.deterministic=on", ("trainer", "deterministic"), True),
    ],
)
def test_yaml_1_1_boolean_words_stay_text_where_text_is_meant(override, key, expected):
    cfg = load_config(DEFAULT_CONFIG, [override])
    value = cfg
    for part in key:
        value = value[part]
    assert value == expected


def test_class_names_from_a_yaml_file_stay_strings_and_survive_the_saved_config(tmp_path):
    from mtl.config import save_config

    path = tmp_path / "cfg.yaml"
    path.write_text(
        "tasks:\n  toxicity: {type: binary, train: t.csv, classes: [NOT, OFF]}\n"
        "  sentiment: {type: multiclass, train: s.csv, classes: [no, yes, Off]}\n"
    )
    cfg = load_config(path)
    assert cfg.tasks.toxicity.classes == ["NOT", "OFF"]
    assert cfg.tasks.sentiment.classes == ["no", "yes", "Off"]
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.tasks.toxicity.classes == ["NOT", "OFF"]


def test_a_true_false_word_in_a_text_key_is_an_error_saying_to_quote_it():
    message = config_error("run.name=true")
    assert "'run.name'" in message and "quote it" in message


TRAIN_ONLY = ("tasks.toxicity.val=null", "tasks.toxicity.test=null")


@pytest.fixture
def named_labels(data_dir, tmp_path) -> Path:
    """The toxicity fixture with OLID's label names: NOT / OFF."""
    frame = pd.read_csv(data_dir / "toxicity_train.csv")
    frame["label"] = frame["label"].map({0: "NOT", 1: "OFF"})
    path = tmp_path / "olid.csv"
    frame.to_csv(path, index=False)
    return path


def test_readme_named_classes_load_as_two_classes(tiny_cfg, tiny_backbone, named_labels):
    cfg = tiny_cfg(
        f"tasks.toxicity.train={named_labels}", "tasks.toxicity.classes=[NOT, OFF]", *TRAIN_ONLY
    )
    data, metas = load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
    assert metas["toxicity"].classes == ["NOT", "OFF"]
    assert len(data["toxicity"]["train"]) == 120  # nothing dropped, nothing refused


def mismatched_drop(args, named_labels: Path, *extra: str) -> list[str]:
    """Classes that miss the file's positive label 'OFF', with on_bad_rows=drop."""
    return args(
        f"tasks.toxicity.train={named_labels}",
        "tasks.toxicity.classes=[NOT, offensive]",
        *TRAIN_ONLY,
        "data.on_bad_rows=drop",
        *extra,
    )


def test_drop_refuses_to_drop_a_whole_class(capsys, args, named_labels):
    # a class list that misses the file's positive label: before, drop trained a one-class model
    message = exit_2(capsys, mismatched_drop(args, named_labels, "data.max_dropped_fraction=1.0"))
    assert "['offensive']" in message and "no training rows" in message
    assert "'OFF' (" in message  # the labels that were dropped, so the mismatch is visible
    assert str(named_labels) in message


def test_drop_refuses_more_than_the_stated_share_of_a_file(capsys, args, named_labels):
    message = exit_2(capsys, mismatched_drop(args, named_labels))
    assert "data.max_dropped_fraction=0.1" in message
    assert "of 120 rows" in message and str(named_labels) in message


# --- 9, 10. values that crashed mid-run or were accepted silently ----------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("optim.lr_backbone=-2e-5", "optim.lr_backbone"),
        ("optim.lr_heads=-1", "optim.lr_heads"),
        ("optim.lr_log_vars=-0.1", "optim.lr_log_vars"),
        ("cv.n_splits=0", "cv.n_splits"),
        ("cv.n_splits=-3", "cv.n_splits"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("optim.warmup_ratio=1.2", "optim.warmup_ratio"),
        ("backbone.dropout=1.0", "backbone.dropout"),
        ("data.max_dropped_fraction=2", "data.max_dropped_fraction"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("tasks.toxicity.gamma=-1", "tasks.toxicity.gamma"),
        ("tasks.toxicity.encoding=utf-99", "tasks.toxicity.encoding"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_key(override, key):
    message = config_error(override)
    assert f"'{key}'" in message


def test_max_epochs_0_through_the_entry_point_exits_2(capsys, args):
    message = exit_2(capsys, args("trainer.max_epochs=0"))
    assert "'trainer.max_epochs'" in message


# --- 11. non-UTF-8 files name the row and the fix; `encoding` reads them ----------------------


@pytest.fixture
def latin1_file(data_dir, tmp_path) -> Path:
    frame = pd.read_csv(data_dir / "toxicity_train.csv")
    frame.loc[6, "text"] = "café you idiot"
    path = tmp_path / "latin1.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    return path


def test_non_utf8_file_names_the_row_and_the_fix(capsys, args, latin1_file):
    message = exit_2(capsys, args(f"tasks.toxicity.train={latin1_file}", *TRAIN_ONLY))
    assert str(latin1_file) in message and "'tasks.toxicity.train'" in message
    assert "byte 0xe9 on line 8 (data row 7" in message
    assert "Save the file as UTF-8" in message and "tasks.toxicity.encoding" in message


def test_encoding_key_reads_a_non_utf8_file(tiny_cfg, tiny_backbone, latin1_file):
    cfg = tiny_cfg(
        f"tasks.toxicity.train={latin1_file}", "tasks.toxicity.encoding=latin-1", *TRAIN_ONLY
    )
    data, _ = load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
    assert data["toxicity"]["train"].texts[6] == "café you idiot"


def test_config_module_is_the_one_yaml_reader():
    # yaml_load parses like the config loader; a plain safe_load would read OFF as False
    from mtl.config import yaml_load

    assert yaml_load("[NOT, OFF]") == ["NOT", "OFF"]
    assert yaml.safe_load("[NOT, OFF]") == ["NOT", False]
