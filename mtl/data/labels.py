"""Label checking: every row checked up front (empty text, labels outside the declared classes,
non-0/1 multi-hot values), then stop with an error naming the file, the rows and the fix, or drop
them with a logged count (`data.on_bad_rows: drop`); class weights and thresholds per task."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from box import Box

from mtl.data.files import TaskData
from mtl.data.tasks import TASK_TYPES, TaskMeta
from mtl.errors import ConfigError, DataError, first_rows

log = logging.getLogger(__name__)


def declared_classes(spec: Box, frame: pd.DataFrame, path: Path) -> list:
    """The task's classes: label columns (multilabel), the config's list, the task type's fixed
    classes (binary: 0, 1), or the training labels."""
    task_type = TASK_TYPES[spec.type]
    if task_type.multilabel:
        return list(spec.label_columns)
    if spec.classes:
        return list(spec.classes)
    if task_type.classes is not None:
        return list(task_type.classes)
    column = spec.label_columns[0]
    if column not in frame.columns:
        return []  # reported with the other column checks
    values = frame[column].dropna().unique().tolist()
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def build_task_data(
    frame: pd.DataFrame,
    path: Path,
    task: str,
    split: str,
    spec: Box,
    meta: TaskMeta,
    on_bad_rows: str,
    max_dropped: float = 1.0,
) -> TaskData:
    key = f"tasks.{task}.{split}"
    labelled = split != "test" or all(c in frame.columns for c in spec.label_columns)
    needed = [spec.text_column] + (list(spec.label_columns) if labelled else [])
    if spec.group_column and split == "train":
        needed.append(spec.group_column)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"File {path} (config key '{key}') has no column {', '.join(map(repr, missing))}; "
            f"its columns are {list(frame.columns)}. Set tasks.{task}.text_column / label_columns to match."
        )
    text = frame[spec.text_column]
    bad: dict[str, np.ndarray] = {}
    empty = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        bad["empty or missing text"] = empty
    labels = None
    if labelled:
        labels, invalid, problem = encode_labels(frame, spec, meta)
        if invalid.any():
            bad[problem] = invalid
    drop = np.zeros(len(frame), dtype=bool)
    for problem, mask in bad.items():
        rows = np.flatnonzero(mask) + 1
        if on_bad_rows == "error":
            raise DataError(
                f"File {path} (config key '{key}'): {problem} in data rows {first_rows(rows)} "
                f"(1-based, header not counted). Fix or remove these rows, or set data.on_bad_rows=drop "
                f"to skip them with a logged count."
            )
        drop |= mask
    if drop.any():  # refused before anything is logged as dropped
        train_labels = labels if split == "train" else None
        check_drop(frame, path, key, spec, meta, train_labels, drop, bad, max_dropped)
    for problem, mask in bad.items():
        rows = np.flatnonzero(mask) + 1
        log.warning(
            "%s: dropping %d rows with %s (data rows %s)",
            path,
            len(rows),
            problem,
            first_rows(rows),
        )
    keep = np.flatnonzero(~drop)
    groups = (
        frame[spec.group_column].to_numpy()[keep]
        if spec.group_column and split == "train"
        else None
    )
    return TaskData(
        task=task,
        split=split,
        path=path,
        rows=keep,
        texts=text.iloc[keep].astype(str).tolist(),
        input_ids=[],
        labels=None if labels is None else labels[keep],
        groups=groups,
    )


def check_drop(
    frame: pd.DataFrame,
    path: Path,
    key: str,
    spec: Box,
    meta: TaskMeta,
    labels: np.ndarray | None,
    drop: np.ndarray,
    bad: dict[str, np.ndarray],
    max_dropped: float,
) -> None:
    """`on_bad_rows=drop` is for a few broken rows. Dropping a large share of a file, or every
    training row of a class, means the file and the config disagree (e.g. `classes` that do not
    match the file's labels): training on what is left would silently be a different task."""
    counts = "; ".join(f"{int(mask.sum())} with {problem}" for problem, mask in bad.items())
    share = drop.mean()
    if share > max_dropped:
        raise DataError(
            f"File {path} (config key '{key}'): data.on_bad_rows=drop would drop {int(drop.sum())} "
            f"of {len(drop)} rows ({share:.0%}), more than data.max_dropped_fraction="
            f"{max_dropped} allows ({counts}). So many bad rows usually mean the file and the "
            f"config disagree: check tasks.{meta.name}.classes / label_columns against the file, "
            f"fix the rows, or raise data.max_dropped_fraction if dropping them is intended."
        )
    if labels is None:
        return
    kept = meta.class_counts(labels[~drop])
    if meta.multilabel:  # a label that no row of the file has is not lost by dropping
        kept = np.where(meta.class_counts(labels) > 0, kept, 1)
    lost = [c for c, k in zip(meta.classes, kept, strict=True) if k == 0]
    if lost:
        column = spec.label_columns[0]
        seen = ""
        if not meta.multilabel and column in frame.columns:
            top = frame[column][drop].astype(str).value_counts().head(5)
            seen = (
                " The dropped rows' labels: "
                + ", ".join(f"{v!r} ({n})" for v, n in top.items())
                + "."
            )
        raise DataError(
            f"File {path} (config key '{key}'): data.on_bad_rows=drop would leave class(es) "
            f"{lost} of task '{meta.name}' with no training rows ({counts}).{seen} The declared "
            f"classes {list(meta.classes)} probably do not match the file's labels: fix "
            f"tasks.{meta.name}.classes (quote names YAML could read otherwise) or the file."
        )


def encode_labels(
    frame: pd.DataFrame, spec: Box, meta: TaskMeta
) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels as class indices (N,) or multi-hot (N, C), a mask of invalid rows, and what is wrong."""
    if meta.multilabel:
        values = (
            frame[list(spec.label_columns)]
            .apply(pd.to_numeric, errors="coerce")
            .to_numpy(dtype=np.float64)
        )
        invalid = ~np.isin(values, (0.0, 1.0)).all(axis=1)
        cols = ", ".join(spec.label_columns)
        return (
            np.nan_to_num(values).astype(np.float32),
            invalid,
            f"a value other than 0/1 in columns [{cols}]",
        )
    raw = frame[spec.label_columns[0]]
    lookup = {_label_key(c): i for i, c in enumerate(meta.classes)}
    codes = np.array([lookup.get(_label_key(v), -1) for v in raw], dtype=np.int64)
    problem = f"a label in column '{spec.label_columns[0]}' outside the declared classes {list(meta.classes)}"
    return codes, codes < 0, problem


def _label_key(value) -> str:
    """Compare labels as text so 1, 1.0, '1' and True all mean class 1."""
    if isinstance(value, bool | np.bool_):
        value = int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def class_weights(spec: Box, meta: TaskMeta, labels: np.ndarray) -> list[float] | None:
    """`auto`: inverse class frequency (multi-class) or negatives/positives per label (multi-label),
    counted on `labels`: pass the rows that train (see `trained_class_weights`)."""
    weights = spec.class_weights
    if weights is None:
        return None
    if weights == "auto":
        counts = meta.class_counts(labels)
        if meta.multilabel:  # BCE's pos_weight: negatives / positives
            return ((len(labels) - counts) / np.maximum(counts, 1.0)).round(6).tolist()
        counts = counts.astype(np.float64)
        return (len(labels) / (meta.num_outputs * np.maximum(counts, 1.0))).round(6).tolist()
    if len(weights) != meta.num_outputs or not all(isinstance(w, int | float) for w in weights):
        raise ConfigError(
            f"Config key 'tasks.{meta.name}.class_weights' must hold {meta.num_outputs} numbers "
            f"(one per class {list(meta.classes)}), got {list(weights)}."
        )
    return [float(w) for w in weights]


def trained_class_weights(
    tasks: Box, metas: dict[str, TaskMeta], labels: dict[str, np.ndarray]
) -> dict[str, TaskMeta]:
    """Copies of `metas` whose class weights are counted on `labels[task]`, the labels of the rows
    that train. `auto` counted on the whole training file also counted the rows that validate a
    fold or are held out as the val set (issue 22 item 7)."""
    return {
        name: replace(meta, class_weights=class_weights(tasks[name], meta, labels[name]))
        for name, meta in metas.items()
    }


def thresholds(spec: Box, meta: TaskMeta) -> list[float]:
    """Decision thresholds: per class for a multi-label task; for a binary task [t] on the second
    class's probability, or [] (argmax) at the default 0.5. `tuned` starts at 0.5, tuned later."""
    value = spec.threshold
    if meta.type == "binary":
        if value == "tuned":
            return [0.5]
        number = value[0] if isinstance(value, list) and len(value) == 1 else value
        if isinstance(number, list) or not 0.0 < float(number) < 1.0:
            raise ConfigError(
                f"Config key 'tasks.{meta.name}.threshold' must be one number in (0, 1) for a "
                f"binary task (the cut on '{meta.classes[1]}'), or 'tuned'; got {value}."
            )
        return [] if float(number) == 0.5 else [float(number)]
    if not meta.multilabel:
        if value != 0.5:
            raise ConfigError(
                f"Config key 'tasks.{meta.name}.threshold' is {value!r}, but a {meta.type} task "
                f"decides by argmax; thresholds apply to binary and multilabel tasks. Remove it."
            )
        return []
    if isinstance(value, list):
        if len(value) != meta.num_outputs:
            raise ConfigError(
                f"Config key 'tasks.{meta.name}.threshold' must hold {meta.num_outputs} numbers, got {value}."
            )
        return [float(v) for v in value]
    return [0.5 if value == "tuned" else float(value)] * meta.num_outputs
