"""Per-task metrics, one definition (scikit-learn's, as papers report them) for every score.

binary      f1_macro, accuracy, auroc
multiclass  f1_macro, accuracy          (macro over *all* declared classes: a class absent from
                                          predictions and targets counts as F1 0, as in sklearn)
multilabel  f1_macro, f1_micro, f1_<label> per label, exact_match

Validation during training gathers probabilities and targets with torchmetrics' `CatMetric`
(synced across DDP ranks at compute time) and scores them with `score_arrays`, the same function
that scores out-of-fold and blended predictions, so a fold's logged metric and its OOF score agree.
Not torchmetrics' own F1: since Lightning-AI/torchmetrics#295 / #300 its multiclass macro average
leaves out a class absent from both predictions and targets (1.9: perfect predictions of 2 of 3
classes score 1.0; scikit-learn over the declared classes: 0.667), so the two would disagree.
"""

from __future__ import annotations

import numpy as np
import torch
from box import Box
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn
from torchmetrics.aggregation import CatMetric

from mtl.data.tasks import TaskMeta
from mtl.portable import single_label


def monitor_key(cfg: Box) -> str:
    """The logged key `monitor.metric` names: it chooses each fold's epoch (ModelCheckpoint,
    EarlyStopping) and is the fold score results.json reports."""
    metric = cfg.monitor.metric
    return "val/score" if metric == "score" else f"val/{metric}"


class TaskMetrics(nn.Module):
    """Accumulates probabilities and targets of one task; `compute()` → {metric name: float}."""

    def __init__(self, meta: TaskMeta):
        super().__init__()
        self.meta = meta
        self.probs = CatMetric()
        self.targets = CatMetric()

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        if probs.shape[0] == 0:
            return
        self.probs.update(probs.detach().float())
        self.targets.update(targets.detach().float())

    def compute(self) -> dict[str, float]:
        probs = self.probs.compute().cpu().double().numpy().reshape(-1, self.meta.num_outputs)
        targets = self.targets.compute().cpu().numpy()
        labels = (
            targets.reshape(len(probs), -1) if self.meta.multilabel else targets.astype(np.int64)
        )
        return score_arrays(self.meta, probs, labels, self.meta.threshold or None)

    def reset(self) -> None:
        self.probs.reset()
        self.targets.reset()


def score_arrays(
    meta: TaskMeta,
    probs: np.ndarray,
    labels: np.ndarray,
    thresholds=None,
    rank_scores: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of the task from numpy arrays. `thresholds`: one per label, or (N, C) per row
    (cross-fitted); for a binary task [t] or (N, 1) on the second class, none: argmax.
    `rank_scores`: scores for AUROC in place of `probs` (the rank blend)."""
    if meta.multilabel:
        cut = np.asarray(thresholds if thresholds is not None else meta.threshold or 0.5)
        preds = (probs >= cut).astype(int)
        truth = labels.astype(int)
        out = {
            "f1_macro": f1_score(truth, preds, average="macro", zero_division=0),
            "f1_micro": f1_score(truth, preds, average="micro", zero_division=0),
        }
        per_label = f1_score(truth, preds, average=None, zero_division=0)
        out.update({f"f1_{label}": v for label, v in zip(meta.classes, per_label, strict=True)})
        out["exact_match"] = float((preds == truth).all(axis=1).mean())
        return {k: float(v) for k, v in out.items()}
    preds = single_label(probs, thresholds if meta.num_outputs == 2 else None, per_row=True)
    out = {
        "f1_macro": f1_score(
            labels, preds, average="macro", labels=range(meta.num_outputs), zero_division=0
        ),
        "accuracy": accuracy_score(labels, preds),
    }
    if "auroc" in meta.task_type.metrics:
        scores = (probs if rank_scores is None else rank_scores)[:, 1]
        out["auroc"] = (
            roc_auc_score(labels, scores) if len(np.unique(labels)) == 2 else float("nan")
        )
    return {k: float(v) for k, v in out.items()}


def majority_baseline(meta: TaskMeta, labels: np.ndarray) -> dict[str, float]:
    """Metrics of always predicting the most frequent class (multi-label: the most frequent label
    set) of `labels` itself — the bar a trained model must clear on the same rows."""
    if meta.multilabel:
        patterns, counts = np.unique(labels.astype(int), axis=0, return_counts=True)
        probs = np.tile(patterns[counts.argmax()].astype(np.float64), (len(labels), 1))
        return score_arrays(meta, probs, labels, [0.5] * meta.num_outputs)
    probs = np.zeros((len(labels), meta.num_outputs))
    probs[:, np.bincount(labels, minlength=meta.num_outputs).argmax()] = 1.0
    return score_arrays(meta, probs, labels)
