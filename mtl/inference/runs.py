"""A trained run's parts for a Predictor: the finished folds' checkpoints rebuilt as models, the
stored config, the saved tokenizer, results.json (blend method, thresholds, calibration per fold),
and the device they run on. `Predictor.from_run` and `Predictor.from_checkpoint` (mtl/inference/predictor.py) call these."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mtl.errors import CheckpointError, ConfigError, PredictError, first_line
from mtl.inference import fold_calibration
from mtl.inference.checkpoint import build_model, load_checkpoint
from mtl.run.cv import finished_folds

log = logging.getLogger(__name__)

PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def load_run_tokenizer(folder: Path | None, backbone_name: str):
    """The run folder's saved tokenizer, else the backbone's own."""
    if folder is not None and folder.is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        except Exception as err:  # OSError, ValueError, the tokenizers library's own errors
            raise PredictError(
                f"Cannot load the tokenizer in {folder}: {first_line(err)}"
            ) from None
    from mtl.backbone import load_tokenizer

    return load_tokenizer(backbone_name)


def read_json(path: Path) -> dict:
    """A run file that must hold a JSON object; PredictError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PredictError(f"Cannot read {path}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise PredictError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _run_results(run_dir: Path | None) -> dict:
    path = None if run_dir is None else run_dir / "results.json"
    return read_json(path) if path is not None and path.is_file() else {}


def blend_method(results: dict, config_blend: str) -> str:
    """The blend a run predicts with: the one its results.json records (`scripts/blend.py` may
    have re-blended it since training), else its config's `cv.blend`."""
    return results.get("blend") or config_blend


def fold_checkpoint(run_dir: Path, k: int, metrics: dict) -> Path:
    """The checkpoint finished fold k predicts with (and exports): its best, else last.ckpt."""
    folder = run_dir / f"fold_{k}"
    path = folder / str(metrics.get("best_checkpoint") or "best.ckpt")
    if not path.is_file() and (folder / "last.ckpt").is_file():
        path = folder / "last.ckpt"
    return path


def predictor_from_run(cls, run_dir: str | Path, blend: str | None, **options):
    """`cls` (a Predictor class) over every finished fold of a run folder: `Predictor.from_run`.
    `options` (device, batch_size, precision) go to `cls` as they are."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(
            f"Run folder not found: {run_dir}. Pass checkpoints/<run.name> of a trained run."
        )
    folds = finished_folds(run_dir)
    if not folds:
        started = sorted(p.name for p in run_dir.glob("fold_*") if p.is_dir())
        raise PredictError(
            f"Run folder {run_dir} has no finished fold (no fold_<k>/metrics.json"
            + (f"; started but unfinished: {', '.join(started)}" if started else "")
            + "). Finish training (re-run scripts/train.py resumes it), or pass one "
            "checkpoint with --checkpoint."
        )
    models, metas, configs, paths, scores = [], None, None, [], []
    for k, metrics in folds.items():
        path = fold_checkpoint(run_dir, k, metrics)
        model, fold_metas, config = build_model(load_checkpoint(path), path)
        if metas is None:
            metas, configs = fold_metas, config
        elif _task_signature(fold_metas) != _task_signature(metas):
            raise CheckpointError(
                f"Checkpoint {path} has other tasks or classes than fold "
                f"{next(iter(folds))}'s; a run folder's folds must come from one config."
            )
        models.append(model)
        paths.append(path)
        scores.append(float(metrics.get("metrics", {}).get("val/score", 0.0)))
        log.info("fold %d: %s", k, path)
    cfg = _config(configs, paths[0])
    results = _run_results(run_dir)
    method = blend or blend_method(results, cfg.cv.blend)
    return cls(
        models,
        metas,
        cfg,
        load_run_tokenizer(run_dir / "tokenizer", cfg.backbone.name),
        thresholds=results.get("thresholds"),
        calibration=fold_calibration.from_results(
            results, run_dir / "results.json", list(folds), metas
        ),
        blend_method=method,
        fold_scores=scores,
        sources=paths,
        **options,
    )


def predictor_from_checkpoint(cls, path: str | Path, run_dir: str | Path | None, **options):
    """`cls` (a Predictor class) over one checkpoint: `Predictor.from_checkpoint`.
    `options` (device, batch_size, precision) go to `cls` as they are. Calibration: the fold's
    own (`fold_calibration.for_checkpoint`)."""
    path = Path(path)
    model, metas, config = build_model(load_checkpoint(path), path)
    cfg = _config(config, path)
    run_dir = Path(run_dir) if run_dir is not None else path.resolve().parent.parent
    results = _run_results(run_dir)
    return cls(
        [model],
        metas,
        cfg,
        load_run_tokenizer(run_dir / "tokenizer", cfg.backbone.name),
        thresholds=results.get("thresholds"),
        calibration=fold_calibration.for_checkpoint(results, run_dir / "results.json", path, metas),
        blend_method="mean",
        sources=[path],
        **options,
    )


def label_thresholds(metas: dict, thresholds: dict | None) -> dict:
    """{multi-label task: (C,) float64 thresholds}: the run's tuned ones (results.json) where given,
    else the checkpoint's, else 0.5; one number stands for every label. A binary task appears
    with its one threshold only when it has one (else its labels are the argmax)."""
    out: dict[str, np.ndarray] = {}
    for name, meta in metas.items():
        if meta.type == "binary":
            cut = (thresholds or {}).get(name) or meta.threshold
            if cut:
                cut = [float(c) for c in (cut if isinstance(cut, list | tuple) else [cut])]
                if len(cut) != 1:
                    raise PredictError(f"Task '{name}' is binary: one threshold, got {cut}.")
                out[name] = np.asarray(cut, dtype=np.float64)
            continue
        if not meta.multilabel:
            continue
        cut = (thresholds or {}).get(name) or meta.threshold or [0.5] * meta.num_outputs
        cut = [float(c) for c in (cut if isinstance(cut, list | tuple) else [cut])]
        if len(cut) == 1:
            cut = cut * meta.num_outputs
        if len(cut) != meta.num_outputs:
            raise PredictError(
                f"Task '{name}' needs {meta.num_outputs} thresholds (one per label "
                f"{list(meta.classes)}), got {cut}."
            )
        out[name] = np.asarray(cut, dtype=np.float64)
    return out


def _config(config: dict, path: Path):
    from mtl.config import config_from_dict

    try:
        return config_from_dict(config)
    except ConfigError as err:
        raise CheckpointError(
            f"Checkpoint {path} holds a config that no longer validates: {err}"
        ) from None


def _task_signature(metas: dict) -> list:
    return [(n, m["type"], [str(c) for c in m["classes"]]) for n, m in metas.items()]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None / "auto": CUDA when available, else CPU. A CUDA request without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise PredictError(f"Unknown device '{device}'; use cpu, cuda or cuda:<index>.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"Device '{device}' requested but no CUDA GPU is available; use cpu.")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise PredictError(
            f"Device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) found."
        )
    return resolved
