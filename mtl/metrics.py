"""Per-task validation metrics with torchmetrics (synced across DDP ranks at compute time).

binary      f1_macro, accuracy, auroc
multiclass  f1_macro, accuracy
multilabel  f1_macro, f1_micro, f1_<label> per label, exact_match
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
)

from mtl.tasks import TaskMeta


class TaskMetrics(nn.Module):
    """Accumulates probabilities and targets of one task; `compute()` → {metric name: float}."""

    def __init__(self, meta: TaskMeta):
        super().__init__()
        self.meta = meta
        n = meta.num_outputs
        if meta.multilabel:
            self.register_buffer("thresholds", torch.tensor(meta.threshold or [0.5] * n))
            self.metrics = MetricCollection(
                {
                    "f1_macro": MultilabelF1Score(n, average="macro", zero_division=0),
                    "f1_micro": MultilabelF1Score(n, average="micro", zero_division=0),
                    "f1_per_label": MultilabelF1Score(n, average="none", zero_division=0),
                    "exact_match": MultilabelExactMatch(n),
                }
            )
        else:
            metrics = {
                "f1_macro": MulticlassF1Score(n, average="macro", zero_division=0),
                "accuracy": MulticlassAccuracy(n, average="micro"),
            }
            if meta.type == "binary":
                metrics["auroc"] = BinaryAUROC()
            self.metrics = MetricCollection(metrics)

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        if probs.shape[0] == 0:
            return
        if self.meta.multilabel:
            # thresholds may differ per label: compare first, then feed 0/1 "probabilities"
            self.metrics.update((probs >= self.thresholds).float(), targets.long())
            return
        preds = probs.argmax(dim=-1)
        for name, metric in self.metrics.items():
            metric.update(probs[:, 1] if name == "auroc" else preds, targets)

    def compute(self) -> dict[str, float]:
        values = self.metrics.compute()
        out: dict[str, float] = {}
        for name, value in values.items():
            if name == "f1_per_label":
                out.update(
                    {
                        f"f1_{label}": float(v)
                        for label, v in zip(self.meta.classes, value, strict=True)
                    }
                )
            else:
                out[name] = float(value)
        return out

    def reset(self) -> None:
        self.metrics.reset()


def score_arrays(
    meta: TaskMeta, probs: np.ndarray, labels: np.ndarray, thresholds=None
) -> dict[str, float]:
    """The same metrics from numpy arrays (out-of-fold and blended predictions)."""
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
    preds = probs.argmax(axis=1)
    out = {
        "f1_macro": f1_score(
            labels, preds, average="macro", labels=range(meta.num_outputs), zero_division=0
        ),
        "accuracy": accuracy_score(labels, preds),
    }
    if meta.type == "binary":
        out["auroc"] = (
            roc_auc_score(labels, probs[:, 1]) if len(np.unique(labels)) == 2 else float("nan")
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
