"""Predictions from a trained run folder (all finished folds, blended) or from one checkpoint.

    from mtl import Predictor
    p = Predictor.from_run("checkpoints/default")          # every finished fold, blended
    p = Predictor.from_checkpoint("checkpoints/default/fold_0/best.ckpt")
    probs = p.predict_proba(["I love this", "you idiot"])  # {task: (N, C) float64 array}
    frame = p.predict(["I love this", "you idiot"])        # DataFrame: text, <task>_<class>, <task>_label
    p.predict_file("texts.csv", "preds.csv")               # streamed in chunks, written atomically

    python scripts/predict.py checkpoints/default --text "I love this" --text "you idiot"
    python scripts/predict.py checkpoints/default --input texts.csv --output preds.csv

Texts go through exactly what the run's own predictions went through: the run's preprocessing
(`data.preprocess`), its saved tokenizer with truncation at `data.max_length`, the best
checkpoint of every finished fold in eval mode, each fold's probabilities calibrated with its
own params (`results.json` "calibration" when the run has it: inference/fold_calibration.py),
and `mtl.run.blend.blend` with the run's method (`results.json` "blend", else `cv.blend`) and
thresholds (`results.json` "thresholds", else the checkpoint's). Rows are sorted by length and
padded per batch, so the batch size changes speed, not results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtl import portable
from mtl.errors import PredictError
from mtl.inference import fold_calibration
from mtl.inference.checks import (
    NAN_MODEL,
    as_texts,
    empty_positions,
    refuse_non_finite,
    refuse_overwriting_input,
    warn_empty_texts,
)
from mtl.inference.runs import (
    PRECISIONS,
    label_thresholds,
    predictor_from_checkpoint,
    predictor_from_run,
    resolve_device,
)
from mtl.inference.tables import DEFAULT_CHUNK_SIZE, TableSource, predict_table
from mtl.run.blend import BLEND_METHODS, blend

# On a CPU, length-sorted batches of 16 texts ran 1.7× (PyTorch) to 2.4× (ONNX int8) faster than
# 128 (less padding per batch, activations that stay in cache): docs/performance.md, "Batch size
# for prediction". The constant lives in mtl/portable.py, which ONNX exports carry.
CPU_BATCH_SIZE = portable.CPU_BATCH_SIZE


def default_batch_size(cfg, device) -> int:
    """data.eval_batch_size, capped at CPU_BATCH_SIZE when predicting on a CPU."""
    configured = int(cfg.data.eval_batch_size)
    on_cpu = str(device).split(":")[0] == "cpu"
    return min(configured, CPU_BATCH_SIZE) if on_cpu else configured


# --- the predictor ------------------------------------------------------------------------------


class Predictor:
    """Per-task probabilities and labels for raw texts, from one or several (blended) models.

    Build it with `Predictor.from_run(run_dir)` or `Predictor.from_checkpoint(path)`.
    Single-label tasks get softmax probabilities, multi-label tasks per-label sigmoids; the
    `rank` blend gives the mean blend's probabilities (ranks only serve rank metrics over a
    whole file, see mtl/run/blend.py), so a text gets the same label alone or in a batch.
    Non-finite probabilities are never returned: `NonFiniteError` names the model and texts.
    """

    def __init__(
        self,
        models: list[torch.nn.Module],
        metas: dict,
        cfg,
        tokenizer,
        *,
        thresholds: dict[str, list[float]] | None = None,
        calibration: dict[str, dict] | None = None,
        blend_method: str = "mean",
        fold_scores: list[float] | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        precision: str = "32-true",
        sources: list[Path] | None = None,
    ):
        from mtl.data.tasks import TaskMeta
        from mtl.data.tokenize import preprocessor

        if not models:
            raise PredictError("A Predictor needs at least one model.")
        if blend_method not in BLEND_METHODS:
            raise PredictError(
                f"Unknown blend method '{blend_method}'; use one of {', '.join(BLEND_METHODS)}."
            )
        if blend_method == "weighted" and (fold_scores is None or len(fold_scores) != len(models)):
            raise PredictError("The 'weighted' blend needs one validation score per model.")
        if precision not in PRECISIONS:
            raise PredictError(
                f"Unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}."
            )
        self.metas: dict[str, TaskMeta] = {
            name: meta if isinstance(meta, TaskMeta) else TaskMeta(**meta)
            for name, meta in metas.items()
        }
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.blend_method = blend_method
        self.fold_scores = None if fold_scores is None else [float(s) for s in fold_scores]
        if batch_size is not None and int(batch_size) < 1:
            raise PredictError(f"The batch size must be a positive integer, got {batch_size}.")
        self.max_length = int(cfg.data.max_length)
        self.precision = precision
        self.sources = list(sources or [])
        self.preprocess = preprocessor(cfg.data.preprocess)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.thresholds = label_thresholds(self.metas, thresholds)
        self.calibration = fold_calibration.given(calibration, self.metas, len(models))
        self.models = self._place_models(models, device)
        self.batch_size = (
            default_batch_size(cfg, self.device) if batch_size is None else int(batch_size)
        )

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        blend: str | None = None,
        precision: str = "32-true",
    ) -> Predictor:
        """Every finished fold of a run folder (fold_<k>/ with metrics.json), blended like the
        run's test predictions. `blend` overrides the run's method (mean | rank | weighted)."""
        return predictor_from_run(
            cls, run_dir, device=device, batch_size=batch_size, blend=blend, precision=precision
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        run_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        precision: str = "32-true",
    ) -> Predictor:
        """One checkpoint. The tokenizer comes from the run folder's tokenizer/ (`run_dir`,
        default: the folder above the fold folder, path.parent.parent), else from the backbone
        named in the checkpoint's config; thresholds from that run folder's results.json when it
        has them, else from the checkpoint; calibration: its fold_<k>/'s (fold_calibration.py)."""
        return predictor_from_checkpoint(
            cls, path, run_dir=run_dir, device=device, batch_size=batch_size, precision=precision
        )

    # --- what it predicts -----------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        return list(self.metas)

    @property
    def classes(self) -> dict[str, list]:
        return {name: list(meta.classes) for name, meta in self.metas.items()}

    def prob_columns(self, task: str) -> list[str]:
        return [f"{task}_{c}" for c in self.metas[task].classes]

    def output_columns(self) -> list[str]:
        """The prediction columns of `predict` and `predict_file`, in order."""
        return [c for t in self.metas for c in self.prob_columns(t) + [f"{t}_label"]]

    # --- prediction -----------------------------------------------------------------------------

    def encode(self, texts: Iterable) -> list[np.ndarray]:
        """Raw texts → token ids exactly as training made them: preprocess, then truncate."""
        from mtl.data.tokenize import encode_texts

        return encode_texts(
            [self.preprocess(t) for t in as_texts(texts)], self.tokenizer, self.max_length
        )

    def fold_probabilities(
        self,
        texts: Iterable,
        batch_size: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Per model (fold), {task: (N, C) float32 probabilities}, uncalibrated, in text order.

        Batches of length-sorted rows, each padded to its own longest row; eval mode, no grad.
        `progress(n)` is called after every batch with the number of rows it held.
        """
        from mtl.data.sampling import Collator

        ids = self.encode(texts)
        n = len(ids)
        size = int(self.batch_size if batch_size is None else batch_size)
        if size < 1:
            raise PredictError(f"The batch size must be a positive integer, got {batch_size}.")
        out = [
            {
                name: np.zeros((n, meta.num_outputs), dtype=np.float32)
                for name, meta in self.metas.items()
            }
            for _ in self.models
        ]
        collate = Collator(self.pad_id, {})
        with self._inference_context():
            # longest first: an out-of-memory error shows at once
            for index in portable.sorted_batches([len(x) for x in ids], size):
                batch = collate([(0, ids[i], None, int(i)) for i in index])
                inputs = self._inputs(batch["input_ids"], batch["attention_mask"])
                for k, (model, probs) in enumerate(zip(self.models, out, strict=True)):
                    for name, values in self._model_probabilities(model, inputs).items():
                        what = f"{self._model_name(k)}, task '{name}',"
                        refuse_non_finite(values, what, NAN_MODEL, index)
                        probs[name][index] = values
                if progress is not None:
                    progress(len(index))
        return out

    def _model_name(self, k: int) -> str:
        source = f" ({self.sources[k]})" if k < len(self.sources) else ""
        return f"Model {k + 1} of {len(self.models)}{source}"

    # --- the backend: PyTorch here; mtl.inference.onnx_predict.OnnxPredictor overrides these four --------

    def _place_models(self, models: list, device) -> list:
        """The models on `device` in eval mode; sets `self.device`."""
        self.device = resolve_device(device)
        return [model.to(self.device).eval() for model in models]

    def _inference_context(self):
        dtype = PRECISIONS[self.precision]
        autocast = (
            torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        )
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast)
        return stack

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """One padded batch (B, T) as the models take it."""
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _model_probabilities(self, model, inputs) -> dict[str, np.ndarray]:
        """{task: (B, C) float32 probabilities} of one model on one batch."""
        logits = model(*inputs)
        return {
            name: meta.probabilities(logits[name]).cpu().numpy()
            for name, meta in self.metas.items()
        }

    def blend(self, fold_probs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-model probabilities → {task: (N, C) float64}: each model's calibrated with its
        params (`calibration`), then blended with the run's method."""
        fold_probs = fold_calibration.calibrate_folds(fold_probs, self.calibration, self.metas)
        out = {}
        for name in self.metas:
            out[name] = blend([p[name] for p in fold_probs], self.blend_method, self.fold_scores)
            what = f"The {self.blend_method} blend, task '{name}',"
            why = f"the folds' scores, its weights, are {self.fold_scores}: retrain the folds."
            refuse_non_finite(out[name], what, why)
        return out

    def predict_proba(
        self, texts: Iterable, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """{task: (N, C) float64}: blended over the models; columns in `classes[task]` order."""
        texts = as_texts(texts)
        warn_empty_texts(empty_positions(texts), len(texts), "given")
        return self.blend(self.fold_probabilities(texts, batch_size))

    def labels(self, probs: dict[str, np.ndarray]) -> dict[str, list]:
        """{task: per text the argmax class, or for multi-label the list of classes at/over threshold}."""
        return {
            name: meta.decide(np.asarray(probs[name]), self.thresholds.get(name))
            for name, meta in self.metas.items()
        }

    def frame(self, probs: dict[str, np.ndarray]) -> pd.DataFrame:
        """The prediction columns for blended probabilities: <task>_<class>..., <task>_label."""
        columns: dict[str, object] = {}
        for name, meta in self.metas.items():
            for j, column in enumerate(self.prob_columns(name)):
                columns[column] = probs[name][:, j]
            columns[f"{name}_label"] = meta.label_column(probs[name], self.thresholds.get(name))
        return pd.DataFrame(columns)

    def predict(self, texts: Iterable, batch_size: int | None = None) -> pd.DataFrame:
        """One row per text: `text`, then per task the `<task>_<class>` probabilities (class
        names as str) and `<task>_label`: the argmax class, or for multi-label tasks the labels
        at or over their threshold joined with "|" ("" if none)."""
        texts = as_texts(texts)
        frame = self.frame(self.predict_proba(texts, batch_size))
        frame.insert(0, "text", texts)
        return frame

    def predict_file(
        self,
        input_path: str | Path,
        output_path: str | Path,
        text_column: str = "text",
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        batch_size: int | None = None,
        progress: bool | None = None,
        prefix: str = "",
    ) -> int:
        """Predict every row of a CSV / TSV / Parquet / JSON Lines file; returns the row count.

        The output (format from its extension) keeps the input's columns and adds the
        prediction columns, named `prefix` + `<task>_<class>` / `<task>_label`; an input column
        of such a name is refused, never replaced. Both files are streamed `chunk_size` rows at
        a time; the output appears only when complete (temp file + rename).
        `progress`: a tqdm bar (None: only when stderr is a terminal).
        """
        refuse_overwriting_input(input_path, output_path)
        source = TableSource(input_path, text_column, chunk_size)
        return predict_table(self, source, Path(output_path), batch_size, progress, prefix)
