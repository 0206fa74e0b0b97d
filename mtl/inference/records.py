"""Predictions as plain records (JSON; also the HTTP API's answer, mtl/inference/serve.py) and as
the console table `scripts/predict.py` prints (mtl/cli/predict.py)."""

from __future__ import annotations

import json

import numpy as np

from mtl.inference.predictor import Predictor
from mtl.portable import record  # the record ONNX exports print too (mtl/portable.py)


def render_table(texts: list[str], predictor: Predictor, probs: dict[str, np.ndarray]) -> str:
    """Per text: one line per task with its predicted label(s) and every class's probability."""
    labels = predictor.labels(probs)
    shown_labels = {
        name: [
            (", ".join(map(str, value)) or "-") if meta.multilabel else str(value)
            for value in labels[name]
        ]
        for name, meta in predictor.metas.items()
    }
    task_width = max(len("task"), *(len(t) for t in predictor.tasks))
    label_width = max([len("prediction")] + [len(x) for v in shown_labels.values() for x in v])
    lines = []
    for i, text in enumerate(texts):
        shown = text if len(text) <= 100 else text[:99] + "…"
        lines.append(f"[{i + 1}] {shown!r}" if text.strip() else f"[{i + 1}] (empty text)")
        lines.append(f"  {'task':<{task_width}}  {'prediction':<{label_width}}  probabilities")
        for name, meta in predictor.metas.items():
            cells = "  ".join(
                f"{c}={p:.3f}" for c, p in zip(meta.classes, probs[name][i], strict=True)
            )
            label = shown_labels[name][i]
            lines.append(f"  {name:<{task_width}}  {label:<{label_width}}  {cells}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def prediction_records(
    texts: list[str], predictor: Predictor, probs: dict[str, np.ndarray]
) -> list[dict]:
    """Per text: the text, and per task every class's probability by name and the label(s);
    plain Python values, ready for JSON (also the HTTP API's answer, mtl/inference/serve.py)."""
    labels = predictor.labels(probs)
    tasks = {name: (meta.classes, meta.multilabel) for name, meta in predictor.metas.items()}
    return [record(text, tasks, probs, labels, i) for i, text in enumerate(texts)]


def render_json(texts: list[str], predictor: Predictor, probs: dict[str, np.ndarray]) -> str:
    records = prediction_records(texts, predictor, probs)
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
