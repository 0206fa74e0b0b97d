"""Predictions from an mtl ONNX export with nothing but numpy, onnxruntime and tokenizers.

`scripts/export.py` copies this file into the export folder as `mtl_onnx.py`, and the shared core
it runs on (mtl/portable.py) beside it as `mtl_onnx_core.py`, so the folder runs where neither mtl
nor PyTorch, Lightning or transformers is installed:

    pip install numpy onnxruntime tokenizers
    python export/mtl_onnx.py --text "I love this" --text "you idiot"       # JSON lines
    python export/mtl_onnx.py --input texts.txt --model fp32                 # one text per line

    import sys; sys.path.insert(0, "export")
    from mtl_onnx import ExportedModel
    model = ExportedModel("export")                       # int8 if exported, else fp32
    model.predict(["I love this", "you idiot"])           # per text, per task: probabilities, label(s)

The folder is checked against its manifest.json before use: a file changed since the export is
refused, naming the file. The rule for this file, as for the core: import nothing from mtl (in
an export it loads the core copied beside it), nothing beyond the standard library, numpy,
onnxruntime and tokenizers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

CORE_FILE = "mtl_onnx_core.py"  # mtl/portable.py, as an export carries it


def _load_core():
    """mtl.portable inside mtl; in an export, the copy beside this file, loaded by its path so that
    an installed mtl or another export's copy can never stand in for it."""
    if __package__ == "mtl":
        from mtl import portable

        return portable
    import importlib.util

    path = Path(__file__).resolve().with_name(CORE_FILE)
    if not path.is_file():
        raise ImportError(f"{path} is missing: copy the export folder whole, {CORE_FILE} included.")
    spec = importlib.util.spec_from_file_location(f"{__name__}_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:
    core = _load_core()
except ImportError as err:
    if __name__ != "__main__":
        raise
    print(f"error: {err}", file=sys.stderr)  # run as a script: a message, not a traceback
    sys.exit(2)


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
        self.folder = Path(folder)
        spec = json.loads((self.folder / core.SPEC_FILE).read_text(encoding="utf-8"))
        files = spec["files"]
        self.model_kind = core.model_kind(files, model, self.folder)
        self.manifest = core.verify_export(self.folder, [core.SPEC_FILE, *files[self.model_kind]])
        config = spec["config"]
        preprocess = config["data"].get("preprocess")
        if preprocess not in (None, "", "tweet"):
            raise ValueError(
                f"The run preprocesses texts with its own hook '{preprocess}', which this file "
                "cannot run; use mtl's OnnxPredictor where that hook is importable."
            )
        self.preprocess = core.normalize_tweet if preprocess == "tweet" else None
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
        # each fold's params (predictor.json "calibration"; exports from before it have none)
        try:
            self.calibration = core.fold_calibrations(
                spec.get("calibration"),
                {name: (len(classes), multi) for name, (classes, multi) in self.tasks.items()},
                list(files[self.model_kind]),
            )
        except ValueError as err:
            raise ValueError(
                f"The calibration in {self.folder / core.SPEC_FILE} does not fit its models: "
                f"{err}; {core.REEXPORT}."
            ) from None
        self.blend_method = spec.get("blend", "mean")
        self.fold_scores = spec.get("fold_scores")
        self.tokenizer, self.pad_id = core.load_tokenizer(self.folder, spec)
        chosen = core.providers(device)
        self.device = "cuda" if chosen[0] == "CUDAExecutionProvider" else "cpu"
        configured = int(config["data"]["eval_batch_size"])
        self.batch_size = int(
            batch_size
            or (min(configured, core.CPU_BATCH_SIZE) if self.device == "cpu" else configured)
        )
        self.sessions = [
            core.session(self.folder / f, chosen, threads) for f in files[self.model_kind]
        ]
        self.outputs = [f"probs_{i}" for i in range(len(self.tasks))]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts → token ids as the run made them: preprocessing, then truncation at max_length
        on the side the run's tokenizer cuts."""
        texts = as_texts(texts)  # the rule mtl's backends apply (mtl/inference/checks.py)
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
        for index in core.sorted_batches([len(x) for x in ids], self.batch_size):
            input_ids, mask = core.pad([ids[i] for i in index], self.pad_id)
            feed = {"input_ids": input_ids, "attention_mask": mask}
            for fold, probs in zip(self.sessions, out, strict=True):
                values = fold.run(self.outputs, feed)
                for name, value in zip(self.tasks, values, strict=True):
                    probs[name][index] = value
        return out

    def predict_proba(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{task: (N, C) float64}: each fold's probabilities calibrated with its params, then
        blended over the folds as the run blends them."""
        folds = self.fold_probabilities(texts)
        out = {}
        for name, (_, multilabel) in self.tasks.items():
            params = self.calibration.get(name, {}).get("folds") or [None] * len(folds)
            fold_probs = [
                core.calibrate(f[name], multilabel, p) for f, p in zip(folds, params, strict=True)
            ]
            out[name] = core.blend(fold_probs, self.blend_method, self.fold_scores)
        return out

    def labels(self, probs: dict[str, np.ndarray]) -> dict[str, list]:
        return {
            name: core.decide(probs[name], classes, multilabel, self.thresholds.get(name))
            for name, (classes, multilabel) in self.tasks.items()
        }

    def predict(self, texts: list[str]) -> list[dict]:
        """Per text: {"text", <task>: {"probabilities": {class: p}, "label" or "labels"}}."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs = self.predict_proba(texts)
        labels = self.labels(probs)
        return [core.record(t, self.tasks, probs, labels, i) for i, t in enumerate(texts)]


def read_lines(path: Path) -> list[str]:
    """The texts of an --input file, one per line; a ValueError saying what is wrong with it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(
            f"Cannot read --input {path}: {err.strerror or err}. Give a UTF-8 text file with one "
            "text per line."
        ) from None
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"--input {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line} is not "
            f"valid UTF-8. Save it as UTF-8 (e.g. iconv -f cp1252 -t utf-8 {path} > texts.txt) "
            "and pass that file."
        ) from None


def lone_surrogate(text: str) -> str | None:
    """None for Unicode text; else where it stops being Unicode. Python keeps a byte that is not
    UTF-8 on the command line as a lone surrogate (U+DC80–U+DCFF), and JSON's unpaired "\\ud800"
    escapes become one too; no tokenizer can read them (they raise deep inside it)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        origin = (
            f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8"
            if 0xDC80 <= code <= 0xDCFF
            else 'an unpaired escape such as "\\ud800"'
        )
        return f"character {err.start + 1} is U+{code:04X}, a lone surrogate ({origin})"
    return None


def _missing(value) -> bool:
    """An empty cell: None, NaN (pandas' and numpy's float NaN), pandas.NA."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ == "NAType"  # pandas.NA, without importing pandas here


def _listed(problems: list[str], limit: int = 3) -> str:
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def as_texts(texts, where=lambda i: f"text {i + 1}") -> list[str]:
    """A list of str: a lone string is one text; an empty cell (None, NaN) is "".

    Anything else is refused, naming its position (`where(i)` for 0-based `i`): a number or an
    object (JSON Lines, Parquet) is not stringified into a text the model was never trained on,
    as training refuses it too; a string that is not Unicode (a lone surrogate) cannot be
    tokenized.
    """
    if isinstance(texts, str):
        texts = [texts]
    out, wrong_type, not_unicode = [], [], []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            problem = lone_surrogate(text)
            if problem is not None:
                not_unicode.append(f"{where(i)}: {problem}")
            out.append(text)
        elif _missing(text):
            out.append("")
        else:
            wrong_type.append(f"{where(i)} is of type {type(text).__name__} ({str(text)[:40]!r})")
    if wrong_type:
        raise ValueError(
            f"{len(wrong_type)} text(s) are not strings: {_listed(wrong_type)}. Only "
            "strings are texts (numbers and objects are not turned into text, as in training): "
            "make those cells strings, or choose the right text column."
        )
    if not_unicode:
        raise ValueError(
            f"{len(not_unicode)} text(s) are not Unicode: {_listed(not_unicode)}. Give "
            "the texts as UTF-8 (on a command line, check the terminal's encoding: LANG, "
            "LC_ALL), e.g. in a UTF-8 file with --input."
        )
    return out


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
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        texts = as_texts(args.text, where=lambda i: f"--text number {i + 1}") + (
            [] if args.input is None else read_lines(args.input)
        )
        if not texts:
            parser.error("give --text or --input")
        model = ExportedModel(args.folder, args.model, args.device, args.batch_size)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for item in model.predict(texts):
        print(json.dumps(item, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
