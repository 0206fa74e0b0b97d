"""Predictions from an mtl ONNX export with nothing but numpy, onnxruntime and tokenizers.

`scripts/export.py` copies this file into the export folder as `mtl_onnx.py`, so the folder runs
where neither mtl nor PyTorch, Lightning or transformers is installed:

    pip install numpy onnxruntime tokenizers
    python export/mtl_onnx.py --text "I love this" --text "you idiot"       # JSON lines
    python export/mtl_onnx.py --input texts.txt --model fp32                 # one text per line

    import sys; sys.path.insert(0, "export")
    from mtl_onnx import ExportedModel
    model = ExportedModel("export")                       # int8 if exported, else fp32
    model.predict(["I love this", "you idiot"])           # per text, per task: probabilities, label(s)

mtl uses the same functions (the tweet preprocessing, the blend, label decisions, the records of
`predict.py --format json`, the ONNX Runtime session settings), so the folder answers exactly as
`OnnxPredictor` does; tests/inference/test_portable.py runs this file with torch, transformers and
mtl unimportable and compares. Hence the rule for this file: import nothing from mtl, and nothing
beyond the standard library, numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
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


# --- the exported model -----------------------------------------------------------------------


def model_kind(files: dict, model: str, folder) -> str:
    """fp32 or int8 from predictor.json's `files`; `auto`: int8 when the export has it."""
    kind = ("int8" if "int8" in files else "fp32") if model == "auto" else model
    if kind not in files:
        raise ValueError(
            f"The export in {folder} has no {kind} models (it has: {', '.join(files)})."
        )
    return kind


class ExportedModel:
    """An export folder (predictor.json, fold_<k>[.int8].onnx, tokenizer/) ready to predict."""

    def __init__(
        self,
        folder: str | Path,
        model: str = "auto",
        device: str | None = "cpu",
        batch_size: int | None = None,
        threads: int | None = None,
    ):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        spec = json.loads((self.folder / "predictor.json").read_text(encoding="utf-8"))
        files = spec["files"]
        self.model_kind = model_kind(files, model, self.folder)
        config = spec["config"]
        preprocess = config["data"].get("preprocess")
        if preprocess not in (None, "", "tweet"):
            raise ValueError(
                f"The run preprocesses texts with its own hook '{preprocess}', which this file "
                "cannot run; use mtl's OnnxPredictor where that hook is importable."
            )
        self.preprocess = normalize_tweet if preprocess == "tweet" else None
        self.tasks = {
            name: (list(meta["classes"]), meta["type"] == "multilabel")
            for name, meta in spec["tasks"].items()
        }
        self.thresholds = {
            name: np.asarray(cut, dtype=np.float64)
            for name, cut in (spec.get("thresholds") or {}).items()
        }
        for name, meta in spec["tasks"].items():
            if name not in self.thresholds and (self.tasks[name][1] or meta.get("threshold")):
                self.thresholds[name] = np.asarray(meta.get("threshold") or 0.5, dtype=np.float64)
        self.blend_method = spec.get("blend", "mean")
        self.fold_scores = spec.get("fold_scores")
        tokenizer_file = self.folder / "tokenizer" / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{tokenizer_file} is missing: this file needs a fast tokenizer.")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(config["data"]["max_length"]))
        self.pad_id = self._pad_id()
        chosen = providers(device)
        self.device = "cuda" if chosen[0] == "CUDAExecutionProvider" else "cpu"
        configured = int(config["data"]["eval_batch_size"])
        self.batch_size = int(
            batch_size or (min(configured, CPU_BATCH_SIZE) if self.device == "cpu" else configured)
        )
        self.sessions = [session(self.folder / f, chosen, threads) for f in files[self.model_kind]]
        self.outputs = [f"probs_{i}" for i in range(len(self.tasks))]

    def _pad_id(self) -> int:
        special = self.folder / "tokenizer" / "tokenizer_config.json"
        token = None
        if special.is_file():
            token = json.loads(special.read_text(encoding="utf-8")).get("pad_token")
            token = token.get("content") if isinstance(token, dict) else token
        found = self.tokenizer.token_to_id(token) if token else None
        return 0 if found is None else int(found)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts → token ids as the run made them: preprocessing, then truncation at max_length."""
        if isinstance(texts, str):
            texts = [texts]
        # as mtl.inference.tables.as_texts: None and NaN (an empty cell) are empty texts
        texts = ["" if t is None or (isinstance(t, float) and t != t) else str(t) for t in texts]
        if self.preprocess is not None:
            texts = [self.preprocess(t) for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def fold_probabilities(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """Per fold, {task: (N, C) float32 probabilities} in the order of `texts`."""
        ids = self.encode(texts)
        out = [
            {name: np.zeros((len(ids), len(classes)), np.float32) for name, (classes, _) in self.tasks.items()}
            for _ in self.sessions
        ]  # fmt: skip
        for index in sorted_batches([len(x) for x in ids], self.batch_size):
            input_ids, mask = pad([ids[i] for i in index], self.pad_id)
            feed = {"input_ids": input_ids, "attention_mask": mask}
            for fold, probs in zip(self.sessions, out, strict=True):
                values = fold.run(self.outputs, feed)
                for name, value in zip(self.tasks, values, strict=True):
                    probs[name][index] = value
        return out

    def predict_proba(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{task: (N, C) float64} blended over the folds as the run blends them."""
        folds = self.fold_probabilities(texts)
        return {
            name: blend([f[name] for f in folds], self.blend_method, self.fold_scores)
            for name in self.tasks
        }

    def labels(self, probs: dict[str, np.ndarray]) -> dict[str, list]:
        return {
            name: decide(probs[name], classes, multilabel, self.thresholds.get(name))
            for name, (classes, multilabel) in self.tasks.items()
        }

    def predict(self, texts: list[str]) -> list[dict]:
        """Per text: {"text", <task>: {"probabilities": {class: p}, "label" or "labels"}}."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs = self.predict_proba(texts)
        labels = self.labels(probs)
        return [record(t, self.tasks, probs, labels, i) for i, t in enumerate(texts)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Predict with an mtl ONNX export; prints one JSON record per text."
    )
    parser.add_argument(
        "folder", nargs="?", default=str(Path(__file__).resolve().parent), help="the export folder"
    )
    parser.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    parser.add_argument("--input", type=Path, help="a UTF-8 file, one text per line")
    parser.add_argument("--model", choices=("auto", "fp32", "int8"), default="auto")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    texts = list(args.text)
    if args.input is not None:
        texts += args.input.read_text(encoding="utf-8").splitlines()
    if not texts:
        parser.error("give --text or --input")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        model = ExportedModel(args.folder, args.model, args.device, args.batch_size)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for item in model.predict(texts):
        print(json.dumps(item, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
