"""Predictions from an exported run (scripts/export.py) with ONNX Runtime instead of PyTorch.

    from mtl.inference.onnx_predict import OnnxPredictor
    p = OnnxPredictor.from_export("checkpoints/default/export")               # int8 if exported
    p = OnnxPredictor.from_export("checkpoints/default/export", model="fp32")
    p.predict(["I love this", "you idiot"])     # the same API and columns as mtl.Predictor

`OnnxPredictor` is a `Predictor` whose folds are ONNX Runtime sessions: tokenization, length-
sorted batching and padding, the blend, thresholds and label decisions are Predictor's own code,
so the two backends cannot drift apart. Only running one model on one batch differs.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mtl import portable
from mtl.errors import PredictError, first_line
from mtl.inference.predictor import Predictor
from mtl.inference.runs import load_run_tokenizer

log = logging.getLogger(__name__)

SPEC_FILE = "predictor.json"


def export_folder(path: str | Path) -> Path:
    """An export folder itself, or the run folder that holds one in export/."""
    path = Path(path)
    for candidate in (path, path / "export"):
        if (candidate / SPEC_FILE).is_file():
            return candidate
    raise PredictError(
        f"No ONNX export in {path} (no {SPEC_FILE} there or in {path / 'export'}). "
        f"Run: python scripts/export.py {path} --format onnx"
    )


def providers(device: str | None) -> list[str]:
    """ONNX Runtime execution providers for cpu / cuda / auto (CUDA when onnxruntime has it)."""
    try:
        return portable.providers(device)
    except ValueError as err:
        raise PredictError(str(err)) from None


class OnnxPredictor(Predictor):
    """Predictor over ONNX Runtime sessions, one per exported fold. Build it with `from_export`."""

    def __init__(
        self,
        *args,
        threads: int | None = None,
        model_kind: str = "fp32",
        disabled_optimizers: list[str] | None = None,
        **kwargs,
    ):
        # read by _place_models, which Predictor.__init__ calls
        self.threads = threads
        self.disabled_optimizers = (
            portable.SLOW_FUSIONS if disabled_optimizers is None else disabled_optimizers
        )
        self.model_kind = model_kind
        super().__init__(*args, **kwargs)

    @classmethod
    def from_export(
        cls,
        folder: str | Path,
        *,
        model: str = "auto",
        device: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        disabled_optimizers: list[str] | None = None,
    ) -> OnnxPredictor:
        """`folder`: an export folder or a run folder with export/. `model`: fp32, int8, or auto
        (int8 when the export has it). `threads`: ONNX Runtime intra-op threads (default: its own).
        `disabled_optimizers`: ONNX Runtime graph optimizers to skip (default:
        mtl.portable.SLOW_FUSIONS)."""
        from mtl.config import config_from_dict

        folder = export_folder(folder)
        try:
            spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
            files = spec["files"]
            tasks = spec["tasks"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PredictError(f"Cannot read {folder / SPEC_FILE}: {first_line(err)}") from None
        try:
            model = portable.model_kind(files, model, folder)
        except ValueError as err:
            raise PredictError(
                f"{err} Re-export with --quantize {model}, or pick one of those."
            ) from None
        paths = [folder / name for name in files[model]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise PredictError(f"The export in {folder} lacks {', '.join(missing)}; re-export.")
        cfg = config_from_dict(spec["config"])
        return cls(
            [str(p) for p in paths],
            tasks,
            cfg,
            load_run_tokenizer(folder / "tokenizer", cfg.backbone.name),
            thresholds=spec.get("thresholds"),
            blend_method=spec.get("blend", "mean"),
            fold_scores=spec.get("fold_scores"),
            device=device,
            batch_size=batch_size,
            sources=paths,
            threads=threads,
            model_kind=model,
            disabled_optimizers=disabled_optimizers,
        )

    # --- the backend: ONNX Runtime sessions instead of torch modules ----------------------------

    def _place_models(self, models: list, device) -> list:
        chosen = providers(device)
        self.device = "cuda" if chosen[0] == "CUDAExecutionProvider" else "cpu"
        sessions = []
        for path in models:
            try:
                sessions.append(
                    portable.session(path, chosen, self.threads, self.disabled_optimizers)
                )
            except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph types
                raise PredictError(f"Cannot load {path}: {first_line(err)}") from None
        names = [o.name for o in sessions[0].get_outputs()]
        self.output_names = [f"probs_{i}" for i in range(len(self.metas))]
        if sorted(names) != sorted(self.output_names):
            raise PredictError(
                f"{models[0]} has outputs {names}, expected {self.output_names} for tasks "
                f"{list(self.metas)}: the model and predictor.json come from different exports."
            )
        return sessions

    def _inference_context(self):
        return nullcontext()

    def _inputs(self, input_ids, attention_mask) -> dict[str, np.ndarray]:
        return {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}

    def _model_probabilities(self, model, inputs) -> dict[str, np.ndarray]:
        values = model.run(self.output_names, inputs)
        return dict(zip(self.metas, values, strict=True))
