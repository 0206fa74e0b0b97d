"""Task types as data: what differs between binary, multiclass and multilabel lives here only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TaskType:
    multilabel: bool  # independent sigmoid per class (one label column each) vs one softmax
    metrics: tuple[
        str, ...
    ]  # what mtl.model.metrics.score_arrays reports; f1_<label>: one per label
    primary_metric: str  # what `monitor.metric: score` averages across tasks
    losses: tuple[str, ...]  # the `loss` values it takes; the first is the default
    classes: tuple | None = None  # fixed classes; None: the config's `classes` or the data's


TASK_TYPES: dict[str, TaskType] = {
    "binary": TaskType(
        multilabel=False,
        metrics=("f1_macro", "accuracy", "auroc"),
        primary_metric="f1_macro",
        losses=("ce", "focal"),
        classes=(0, 1),
    ),
    "multiclass": TaskType(
        multilabel=False,
        metrics=("f1_macro", "accuracy"),
        primary_metric="f1_macro",
        losses=("ce", "focal"),
    ),
    "multilabel": TaskType(
        multilabel=True,
        metrics=("f1_macro", "f1_micro", "f1_<label>", "exact_match"),
        primary_metric="f1_macro",
        losses=("bce", "focal"),
    ),
}


@dataclass
class TaskMeta:
    """What the model needs to know about a task once its training file has been read.

    Stored (as a dict) in every checkpoint so a model can be rebuilt without the data.
    """

    name: str
    type: str
    classes: list  # class names; for multilabel the label columns
    class_weights: list[float] | None = None
    # multilabel: one per class; binary: [cut on the second class's probability], or [] for argmax
    threshold: list[float] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def task_type(self) -> TaskType:
        return TASK_TYPES[self.type]

    @property
    def multilabel(self) -> bool:
        return self.task_type.multilabel

    @property
    def primary_metric(self) -> str:
        return self.task_type.primary_metric

    def class_counts(self, labels: np.ndarray) -> np.ndarray:
        """Rows per class: positives per label of (N, C) multi-hot, or a count of (N,) indices."""
        if self.multilabel:
            return labels.sum(axis=0)
        return np.bincount(labels, minlength=self.num_outputs)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def prob_columns(self) -> list[str]:
        return [f"{self.name}_{c}" for c in self.classes]

    def truth_columns(self) -> list[str]:
        return [f"true_{c}" for c in self.classes] if self.multilabel else ["true"]

    def decide(self, probs: np.ndarray, thresholds: list[float] | None = None) -> list:
        """Predicted labels: the argmax class (binary with a threshold: the second class where its
        probability reaches it), or for multi-label the list of classes over threshold."""
        from mtl.portable import decide  # the rule ONNX exports carry (mtl/portable.py)

        if thresholds is None:
            thresholds = self.threshold or (0.5 if self.multilabel else None)
        return decide(probs, self.classes, self.multilabel, thresholds)

    def label_column(self, probs: np.ndarray, thresholds: list[float] | None = None) -> list:
        """`decide` as one table column: multi-label sets joined with "|" ("" when none)."""
        labels = self.decide(probs, thresholds)
        return ["|".join(map(str, x)) for x in labels] if self.multilabel else labels

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "classes": list(self.classes),
            "class_weights": self.class_weights,
            "threshold": list(self.threshold),
        }
