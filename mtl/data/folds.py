"""Which training rows validate in which fold: k-fold or a held-out split, deterministic from the seed.

Fold values per training row:
  k ≥ 0   validates in fold k (these rows choose the fold's best epoch and tuned thresholds)
  -1      always trains
  -2      held out as the task's val set (a task without a val file): never trains, never chooses;
          it is scored, blended over folds, as the task's clean headline score

Binary / multiclass tasks are stratified by label, multi-label tasks by iterative stratification
(Sechidis et al. 2011, the `iterative-stratification` package). Identical normalised texts (and the
rows of a `group_column` group) are one unit: a unit never straddles two folds, so a duplicate
cannot validate a fold it also trained. Seeds come from the seed and the task's *name*, so a task
gets the same folds alone and in any multi-task config, whatever the order of the tasks.
"""

from __future__ import annotations

import logging
import warnings
import zlib

import numpy as np
import pandas as pd
from box import Box
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedKFold, train_test_split

from mtl.data.files import TaskData
from mtl.data.tasks import TaskMeta
from mtl.errors import DataError

log = logging.getLogger(__name__)

ALWAYS_TRAINS = -1
VAL_SET = -2


def task_seed(seed: int, task: str, purpose: str) -> np.random.SeedSequence:
    """Seeds from the run seed and the task's name (never its position), one per purpose."""
    return np.random.SeedSequence([seed, zlib.crc32(f"{task}/{purpose}".encode())])


def _sklearn_seed(seed: int, task: str, purpose: str) -> int:
    return int(task_seed(seed, task, purpose).generate_state(1)[0] % (2**31 - 1))


def normalise_text(text: str) -> str:
    """What counts as "the same text": case and runs of whitespace do not matter."""
    return " ".join(str(text).lower().split())


def units(train: TaskData) -> np.ndarray:
    """Per row, the id of its unit: rows linked by an identical normalised text or a shared
    `group_column` value (transitively) form one unit."""
    n = len(train)
    text_ids = pd.factorize(pd.Series([normalise_text(t) for t in train.texts]))[0]
    keys = [text_ids]
    if train.groups is not None:
        keys.append(group_ids(train.groups) + text_ids.max() + 1)
    cols = np.concatenate(keys)
    rows = np.tile(np.arange(n), len(keys))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n)), shape=(n + cols.max() + 1,) * 2)
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]


def group_ids(groups: np.ndarray) -> np.ndarray:
    """Per row, the id of its `group_column` value. A blank cell (missing, or only whitespace)
    belongs to no group: each gets an id of its own, so ungrouped rows are spread over the folds
    like rows without a group column (read as one shared value, they formed one giant group
    that filled a single fold)."""
    values = pd.Series(groups, dtype=object)
    blank = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    ids = pd.factorize(values.astype(str))[0]
    ids[blank] = ids.max(initial=-1) + 1 + np.arange(blank.sum())
    return ids


def unit_labels(labels: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each unit, the unit's label for stratification): the most frequent class, or
    for multi-label the union of its rows' labels."""
    order = np.argsort(unit, kind="stable")
    firsts = order[np.r_[0, np.flatnonzero(np.diff(unit[order])) + 1]]
    if labels.ndim == 2:
        merged = pd.DataFrame(labels).groupby(unit).max().to_numpy()
        return firsts, merged.astype(np.int64)
    counts = pd.DataFrame({"unit": unit, "label": labels}).value_counts().reset_index()
    mode = counts.drop_duplicates("unit").set_index("unit")["label"].sort_index()  # sorted by count
    return firsts, mode.to_numpy().astype(np.int64)


def fold_assignments(
    cfg: Box, data: dict[str, dict[str, TaskData]], metas: dict[str, TaskMeta] | None = None
) -> dict[str, np.ndarray]:
    """Per task, the fold of each training row (aligned with `data[task]['train']`). `metas`
    names the classes in the error when cv.n_splits is more than a class can fill."""
    out, rests, units_of = {}, {}, {}
    for name, splits in data.items():
        train = splits["train"]
        unit = units_of[name] = units(train)
        folds = np.full(len(train), ALWAYS_TRAINS, dtype=np.int64)
        if splits.get("val") is None and cfg.data.val_fraction > 0:
            held = holdout(train, unit, cfg.data.val_fraction, _sklearn_seed(cfg.seed, name, "val"))
            folds[held] = VAL_SET
        rests[name] = np.flatnonzero(folds == ALWAYS_TRAINS)
        out[name] = folds
    if cfg.cv.n_splits > 1:  # every task checked before any is split: one error names them all
        check_fold_capacity(
            cfg.cv.n_splits,
            {
                name: (data[name]["train"].subset(rest), units_of[name][rest])
                for name, rest in rests.items()
            },
            metas or {},
        )
    for name, rest in rests.items():
        train, unit = data[name]["train"], units_of[name]
        if cfg.cv.n_splits > 1:
            out[name][rest] = kfold(
                train.subset(rest), unit[rest], cfg.cv.n_splits, _sklearn_seed(cfg.seed, name, "cv")
            )
        elif cfg.cv.selection == "best":
            chosen = holdout(
                train.subset(rest), unit[rest], cfg.data.val_fraction,
                _sklearn_seed(cfg.seed, name, "select"),
            )  # fmt: skip
            out[name][rest[chosen]] = 0
    return out


def fold_capacity(train: TaskData, unit: np.ndarray) -> tuple[int, int | None, int]:
    """(the largest n_splits these rows can fill, the rarest class's index or None, its units).

    The stratifier sees units (a text with its duplicates, a group), each with one label (for
    multi-label, the positives of every label). A fold can hold a class only if the class has
    a unit for every fold: StratifiedKFold gives each fold floor(units/k) of a class, and
    iterative stratification deals a label's positives out one by one. Classes (labels) with no
    unit here are in no fold whatever n_splits is, so they do not limit it."""
    firsts, labels = unit_labels(train.labels, pd.factorize(unit)[0])
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels)
    present = np.flatnonzero(counts > 0)
    if len(present) == 0:
        return len(firsts), None, 0
    rarest = int(present[np.argmin(counts[present])])
    return min(len(firsts), int(counts[rarest])), rarest, int(counts[rarest])


def check_fold_capacity(
    n_splits: int, parts: dict[str, tuple[TaskData, np.ndarray]], metas: dict[str, TaskMeta]
) -> None:
    """Refuse cv.n_splits above what a task can fill, before any fold is built or trained: a
    fold without a class scores undefined macro metrics, and one without rows of a task crashed
    late (issue 22, item 22: 34 of 100 folds trained, then a traceback)."""
    problems, largest = [], n_splits
    for name, (train, unit) in parts.items():
        limit, rarest, count = fold_capacity(train, unit)
        largest = min(largest, limit)
        if limit < n_splits:
            problems.append(
                f"task '{name}' ({train.path}) {_capacity_reason(train, metas.get(name), limit, rarest, count)}"
            )
    if problems:
        raise DataError(
            f"cv.n_splits={n_splits} is more folds than the training data can fill: "
            + "; ".join(problems)
            + ". Some folds would validate without that class (or without any row of the task). "
            f"Use cv.n_splits={largest} or fewer (1 = no k-fold), or add rows."
        )


def _capacity_reason(
    train: TaskData, meta: TaskMeta | None, limit: int, rarest: int | None, count: int
) -> str:
    if rarest is None or count != limit:
        return f"has {limit} distinct training texts (or groups), so at most {limit} folds"
    multilabel = train.labels.ndim == 2
    name = meta.classes[rarest] if meta is not None else rarest
    rows = int(
        (train.labels[:, rarest] > 0).sum() if multilabel else (train.labels == rarest).sum()
    )
    merged = "" if rows == count else f" ({rows} rows; identical texts and groups stay in one fold)"
    what = f"label {name!r} has {count} positive" if multilabel else f"class {name!r} has {count}"
    return f"can fill at most {limit} folds: its rarest {what} training texts{merged}"


def kfold(train: TaskData, unit: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold 0..n_splits-1 of every row: the units are split, stratified by their label."""
    unit = pd.factorize(unit)[0]  # ids 0..U-1 within these rows
    firsts, labels = unit_labels(train.labels, unit)
    if len(firsts) < n_splits:
        raise DataError(
            f"Task '{train.task}' has {len(firsts)} distinct training texts in {train.path}, fewer "
            f"than cv.n_splits={n_splits}. Lower cv.n_splits or add rows."
        )
    X = np.zeros((len(firsts), 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        if labels.ndim == 2:
            from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

            splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        else:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        unit_fold = np.full(len(firsts), -1, dtype=np.int64)
        for k, (_, val_idx) in enumerate(splitter.split(X, labels)):
            unit_fold[val_idx] = k
    empty = sorted(set(range(n_splits)) - set(unit_fold.tolist()))
    if empty:  # not expected once check_fold_capacity passed; a fold without rows must not train
        raise DataError(
            f"Task '{train.task}' ({train.path}): the stratifier left fold(s) {empty} of "
            f"cv.n_splits={n_splits} without rows. Lower cv.n_splits or add rows."
        )
    return unit_fold[unit]


def holdout(train: TaskData, unit: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified `fraction` of the rows, taken as whole units."""
    unit = pd.factorize(unit)[0]  # ids 0..U-1 within these rows
    firsts, labels = unit_labels(train.labels, unit)
    n_val = max(1, int(round(fraction * len(firsts))))
    if len(firsts) - n_val < 1:
        raise DataError(
            f"Task '{train.task}' has too few distinct training texts ({len(firsts)}) in "
            f"{train.path} to hold out data.val_fraction={fraction} of them. Add rows, give the "
            f"task a val file, or lower data.val_fraction."
        )
    stratify = labels if labels.ndim == 1 and np.bincount(labels).min(initial=2) >= 2 else None
    idx = np.arange(len(firsts))
    try:
        _, val_units = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    except ValueError:  # too few units of a class to stratify
        _, val_units = train_test_split(idx, test_size=n_val, random_state=seed)
    return np.flatnonzero(np.isin(unit, val_units))


def val_sets(
    data: dict[str, dict[str, TaskData]], folds: dict[str, np.ndarray]
) -> dict[str, TaskData]:
    """Per task, its clean report rows: the val file, or the rows held out of the training file."""
    out = {}
    for name, splits in data.items():
        held = np.flatnonzero(folds[name] == VAL_SET)
        if splits.get("val") is not None:
            out[name] = splits["val"]
        elif len(held):
            out[name] = splits["train"].subset(held)
    return out


def fold_split(
    data: dict[str, dict[str, TaskData]], folds: dict[str, np.ndarray], k: int
) -> tuple[dict[str, TaskData], dict[str, TaskData]]:
    """Fold k trains on the rows that are neither in fold k nor held out, and validates on fold k
    (with `cv.selection: last` and one split there is no fold 0: the val set is watched instead,
    for the curves only — nothing is chosen on it)."""
    train_parts, val_parts = {}, {}
    report = val_sets(data, folds)
    for name, splits in data.items():
        train = splits["train"]
        in_fold = folds[name] == k
        train_parts[name] = train.subset(np.flatnonzero(~in_fold & (folds[name] != VAL_SET)))
        val_parts[name] = (
            train.subset(np.flatnonzero(in_fold)) if in_fold.any() else report.get(name)
        )
    return train_parts, val_parts


def overlap_counts(
    data: dict[str, dict[str, TaskData]], folds: dict[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Per task and report split (val, test), how many rows' normalised text also occurs among the
    rows that train: such rows are partly memorised, not unseen."""
    out: dict[str, dict[str, int]] = {}
    report = val_sets(data, folds)
    for name, splits in data.items():
        trains = splits["train"].subset(np.flatnonzero(folds[name] != VAL_SET))
        seen = {normalise_text(t) for t in trains.texts}
        for split, part in (("val", report.get(name)), ("test", splits.get("test"))):
            if part is not None:
                out.setdefault(name, {})[split] = int(
                    sum(normalise_text(t) in seen for t in part.texts)
                )
    return out


def drop_overlap(data: dict[str, dict[str, TaskData]]) -> dict[str, dict[str, TaskData]]:
    """`data.drop_overlap`: val / test file rows whose text also occurs in training are removed."""
    for name, splits in data.items():
        seen = {normalise_text(t) for t in splits["train"].texts}
        for split in ("val", "test"):
            part = splits.get(split)
            if part is None:
                continue
            keep = np.flatnonzero([normalise_text(t) not in seen for t in part.texts])
            if len(keep) == 0:
                raise DataError(
                    f"Task '{name}': every row of {part.path} also occurs in the training file, so "
                    f"data.drop_overlap=true leaves no {split} rows. Set data.drop_overlap=false."
                )
            if len(keep) < len(part):
                log.info(
                    "%s: dropped %d of %d rows whose text also occurs in training (data.drop_overlap)",
                    part.path, len(part) - len(keep), len(part),
                )  # fmt: skip
                splits[split] = part.subset(keep)
    return data
