"""Export a trained run to ONNX: every finished fold, its blend, thresholds and tokenizer, one folder.

    python scripts/export.py checkpoints/default --format onnx --quantize int8
    from mtl.inference.export import export_run; export_run("checkpoints/default", quantize="int8")

RUN/export/
  fold_<k>.onnx        per finished fold, fp32: inputs input_ids, attention_mask (B, T) int64;
                       outputs probs_<i> (B, C) float32, the probabilities of task i (softmax, or
                       per-label sigmoid for multi-label) in predictor.json's task order. Exported
                       with eager attention, then each layer's attention fused into one ONNX
                       Runtime `Attention` op (com.microsoft) where the graph matches
  fold_<k>.int8.onnx   with --quantize int8: ONNX Runtime's dynamic int8 quantization of the above
  tokenizer/           the run's tokenizer, as Predictor loads it
  predictor.json       what the blend needs: tasks and classes, each fold's calibration (per task:
                       {"method", "folds": [{"scale", "bias"} per fold, in `files` order]}, from
                       results.json; {} for a run without), blend method, fold scores (the
                       `weighted` blend's weights), thresholds, the run's config (max_length,
                       preprocessing, eval batch size)
  manifest.json        the source checkpoints (sha256, size, mtime) and every exported file
                       with sha256, versions, the parity checks the export ran on itself, and
                       with int8 its label agreement with fp32 on the run's val texts. Loaders
                       check the files against it (mtl.portable.verify_export)
  mtl_onnx.py          a copy of mtl/portable_model.py and, beside it, mtl_onnx_core.py, a copy
                       of mtl/portable.py: predict from this folder with numpy, onnxruntime and
                       tokenizers alone (no mtl, torch or transformers)

The models come from `Predictor.from_run`, so the export holds exactly the folds, calibration,
thresholds and blend the PyTorch predictor uses; `mtl.inference.onnx_predict.OnnxPredictor` reads the folder and blends
through Predictor's own code. The folder is built beside its destination and swapped in only when
every check passed (mtl/inference/export_target.py says which destinations are refused).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mtl import portable, portable_model
from mtl.errors import PredictError, first_line
from mtl.inference import int8_check
from mtl.inference.export_target import check_target, publish, staging_folder
from mtl.inference.onnx_graph import EXPORTERS, OPSET, export_onnx, fuse_attention, quantize_int8
from mtl.io import file_sha256, write_json

log = logging.getLogger(__name__)

QUANTIZE = ("int8",)
SPEC_FILE = portable.SPEC_FILE
MANIFEST_FILE = portable.MANIFEST_FILE
RUNTIME_FILE = "mtl_onnx.py"  # mtl/portable_model.py, copied
CORE_FILE = portable_model.CORE_FILE  # mtl/portable.py, copied
# texts the export runs through every backend to check parity before it is published; the last
# is longer than any max_length (512 tokens and more), its two halves opposite in tone, so a
# runtime that cut it on the wrong side would answer differently
PROBE_TEXTS = [
    "I love this, thank you so much!",
    "you idiot, shut up",
    "",
    "The movie was long, slow and boring, but the ending surprised me. " * 6,
    "ok",
    "What a wonderful, happy day :)",
    "I am scared and sad about the news.",
    "gross",
    "I love this, what a wonderful happy day. " * 80 + "You idiot, shut up, I hate you. " * 80,
]
RUNTIME_TOLERANCE = 1e-5  # mtl_onnx.py against OnnxPredictor on one model: the same sessions


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    exporter: str = "torchscript",
    tolerance: float = 1e-4,
    fuse: bool = True,
    overwrite: bool = False,
    min_int8_agreement: float = int8_check.MIN_AGREEMENT,
    force: bool = False,
) -> Path:
    """Export every finished fold of `run_dir` to `out` (default RUN/export/); returns `out`.

    `fuse=False` exports as before the fusion existed: the model's own attention (SDPA by
    default), no `Attention` op; for measuring what the fusion buys
    (`scripts/benchmark.py --serve RUN --onnx-ablation`).

    The folder is built beside `out` and swapped into place only after the fp32 models matched
    Predictor within `tolerance` (max abs probability) and the folder's own runtime matched
    OnnxPredictor on the probe texts, and, with `quantize`, the int8 models agreed with fp32 on
    at least `min_int8_agreement` of each task's label decisions on the run's val texts (or
    `force`). `out` must be new, empty or an mtl export (anything else with `overwrite`; a run
    folder never).
    """
    from mtl.inference.predictor import Predictor

    if quantize not in (None, *QUANTIZE):
        raise PredictError(f"Unknown quantization '{quantize}'; use one of {', '.join(QUANTIZE)}.")
    if exporter not in EXPORTERS:
        raise PredictError(f"Unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}.")
    if not 0.0 <= min_int8_agreement <= 1.0:
        raise PredictError(
            f"--min-int8-agreement is {min_int8_agreement}; give a share between 0 and 1 "
            f"(default {int8_check.MIN_AGREEMENT})."
        )
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    check_target(out, run_dir, overwrite)
    reference = Predictor.from_run(run_dir, device="cpu")
    staged = staging_folder(out)
    try:
        build(reference, staged, run_dir, quantize, exporter, fuse)
        manifest = self_check(reference, staged, tolerance)
        if quantize:
            manifest["int8_agreement"] = check_int8(
                reference, staged, run_dir, min_int8_agreement, force
            )
            write_json(staged / MANIFEST_FILE, manifest)
        publish(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out


def build(reference, folder: Path, run_dir: Path, quantize, exporter: str, fuse: bool) -> None:
    """The export's files in `folder`, and a manifest that lists them with their checksums."""
    from mtl.config import to_dict

    began = time.perf_counter()
    files: dict[str, list[str]] = {"fp32": []}
    if quantize:
        files[quantize] = []
    sources = []
    fused: dict[str, dict[str, int]] = {}
    for path, model in zip(reference.sources, reference.models, strict=True):
        fold = path.parent.name  # fold_<k>
        fp32 = folder / f"{fold}.onnx"
        try:
            export_onnx(model, reference.metas, fp32, exporter, eager=fuse)
            if fuse:
                fused[fold] = fuse_attention(fp32, getattr(model.encoder, "config", None))
            if quantize:
                quantize_int8(fp32, folder / f"{fold}.{quantize}.onnx")
        except Exception as err:  # the exporters raise many types; name the fold and the cause
            raise PredictError(
                f"ONNX export of {path} failed ({exporter} exporter): "
                f"{type(err).__name__}: {first_line(err)}"
            ) from None
        files["fp32"].append(fp32.name)
        if quantize:
            files[quantize].append(f"{fold}.{quantize}.onnx")
        stat = path.stat()
        sources.append(
            {"fold": fold, "checkpoint": str(path), "sha256": file_sha256(path),
             "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )  # fmt: skip
        log.info("exported %s", fold)
    reference.tokenizer.save_pretrained(str(folder / "tokenizer"))
    shutil.copyfile(portable_model.__file__, folder / RUNTIME_FILE)
    shutil.copyfile(portable.__file__, folder / CORE_FILE)
    spec = {
        "format": "onnx",
        "tasks": {name: meta.to_dict() for name, meta in reference.metas.items()},
        "outputs": {name: f"probs_{i}" for i, name in enumerate(reference.metas)},
        "blend": reference.blend_method,
        "fold_scores": reference.fold_scores,
        "thresholds": {name: cut.tolist() for name, cut in reference.thresholds.items()},
        # per task and model in `files` order: each fold's params, applied before the blend
        "calibration": reference.calibration,
        "files": files,
        # the side the tokenizer cuts texts over max_length; mtl_onnx.py cuts on the same one
        "tokenizer": {"truncation_side": getattr(reference.tokenizer, "truncation_side", "right")},
        "config": to_dict(reference.cfg),
    }
    write_json(folder / SPEC_FILE, spec)
    manifest = {
        "made_by": "mtl scripts/export.py",
        "run": str(run_dir.resolve()),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exporter": exporter,
        "opset": OPSET,
        "quantize": quantize,
        "fused_operators": fused,
        "sources": sources,
        "export_seconds": round(time.perf_counter() - began, 1),
        "versions": versions(),
        "files": {
            p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        },
    }
    write_json(folder / MANIFEST_FILE, manifest)


def self_check(reference, folder: Path, tolerance: float) -> dict:
    """The probe texts through Predictor, OnnxPredictor and the folder's own mtl_onnx.py, on every
    model kind: fp32 beyond `tolerance` of Predictor, or the runtime off OnnxPredictor, is an
    error. Returns the manifest with the results as `parity_on_probe_texts`."""
    from mtl.inference.onnx_predict import OnnxPredictor, load_runtime

    expected = reference.predict_proba(PROBE_TEXTS)
    manifest = portable.verify_export(folder, [SPEC_FILE])
    runtime = load_runtime(folder)
    report = {}
    for model in json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))["files"]:
        onnx = OnnxPredictor.from_export(folder, model=model, device="cpu")
        got = onnx.predict_proba(PROBE_TEXTS)
        diff = max(float(np.abs(got[t] - expected[t]).max()) for t in expected)
        same = [
            np.mean([a == b for a, b in zip(x, y, strict=True)])
            for x, y in zip(
                onnx.labels(got).values(), reference.labels(expected).values(), strict=True
            )
        ]
        if model == "fp32" and not diff <= tolerance:
            raise PredictError(
                f"The exported fp32 models differ from the PyTorch predictor by {diff:.2e} "
                f"(max abs probability, over {tolerance:.0e}); nothing was written."
            )
        try:
            own = runtime.ExportedModel(folder, model, device="cpu").predict_proba(PROBE_TEXTS)
        except (ValueError, KeyError, OSError) as err:
            raise PredictError(
                f"The export's own {RUNTIME_FILE} cannot load it: {first_line(err)}"
            ) from None
        own_diff = max(float(np.abs(own[t] - got[t]).max()) for t in got)
        if not own_diff <= RUNTIME_TOLERANCE:
            raise PredictError(
                f"The export's own {RUNTIME_FILE} differs from OnnxPredictor on the {model} "
                f"models by {own_diff:.2e} (max abs probability, over {RUNTIME_TOLERANCE:.0e}) "
                "on the probe texts; nothing was written."
            )
        report[model] = {
            "max_abs_prob_diff": diff,
            "label_agreement": float(np.mean(same)),
            "runtime_max_abs_prob_diff": own_diff,
        }
    manifest["parity_on_probe_texts"] = report
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def check_int8(reference, folder: Path, run_dir: Path, minimum: float, force: bool) -> dict:
    """int8 against fp32 on the run's val texts (mtl/inference/int8_check.py); logs the result,
    refuses below `minimum` unless `force`."""
    from mtl.inference.onnx_predict import OnnxPredictor

    texts, sources = int8_check.val_texts(reference.cfg, run_dir, list(reference.metas))
    if not texts:
        texts = PROBE_TEXTS
        sources = {"all": "no val file, report rows or selection rows found: the probe texts"}
    fp32, int8 = (
        OnnxPredictor.from_export(folder, model=m, device="cpu") for m in ("fp32", "int8")
    )
    agreement = int8_check.gate(int8_check.measure(fp32, int8, texts, sources, minimum), force)
    log.info(int8_check.summary(agreement))
    return agreement


def versions() -> dict:
    import onnx
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
