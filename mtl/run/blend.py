"""Combine the folds' probabilities, and tune multi-label thresholds on out-of-fold predictions.

mean      plain average of the folds' probabilities (default)
rank      labels and probabilities from the mean blend; rank metrics (AUROC) from the average of
          each fold's per-column ranks scaled to [0, 1] (robust to folds calibrated differently).
          Ranks order a set of rows, they are not probabilities: deciding a label from them marks
          about half the rows positive whatever the base rate, and one text alone has no rank.
weighted  average weighted by each fold's validation score
"""

from __future__ import annotations

import numpy as np

# blend() itself lives in mtl/portable.py, the file ONNX exports carry, so an export blends as the
# run does; rank: decisions from the calibrated mean (see rank_blend)
from mtl.portable import BLEND_METHODS, blend

__all__ = [
    "BLEND_METHODS", "CUT_GRID", "best_cut_index", "blend", "cross_fit_thresholds", "f1_counts",
    "fold_thresholds", "rank_blend", "tune_binary_threshold", "tune_thresholds",
]  # fmt: skip

# the cuts a tuned threshold is chosen from (tune_binary_threshold, tune_thresholds, and the
# bootstrap in mtl/run/threshold_bootstrap.py that re-tunes them on resamples)
CUT_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def rank_blend(fold_probs: list[np.ndarray]) -> np.ndarray:
    """(F folds of (N, C)) → (N, C) mean of per-column ranks scaled to [0, 1]: scores for rank
    metrics over these N rows only (ties share their mean rank)."""
    from scipy.stats import rankdata

    stack = np.stack([np.asarray(p, dtype=np.float64) for p in fold_probs])  # (F, N, C)
    ranks = rankdata(stack, axis=1) - 1.0
    return (ranks / max(1, stack.shape[1] - 1)).mean(axis=0)


def fold_thresholds(
    probs: np.ndarray, labels: np.ndarray, fold: np.ndarray, tune=None
) -> dict[int, list[float] | None]:
    """Per fold k, the thresholds tuned on the other folds' rows (`tune`: tune_thresholds for
    multi-label, tune_binary_threshold for binary); None for a fold alone, with nothing else to
    tune on. The rule behind every fold and OOF score of a task with tuned thresholds."""
    tune = tune or tune_thresholds
    out: dict[int, list[float] | None] = {}
    for k in np.unique(fold):
        others = fold != k
        out[int(k)] = tune(probs[others], labels[others]) if others.any() else None
    return out


def cross_fit_thresholds(
    probs: np.ndarray, labels: np.ndarray, fold: np.ndarray, tune=None
) -> np.ndarray:
    """Per-row thresholds, (N, C) multi-label or (N, 1) with `tune=tune_binary_threshold`: the
    rows of fold k get thresholds tuned on the other folds' rows (`fold_thresholds`), so the
    out-of-fold score is not measured on the rows that chose its thresholds. With one fold alone
    there is nothing else to tune on: its rows get 0.5."""
    tune = tune or tune_thresholds
    width = probs.shape[1] if tune is tune_thresholds else 1
    cut = np.full((len(probs), width), 0.5, dtype=np.float64)
    for k, tuned in fold_thresholds(probs, labels, fold, tune).items():
        if tuned is not None:
            cut[fold == k] = tuned
    return cut


def f1_rows(truth: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(G,) F1 of the positive class for each row of `preds` (G, N) against `truth` (N,); 0 where
    it is undefined: scikit-learn's f1_score with zero_division=0, as 2·tp / (2·tp + fp + fn),
    for a whole threshold grid at once (the grid search would make thousands of sklearn calls)."""
    truth = np.asarray(truth).astype(bool)
    return f1_counts((preds & truth).sum(axis=1), (preds != truth).sum(axis=1))


def f1_counts(tp: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """F1 from counts (or whole-number weights) of true positives and of wrong calls (fp + fn):
    2·tp / (2·tp + fp + fn), 0 where undefined (scikit-learn's zero_division=0)."""
    return np.where(tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)


def best_cut_index(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(..., G) scores of the cuts `grid` → (...) index of the highest; ties (np.isclose) → the
    cut closest to 0.5, the first of those in grid order."""
    top = np.isclose(scores, scores.max(axis=-1, keepdims=True))
    return np.argmin(np.where(top, np.abs(grid - 0.5), np.inf), axis=-1)


def _best_cut(scores: np.ndarray, grid: np.ndarray) -> float:
    return float(grid[best_cut_index(scores, grid)])


def tune_binary_threshold(
    probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None
) -> list[float]:
    """[t]: the cut on the second class's probability (of (N, 2) `probs`; `labels` (N,) class
    indices) that maximises macro-F1 over both classes, on `grid` (ties → closest to 0.5)."""
    grid = CUT_GRID if grid is None else np.asarray(grid)
    truth = np.asarray(labels).astype(int) == 1
    preds = np.asarray(probs)[:, 1][None, :] >= grid[:, None]  # (G, N): second class called
    return [_best_cut((f1_rows(truth, preds) + f1_rows(~truth, ~preds)) / 2, grid)]


def tune_thresholds(
    probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None
) -> list[float]:
    """Per label, the threshold on `grid` that maximises that label's F1 (ties → closest to 0.5)."""
    grid = CUT_GRID if grid is None else np.asarray(grid)
    probs, labels = np.asarray(probs), np.asarray(labels)
    return [
        _best_cut(f1_rows(labels[:, c], probs[:, c][None, :] >= grid[:, None]), grid)
        for c in range(probs.shape[1])
    ]
