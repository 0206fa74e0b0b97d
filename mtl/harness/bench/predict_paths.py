"""The predict path: mtl.inference.predictor.Predictor (batched, length-sorted, dynamically padded) against a
naive one-text-at-a-time loop, texts/s."""

from __future__ import annotations

import time

import numpy as np
import torch

from mtl.harness.bench.meter import MemoryProbe, autocast, synchronize
from mtl.harness.bench.setup import Setup


def predict_texts(setup: Setup, count: int) -> list[str]:
    texts = [t for part in setup.parts.values() for t in part.texts]
    order = np.random.default_rng(setup.cfg.seed).permutation(len(texts))
    return [texts[i] for i in order[:count]]


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int, multiple: int) -> int:
    """Tokens fed to the model when rows go in `order`, each batch padded to its longest row."""
    total = 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        total += len(index) * (-(-int(lengths[index].max()) // multiple) * multiple)
    return total


def predict_naive(model, metas, tokenizer, texts, *, max_length, device, precision):
    """The naive loop: tokenize and run one text at a time. {task: (N, C) probs}."""
    rows: dict[str, list] = {name: [] for name in metas}
    with torch.no_grad(), autocast(device, precision):
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            for name, meta in metas.items():
                rows[name].append(meta.probabilities(logits[name]).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def batched_predictor(setup: Setup, model):
    """Ours: mtl.inference.predictor.Predictor over the in-memory model (length-sorted, longest first, each
    batch padded to its longest row; its default batch size for the device). Returns
    (predict(texts) -> {task: probs}, label, batch size)."""
    from mtl.inference.predictor import Predictor

    cfg = setup.cfg
    predictor = Predictor(
        [model],
        {name: meta.to_dict() for name, meta in setup.metas.items()},
        cfg,
        setup.tokenizer,
        device=setup.device,
        precision=str(cfg.trainer.precision),
    )
    return (
        lambda texts: predictor.fold_probabilities(texts)[0],
        "mtl.inference.predictor.Predictor.fold_probabilities",
        predictor.batch_size,
    )


def run_predict(setup: Setup, count: int) -> dict:
    model = setup.module().model.to(setup.device).eval()
    texts = predict_texts(setup, count)
    ours, implementation, batch_size = batched_predictor(setup, model)
    naive_kwargs = dict(
        max_length=setup.cfg.data.max_length,
        device=setup.device,
        precision=str(setup.cfg.trainer.precision),
    )
    lengths = np.array(
        [
            len(x)
            for x in setup.tokenizer(texts, truncation=True, max_length=setup.cfg.data.max_length)[
                "input_ids"
            ]
        ]
    )
    order = np.argsort(-lengths, kind="stable")  # as Predictor.fold_probabilities: longest first
    real, padded = int(lengths.sum()), padded_tokens(lengths, order, batch_size, 1)
    ours(texts[: 2 * batch_size])  # warm-up
    predict_naive(model, setup.metas, setup.tokenizer, texts[:8], **naive_kwargs)
    results = {"implementation": implementation}
    for kind in ("batched", "naive"):
        with MemoryProbe(setup.device) as probe:
            synchronize(setup.device)
            start = time.perf_counter()
            if kind == "batched":
                probs = ours(texts)
            else:
                reference = predict_naive(
                    model, setup.metas, setup.tokenizer, texts, **naive_kwargs
                )
            synchronize(setup.device)
            seconds = time.perf_counter() - start
        results[kind] = {
            "texts": len(texts),
            "seconds": round(seconds, 4),
            "texts_per_s": len(texts) / seconds,
            "real_tokens_per_s": real / seconds,
            "padded_token_share": 1.0 - real / padded if kind == "batched" else 0.0,
            "batch_size": batch_size if kind == "batched" else 1,
            **probe.result,
        }
    results["max_abs_prob_diff"] = max(
        float(np.abs(np.asarray(probs[name]) - reference[name]).max()) for name in reference
    )
    return results
