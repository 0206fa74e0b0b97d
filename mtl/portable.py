"""The torch-free core of an mtl ONNX export: what mtl and the export's own runtime share.

`scripts/export.py` copies this file into the export folder as `mtl_onnx_core.py`, beside
`mtl_onnx.py` (a copy of mtl/portable_model.py, which runs the folder), so the folder predicts
where neither mtl nor PyTorch, Lightning or transformers is installed (docs/serving.md).

mtl uses the same functions (the tweet preprocessing, the blend, label decisions, the records of
`predict.py --format json`, the ONNX Runtime session settings, the check of an export against
its manifest), so the folder answers exactly as `OnnxPredictor` does;
tests/inference/test_portable.py runs the copies with torch, transformers and mtl unimportable
and compares. Hence the rule for this file: import nothing from mtl, and nothing beyond the
standard library, numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

BLEND_METHODS = ("mean", "rank", "weighted")
# ONNX Runtime fuses Add + LayerNormalization into its SkipLayerNormalization op when a session
# starts. With ONNX Runtime 1.32 on our CPU that op ran 3.6x slower than the ops it replaces
# ((416, 384) floats, 543 against 149 us per call), and skipping the fusion made the int8 MiniLM
# 1.27x faster end to end (with the fused Attention export; 1.12x without). No upstream issue
# found; re-measure after upgrading onnxruntime with
# `scripts/benchmark.py --serve RUN --onnx-ablation` (docs/serving.md).
SLOW_FUSIONS = ["SkipLayerNormFusion"]
CPU_BATCH_SIZE = 16  # length-sorted batches of 16 were fastest on a CPU (docs/performance.md)
SPEC_FILE = "predictor.json"
MANIFEST_FILE = "manifest.json"
TRUNCATION_SIDES = ("right", "left")
REEXPORT = (
    "re-export the run (mtl's scripts/export.py RUN --format onnx) instead of editing an export"
)

# --- text preprocessing (data.preprocess: tweet) ---------------------------------------------

_USER = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")


def normalize_tweet(text: str) -> str:
    """Users → @user, links → http, HTML entities decoded, whitespace collapsed."""
    text = _USER.sub("@user", text)
    text = _URL.sub("http", text)
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _SPACE.sub(" ", text).strip()


# --- blend and decisions ----------------------------------------------------------------------


def blend(
    fold_probs: list[np.ndarray], method: str = "mean", fold_scores: list[float] | None = None
) -> np.ndarray:
    """(F folds of (N, C)) → (N, C). `rank` answers with the mean's probabilities: ranks order a
    set of rows, they are not probabilities (mtl/run/blend.py)."""
    if not fold_probs:
        raise ValueError("nothing to blend: no fold predictions")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in fold_probs])  # (F, N, C)
    if method in ("mean", "rank"):
        return stack.mean(axis=0)
    if method == "weighted":
        if fold_scores is None or len(fold_scores) != len(fold_probs):
            raise ValueError("weighted blending needs one score per fold")
        weights = np.clip(np.asarray(fold_scores, dtype=np.float64), 1e-12, None)
        return np.tensordot(weights / weights.sum(), stack, axes=1)
    raise ValueError(f"unknown blend method '{method}'; use one of {BLEND_METHODS}")


# --- calibration (tasks.<t>.calibration; fitted by mtl/calibration.py) -------------------------

CALIBRATION_METHODS = ("none", "temperature", "vector")
# float32 probabilities, as the models and the run folder's tables hold them, resolve 1 - p to
# 2**-24 near 1: a multi-label probability is read back as a logit clipped to that resolution
# (|logit| <= 16.6); single-label logits come back from log p (exact up to a per-row constant).
PROB_FLOOR = 2.0**-24


def calibration_logits(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    """(N, C) probabilities → the logits calibration scales: logit(p) per label (multi-label),
    log p per class (single-label: softmax is blind to the constant this differs by)."""
    probs = np.asarray(probs, dtype=np.float64)
    if multilabel:
        p = np.clip(probs, PROB_FLOOR, 1.0 - PROB_FLOOR)
        return np.log(p) - np.log1p(-p)
    return np.log(np.maximum(probs, np.finfo(np.float64).tiny))


def calibrated(logits: np.ndarray, multilabel: bool, scale, bias) -> np.ndarray:
    """Probabilities of scaled logits: sigmoid(scale_c * z_c + bias_c) per label, or
    softmax(scale * z + bias) over the classes (one scale: a per-class scale would not be blind
    to log p's per-row constant, so single-label tasks take one)."""
    z = np.asarray(logits, dtype=np.float64) * np.asarray(scale, dtype=np.float64)
    z = z + np.asarray(bias, dtype=np.float64)
    if multilabel:
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration_arrays(params, width: int, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """One fold's {"scale", "bias"} as float64 arrays that fit a task of `width` outputs (one scale
    per label, or one; one bias per output; finite; scales positive), else a ValueError."""
    try:
        scale, bias = (np.asarray(params[k], np.float64).reshape(-1) for k in ("scale", "bias"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f'{params!r} is not {{"scale": [...], "bias": [...]}} ({err!r})') from None
    fits = scale.size == (width if multilabel else 1) and bias.size == width
    if not (fits and np.isfinite(scale).all() and np.isfinite(bias).all() and (scale > 0).all()):
        raise ValueError(
            f"scale {scale.tolist()} and bias {bias.tolist()} do not fit a task of {width} "
            f"outputs: {'one scale per label' if multilabel else 'one scale'} and one bias per "
            "output, all finite, every scale positive"
        )
    return scale, bias


def calibrate(probs: np.ndarray, multilabel: bool, params: dict | None) -> np.ndarray:
    """(N, C) probabilities of one fold → calibrated by that fold's {"scale", "bias"} (results.json
    "calibration"), float64; None (no calibration, or a run from before it): unchanged. The one
    function every backend applies before the blend, so they answer alike."""
    if not params:
        return np.asarray(probs)
    try:
        scale, bias = calibration_arrays(params, np.asarray(probs).shape[1], multilabel)
    except ValueError as err:
        raise ValueError(f"calibration parameters: {err}; {REEXPORT} or refit them") from None
    return calibrated(calibration_logits(probs, multilabel), multilabel, scale, bias)


def fold_calibrations(block, tasks: dict, folds: list[str]) -> dict[str, dict]:
    """predictor.json's "calibration", {task: {"method", "folds": [params per model]}} (None in
    exports from before it), checked against `tasks` ({task: (outputs, multilabel)}) and the
    models (`folds`, their names): the calibrated tasks, or a ValueError naming task and model."""
    if block is not None and not isinstance(block, dict):
        raise ValueError(f"it must be an object per task, not a {type(block).__name__}")
    out = {}
    for name, entry in (block or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        method, params = entry.get("method"), entry.get("folds")
        count = len(params) if isinstance(params, list) else type(params).__name__
        if name not in tasks:
            raise ValueError(f"task '{name}' is not among the models' tasks {list(tasks)}")
        if method not in CALIBRATION_METHODS:
            raise ValueError(
                f"task '{name}': unknown calibration method {method!r}; one of "
                f"{CALIBRATION_METHODS}"
            )
        if method == "none":
            continue
        if count != len(folds):
            raise ValueError(
                f"task '{name}': 'folds' holds {count}, not one {{scale, bias}} per model "
                f"({', '.join(folds)})"
            )
        for fold, values in zip(folds, params, strict=True):
            try:
                calibration_arrays(values, *tasks[name])
            except ValueError as err:
                raise ValueError(f"task '{name}', {fold}: {err}") from None
        out[name] = {"method": method, "folds": params}
    return out


def single_label(probs: np.ndarray, thresholds=None, per_row: bool = False) -> np.ndarray:
    """(N,) class indices of a single-label task: the argmax, or with a threshold on a two-class
    task, 1 where the second class's probability is at/over it, else 0. One number, or with
    `per_row` one per row (cross-fitted OOF scores). The one rule for labels (decide) and scores
    (mtl.model.metrics.score_arrays)."""
    probs = np.asarray(probs)
    cut = np.asarray([] if thresholds is None else thresholds, dtype=np.float64).reshape(-1)
    if cut.size == 0:
        return probs.argmax(axis=1)
    if probs.shape[1] != 2 or cut.size not in ((1, len(probs)) if per_row else (1,)):
        raise ValueError(
            f"A decision threshold applies to a two-class task as one number (got {cut.tolist()} "
            f"for {probs.shape[1]} classes)."
        )
    return (probs[:, 1] >= cut).astype(int)


def decide(probs: np.ndarray, classes: list, multilabel: bool, thresholds=None) -> list:
    """Per row: multi-label, the list of classes at/over their thresholds (default 0.5); a binary
    task with a threshold [t], the second class where its probability is at/over t, else the
    first; otherwise the argmax class."""
    probs = np.asarray(probs)
    if multilabel:
        cut = np.asarray(thresholds if thresholds is not None else 0.5)
        return [[c for c, on in zip(classes, row, strict=True) if on] for row in probs >= cut]
    return [classes[i] for i in single_label(probs, thresholds)]


def plain(value):
    """A numpy scalar (a class name read from a file) as the Python value JSON takes."""
    return value.item() if hasattr(value, "item") else value


def record(text: str, tasks: dict, probs: dict, labels: dict, i: int) -> dict:
    """Row i as `predict.py --format json` prints it and the HTTP API answers: the text, and per
    task every class's probability by name and the label (multi-label: labels).
    `tasks`: {task: (classes, multilabel)}."""
    out = {"text": text}
    for name, (classes, multilabel) in tasks.items():
        entry = {
            "probabilities": {
                str(c): float(p) for c, p in zip(classes, probs[name][i], strict=True)
            }
        }
        value = labels[name][i]
        if multilabel:
            entry["labels"] = [plain(v) for v in value]
        else:
            entry["label"] = plain(value)
        out[name] = entry
    return out


# --- ONNX Runtime -----------------------------------------------------------------------------


def providers(device: str | None) -> list[str]:
    """ONNX Runtime execution providers for cpu / cuda / auto (CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    name = "auto" if device is None else str(device).split(":")[0]
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name in ("cuda", "auto"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if name == "auto":
            return ["CPUExecutionProvider"]
        raise ValueError(
            f"Device '{device}' requested but this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu, or use cpu."
        )
    raise ValueError(f"Unknown device '{device}'; use cpu, cuda or auto.")


def session(path, chosen: list[str], threads: int | None, disabled=SLOW_FUSIONS):
    """One ONNX Runtime session with mtl's settings; `threads` 0/None: ONNX Runtime's own choice
    (or $MTL_ONNX_THREADS)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers and the like
    threads = threads or int(os.environ.get("MTL_ONNX_THREADS", 0))
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(path), options, providers=chosen, disabled_optimizers=list(disabled)
    )


def sorted_batches(lengths: list[int], size: int):
    """Row indices in batches of `size`, longest first (stable), so each batch pads little."""
    order = np.argsort([-n for n in lengths], kind="stable")
    for start in range(0, len(order), size):
        yield order[start : start + size]


def pad(rows: list, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows → input_ids, attention_mask (B, T) int64, padded on the right."""
    width = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


# --- the export folder: manifest, tokenizer ----------------------------------------------------


def model_kind(files: dict, model: str, folder) -> str:
    """fp32 or int8 from predictor.json's `files`; `auto`: int8 when the export has it."""
    kind = ("int8" if "int8" in files else "fp32") if model == "auto" else model
    if kind not in files:
        raise ValueError(
            f"The export in {folder} has no {kind} models (it has: {', '.join(files)})."
        )
    return kind


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes in 1 MiB blocks (mtl.io.file_sha256; this file imports no mtl)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_export(folder, required: list[str]) -> dict:
    """The export's manifest, once every file it lists that is here (and each of `required`, the
    files this load reads) has the sha256 recorded at export; a ValueError naming the file if not.

    The runtime's own .py files are code, not data a load reads, so they are not checked; an export
    shipped with one model kind removed still loads the other. The tokenizer is read as a folder,
    so a file there that the export did not write is refused too."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        listed = manifest["files"]
        if not isinstance(listed, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Cannot check the export in {folder}: {MANIFEST_FILE} is missing or unreadable "
            f"({type(err).__name__}: {err}); an export is only used with the manifest that "
            f"lists its files' checksums, so {REEXPORT}."
        ) from None
    extra = [
        p.relative_to(folder).as_posix()
        for p in sorted((folder / "tokenizer").rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in listed
    ]
    for name in sorted(set(required) | set(listed)) + extra:
        target = folder / name
        if name in extra or name not in listed:
            problem = f"is not among the files its {MANIFEST_FILE} lists"
        elif name.endswith(".py") or not (target.is_file() or name in required):
            continue
        elif not target.is_file():
            problem = "is missing"
        elif file_sha256(target) != (listed[name] if isinstance(listed[name], dict) else {}).get(
            "sha256"
        ):
            problem = f"does not match the sha256 in {MANIFEST_FILE} (changed since the export)"
        else:
            continue
        raise ValueError(f"{name} in the export {folder} {problem}; {REEXPORT}.")
    return manifest


def truncation_side(spec: dict, folder) -> str:
    """Where the run's tokenizer cuts texts over max_length: predictor.json records it (exports of
    mtl before it did: tokenizer_config.json's `truncation_side`, default right)."""
    side = (spec.get("tokenizer") or {}).get("truncation_side")
    config = Path(folder) / "tokenizer" / "tokenizer_config.json"
    if side is None and config.is_file():
        side = json.loads(config.read_text(encoding="utf-8")).get("truncation_side")
    side = side or "right"
    if side not in TRUNCATION_SIDES:
        raise ValueError(
            f"Unknown truncation side '{side}' in {folder}; one of {TRUNCATION_SIDES}."
        )
    return side


def load_tokenizer(folder, spec: dict):
    """(the export's fast tokenizer, truncating as the run did at its max_length, its pad id)."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    tokenizer_file = folder / "tokenizer" / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"{tokenizer_file} is missing: this file needs a fast tokenizer.")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(
        int(spec["config"]["data"]["max_length"]), direction=truncation_side(spec, folder)
    )
    special = folder / "tokenizer" / "tokenizer_config.json"
    token = None
    if special.is_file():
        token = json.loads(special.read_text(encoding="utf-8")).get("pad_token")
        token = token.get("content") if isinstance(token, dict) else token
    found = tokenizer.token_to_id(token) if token else None
    return tokenizer, 0 if found is None else int(found)
