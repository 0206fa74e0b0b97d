"""Fold assignment (mtl/data/folds.py), issue 22: blank group cells, and cv.n_splits beyond what a
class can fill (refused before the run folder exists, naming the task, its rarest class and the
largest n_splits that works)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.data.files import TaskData
from mtl.data.folds import fold_assignments
from mtl.errors import DataError


def task_data(labels: np.ndarray, groups=None, task: str = "toxicity") -> TaskData:
    n = len(labels)
    return TaskData(
        task=task,
        split="train",
        path=Path(f"{task}_train.csv"),
        rows=np.arange(n),
        texts=[f"text number {i}" for i in range(n)],  # all distinct: units come from groups
        input_ids=[],
        labels=labels,
        groups=None if groups is None else np.asarray(groups, dtype=object),
    )


def folds_of(part: TaskData, n_splits: int) -> np.ndarray:
    cfg = load_config(DEFAULT_CONFIG, [f"cv.n_splits={n_splits}"])
    # a val file is given, so no rows are held out: every row gets a fold
    return fold_assignments(cfg, {part.task: {"train": part, "val": part}})[part.task]


# --- item 1: blank group cells ----------------------------------------------------------------


@pytest.mark.parametrize("blank", [np.nan, None, "", "   "])
def test_blank_group_cells_are_spread_over_the_folds_like_ungrouped_rows(blank):
    rng = np.random.default_rng(0)
    n, n_splits = 170, 5
    labels = rng.integers(0, 2, n)
    # half the rows in 17 groups of 5, the other half with a blank group cell
    groups = [f"author{i // 5}" if i < 85 else blank for i in range(n)]
    order = rng.permutation(n)
    part = task_data(labels[order], [groups[i] for i in order])
    folds = folds_of(part, n_splits)
    sizes = np.bincount(folds, minlength=n_splits)
    assert sizes.sum() == n
    # units (a group, or an ungrouped row) are what is balanced, so rows vary by a few groups of
    # 5; one giant blank group put 85+ rows into one fold
    assert sizes.min() >= 0.5 * n / n_splits and sizes.max() <= 1.5 * n / n_splits, sizes
    blank_rows = np.array([groups[i] is blank for i in order])
    per_fold = np.bincount(folds[blank_rows], minlength=n_splits)
    assert per_fold.min() >= 10, per_fold  # 17 expected per fold; before: all 85 in one fold
    # the real groups still stay together
    named = pd.Series(folds[~blank_rows]).groupby(np.asarray(part.groups)[~blank_rows]).nunique()
    assert (named == 1).all()


# --- item 22: more folds than a class can fill --------------------------------------------------


def test_more_folds_than_the_rarest_class_is_refused_naming_task_count_and_largest():
    labels = np.array([1] * 40 + [0] * 110)
    with pytest.raises(DataError) as info:
        folds_of(task_data(labels), 100)
    message = str(info.value)
    assert "cv.n_splits=100" in message and "task 'toxicity'" in message
    assert "class 1 has 40 training texts" in message
    assert "Use cv.n_splits=40 or fewer" in message
    assert len(np.unique(folds_of(task_data(labels), 40))) == 40  # the largest that works


def test_the_multilabel_limit_is_the_rarest_labels_positives():
    rng = np.random.default_rng(1)
    labels = (rng.random((120, 3)) < 0.4).astype(np.float32)
    labels[:, 2] = 0
    labels[:7, 2] = 1  # 7 positives of the rarest label
    part = task_data(labels, task="emotion")
    with pytest.raises(DataError, match=r"label 2 has 7 positive training texts.*cv.n_splits=7 or"):
        folds_of(part, 8)
    assert len(np.unique(folds_of(part, 7))) == 7


def test_duplicate_texts_count_once_toward_a_class():
    labels = np.array([1] * 6 + [0] * 30)
    part = task_data(labels)
    part.texts[:6] = ["the same text"] * 3 + ["another text"] * 3  # 6 rows, 2 distinct texts
    with pytest.raises(DataError, match=r"class 1 has 2 training texts \(6 rows"):
        folds_of(part, 3)


def test_too_many_folds_stops_the_cli_before_the_run_folder_exists(
    tiny_backbone, data_dir, tmp_path, capsys
):
    """The probe's case: 100 folds on a 150-row binary task with 40 positives trained 34 folds,
    then died, and the folder's fingerprint blocked the corrected command."""
    from helpers import tiny_overrides

    from mtl.cli.train import main

    frame = pd.read_csv(data_dir / "toxicity_train.csv")
    rows = pd.concat(
        [frame[frame.label == 1].sample(40, replace=True, random_state=0),
         frame[frame.label == 0].sample(110, replace=True, random_state=0)]
    )  # fmt: skip
    rows["text"] = [f"{t} {i}" for i, t in enumerate(rows.text)]  # distinct texts
    path = tmp_path / "tox150.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "out"
    argv = tiny_overrides(tiny_backbone, data_dir, out) + [
        "tasks.emotion=null",
        "tasks.sentiment=null",
        f"tasks.toxicity.train={path}",
        "cv.n_splits=100",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "task 'toxicity'" in err and "class 1 has 40" in err and "cv.n_splits=40" in err
    assert not (out / "tiny").exists()  # nothing that could block the corrected command
    from mtl.run.train import prepare

    cfg = load_config(DEFAULT_CONFIG, argv[:-1] + ["cv.n_splits=2"])
    run_dir, _ = prepare(cfg)  # the corrected command starts
    assert (run_dir / "fingerprint.json").is_file()
