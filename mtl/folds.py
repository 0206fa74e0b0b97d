"""Which training rows validate in which fold: k-fold or a held-out split, deterministic from the seed.

Binary / multiclass tasks are stratified by label (StratifiedGroupKFold when a group column keeps
duplicates or authors together); multi-label tasks use iterative stratification (Sechidis et al.
2011, the `iterative-stratification` package). Fold -1 means "always trains".
"""

from __future__ import annotations

import warnings

import numpy as np
from box import Box
from sklearn.model_selection import (
    GroupKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from mtl.data import TaskData
from mtl.errors import DataError


def fold_assignments(cfg: Box, data: dict[str, dict[str, TaskData]]) -> dict[str, np.ndarray]:
    """Per task, the fold of each training row (aligned with `data[task]['train']`)."""
    out = {}
    for offset, (name, splits) in enumerate(data.items()):
        train = splits["train"]
        seed = cfg.seed + offset
        if cfg.cv.n_splits > 1:
            out[name] = kfold(train, cfg.cv.n_splits, seed)
        elif splits.get("val") is not None:
            out[name] = np.full(len(train), -1, dtype=np.int64)
        else:
            out[name] = holdout(train, cfg.data.val_fraction, seed)
    return out


def kfold(train: TaskData, n_splits: int, seed: int) -> np.ndarray:
    if len(train) < n_splits:
        raise DataError(
            f"Task '{train.task}' has {len(train)} training rows in {train.path}, fewer than cv.n_splits={n_splits}."
        )
    folds = np.full(len(train), -1, dtype=np.int64)
    X = np.zeros((len(train), 1))
    labels = train.labels
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        if labels.ndim == 2:
            if train.groups is not None:
                splitter = GroupKFold(n_splits=n_splits)
                splits = splitter.split(X, groups=train.groups)
            else:
                from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

                splitter = MultilabelStratifiedKFold(
                    n_splits=n_splits, shuffle=True, random_state=seed
                )
                splits = splitter.split(X, labels)
        elif train.groups is not None:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            splits = splitter.split(X, labels, groups=train.groups)
        else:
            splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
                X, labels
            )
        for k, (_, val_idx) in enumerate(splits):
            folds[val_idx] = k
    return folds


def holdout(train: TaskData, fraction: float, seed: int) -> np.ndarray:
    """Without k-fold and without a val file: a stratified held-out share validates (fold 0)."""
    n_val = max(1, int(round(fraction * len(train))))
    if len(train) - n_val < 1:
        raise DataError(
            f"Task '{train.task}' has too few training rows in {train.path} to hold out a validation split."
        )
    labels = train.labels
    stratify = labels if labels.ndim == 1 and np.bincount(labels).min(initial=2) >= 2 else None
    idx = np.arange(len(train))
    try:
        _, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    except ValueError:  # too few rows of a class to stratify
        _, val_idx = train_test_split(idx, test_size=n_val, random_state=seed)
    folds = np.full(len(train), -1, dtype=np.int64)
    folds[val_idx] = 0
    return folds


def fold_split(
    data: dict[str, dict[str, TaskData]], folds: dict[str, np.ndarray], k: int
) -> tuple[dict[str, TaskData], dict[str, TaskData]]:
    """Fold k trains on the other folds of every task and validates on fold k (or the val file)."""
    train_parts, val_parts = {}, {}
    for name, splits in data.items():
        train = splits["train"]
        in_fold = folds[name] == k
        train_parts[name] = train.subset(np.flatnonzero(~in_fold))
        val_parts[name] = (
            train.subset(np.flatnonzero(in_fold)) if in_fold.any() else splits.get("val")
        )
    return train_parts, val_parts
