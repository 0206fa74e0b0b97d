"""Predictions from an exported run (scripts/export.py) with ONNX Runtime instead of PyTorch.

    from mtl.inference.onnx_predict import OnnxPredictor
    p = OnnxPredictor.from_export("checkpoints/default/export")               # int8 if exported
    p = OnnxPredictor.from_export("checkpoints/default/export", model="fp32")
    p.predict(["I love this", "you idiot"])     # the same API and columns as mtl.Predictor

`OnnxPredictor` is a `Predictor` whose folds are ONNX Runtime sessions: tokenization, length-
sorted batching and padding, each fold's calibration (predictor.json "calibration"), the blend,
thresholds and label decisions are Predictor's own code,
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
from mtl.inference import fold_calibration
from mtl.inference.predictor import Predictor
from mtl.inference.runs import load_run_tokenizer, read_json

log = logging.getLogger(__name__)

SPEC_FILE = portable.SPEC_FILE


def export_folder(path: str | Path, model: str | None = None) -> Path:
    """An export folder itself, or the run folder that holds one in export/; checked before use:
    every file its manifest lists that is here has its recorded sha256 (with `model`, fp32 / int8
    / auto, that kind's models must be here too), and an export inside the run it was made from
    was made from the run's current finished folds (`stale_export`), blend and thresholds
    (`stale_decisions`) and calibration (`fold_calibration.stale`)."""
    path = Path(path)
    for candidate in (path, path / "export"):
        if (candidate / SPEC_FILE).is_file():
            required = [SPEC_FILE]
            if model is not None:
                required += read_spec(candidate)["files"][chosen_kind(candidate, model)]
            manifest = verify(candidate, required)
            run = recorded_run(candidate, manifest) if candidate == path else run_folder(path)
            problem = None
            if run is not None:
                spec = read_spec(candidate)
                results = readable_results(run)
                problem = stale_export(run, manifest) or (
                    None
                    if results is None  # nothing to compare with (Predictor.from_run says why)
                    else stale_decisions(results, run / "results.json", spec)
                    or fold_calibration.stale(results, run / "results.json", spec, manifest)
                )
            if problem is not None:
                raise PredictError(
                    f"The export in {candidate} is older than the run {run}: {problem}. "
                    f"Re-export it: python scripts/export.py {run} --format onnx"
                    + (f" --quantize {manifest['quantize']}" if manifest.get("quantize") else "")
                )
            return candidate
    raise PredictError(
        f"No ONNX export in {path} (no {SPEC_FILE} there or in {path / 'export'}). "
        f"Run: python scripts/export.py {path} --format onnx"
    )


def read_spec(folder: Path) -> dict:
    try:
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
        if not isinstance(spec.get("files"), dict) or not isinstance(spec.get("tasks"), dict):
            raise KeyError("files or tasks")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PredictError(f"Cannot read {folder / SPEC_FILE}: {first_line(err)}") from None
    return spec


def chosen_kind(folder: Path, model: str) -> str:
    """fp32 or int8 (`auto`: int8 when exported), as a clear error when the export lacks it."""
    try:
        return portable.model_kind(read_spec(folder)["files"], model, folder)
    except ValueError as err:
        raise PredictError(
            f"{err} Re-export with --quantize {model}, or pick one of those."
        ) from None


def verify(folder: Path, required: list[str]) -> dict:
    """`mtl.portable.verify_export` (the one check both runtimes run), as mtl's error."""
    try:
        return portable.verify_export(folder, required)
    except ValueError as err:
        raise PredictError(str(err)) from None


def run_folder(path: Path) -> Path | None:
    """`path` when it is a training run's folder (a folder that merely holds a copied export/ is
    not, and its export is not compared with anything)."""
    marks = ("fingerprint.json", "config.yaml", "tasks.json")
    return path if any((path / m).is_file() for m in marks) or any(path.glob("fold_*/")) else None


def recorded_run(folder: Path, manifest: dict) -> Path | None:
    """The run an export was made from, while the export sits inside it (a copy elsewhere is
    its own thing and is not compared)."""
    run = manifest.get("run")
    return folder.parent if run and folder.parent.resolve() == Path(run).resolve() else None


def readable_results(run_dir: Path) -> dict | None:
    """The run's results.json once for the staleness checks; None when there is none or it cannot
    be read (then nothing is compared, and Predictor.from_run says why)."""
    try:
        return read_json(run_dir / "results.json")
    except PredictError:
        return None


def stale_decisions(results: dict, path: Path, spec: dict) -> str | None:
    """None when an export blends and cuts as its run's `results` (read from `path`) say now, else
    what differs: `scripts/blend.py RUN cv.blend=rank` re-blends and re-tunes the thresholds of a
    run exported before, and that export would otherwise answer other labels than
    Predictor.from_run."""
    from mtl.data.tasks import TaskMeta
    from mtl.inference.runs import blend_method, label_thresholds

    try:
        metas = {name: TaskMeta(**meta) for name, meta in spec["tasks"].items()}
        blend = blend_method(results, spec["config"]["cv"]["blend"])
        cuts = label_thresholds(metas, results.get("thresholds"))
    except (ValueError, AttributeError, KeyError, TypeError, PredictError):
        return None  # nothing readable to compare with (Predictor.from_run says why)
    if blend != spec.get("blend"):
        return f"it blends its folds by '{spec.get('blend')}', {path} by '{blend}' now"
    held = spec.get("thresholds") or {}
    for name in sorted(set(cuts) | set(held)):
        now = cuts[name].tolist() if name in cuts else None
        if now != held.get(name):
            return f"its thresholds for '{name}' are {held.get(name)}, {path}'s are {now}"
    return None


def stale_export(run_dir: Path, manifest: dict) -> str | None:
    """None when the export's source checkpoints are the run's finished folds' checkpoints now,
    else what changed. Size and mtime as recorded spare reading a checkpoint; otherwise (an older
    manifest, a copied run) its sha256 decides."""
    from mtl.inference.runs import fold_checkpoint
    from mtl.io import file_sha256
    from mtl.run.cv import finished_folds

    recorded = {s.get("fold"): s for s in manifest.get("sources") or [] if isinstance(s, dict)}
    current = {
        f"fold_{k}": fold_checkpoint(run_dir, k, m) for k, m in finished_folds(run_dir).items()
    }
    if set(recorded) != set(current):
        return (
            f"it holds {', '.join(sorted(map(str, recorded))) or 'no folds'}, the run's finished "
            f"folds are now {', '.join(sorted(current)) or 'none'}"
        )
    for fold, path in current.items():
        source = recorded[fold]
        if Path(str(source.get("checkpoint"))).name != path.name:
            return (
                f"{fold} now predicts with {path.name}, the export has {source.get('checkpoint')}"
            )
        if not path.is_file():
            return f"{path} is missing"
        stat = path.stat()
        if (source.get("bytes"), source.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            continue
        if file_sha256(path) != source.get("sha256"):
            return f"{path} changed after the export (its sha256 differs from the manifest's)"
    return None


def load_runtime(folder: Path):
    """The export folder's own mtl_onnx.py as a module (the copy, not mtl.portable_model), for the
    export's self-check and the serving benchmark."""
    import importlib.util

    path = Path(folder) / "mtl_onnx.py"
    spec = importlib.util.spec_from_file_location(f"mtl_onnx_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

        folder = export_folder(folder, model)
        spec = read_spec(folder)
        model = chosen_kind(folder, model)
        paths = [folder / name for name in spec["files"][model]]
        cfg = config_from_dict(spec["config"])
        tokenizer = load_run_tokenizer(folder / "tokenizer", cfg.backbone.name)
        # the side the run cut texts on, as mtl_onnx.py reads it (portable.truncation_side)
        tokenizer.truncation_side = portable.truncation_side(spec, folder)
        # per task, one fold's params per model in files' order; absent in exports made before
        # calibration, which load as they always did
        fix = f"{portable.REEXPORT[0].upper()}{portable.REEXPORT[1:]}."
        calibration = fold_calibration.checked(
            spec.get("calibration"),
            spec["tasks"],
            spec["files"][model],
            str(folder / SPEC_FILE),
            fix,
        )
        return cls(
            [str(p) for p in paths],
            spec["tasks"],
            cfg,
            tokenizer,
            thresholds=spec.get("thresholds"),
            calibration=calibration,
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
