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
  predictor.json       what the blend needs: tasks and classes, blend method, fold scores (the
                       `weighted` blend's weights), multi-label thresholds, the run's config
                       (max_length, preprocessing, eval batch size)
  manifest.json        the source checkpoints and every exported file with sha256, versions,
                       and the parity check the export ran on itself
  mtl_onnx.py          a copy of mtl/portable.py: predicts from this folder with numpy,
                       onnxruntime and tokenizers alone (no mtl, torch or transformers)

The models come from `Predictor.from_run`, so the export holds exactly the folds, thresholds and
blend the PyTorch predictor uses; `mtl.inference.onnx_predict.OnnxPredictor` reads the folder and blends
through Predictor's own code.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mtl import portable
from mtl.errors import PredictError, first_line
from mtl.io import file_sha256, write_json

log = logging.getLogger(__name__)

OPSET = 18  # LayerNormalization is one op; ONNX Runtime runs it on CPU and CUDA
EXPORTERS = ("torchscript", "dynamo")
QUANTIZE = ("int8",)
SPEC_FILE = "predictor.json"
MANIFEST_FILE = "manifest.json"
RUNTIME_FILE = "mtl_onnx.py"  # mtl/portable.py, copied
# texts the export runs through both backends to check parity before it is published
PROBE_TEXTS = [
    "I love this, thank you so much!",
    "you idiot, shut up",
    "",
    "The movie was long, slow and boring, but the ending surprised me. " * 6,
    "ok",
    "What a wonderful, happy day :)",
    "I am scared and sad about the news.",
    "gross",
]


class Probabilities(torch.nn.Module):
    """A MultiTaskModel whose outputs are the tasks' probabilities, a tuple in task order."""

    def __init__(self, model: torch.nn.Module, metas: dict):
        super().__init__()
        self.model = model
        self.metas = metas

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        logits = self.model(input_ids, attention_mask)
        return tuple(meta.probabilities(logits[name]) for name, meta in self.metas.items())


@contextmanager
def eager_attention(model: torch.nn.Module, enabled: bool = True):
    """Hugging Face encoders inside `model` use eager attention while the block runs.

    SDPA traces into a MatMul/Softmax graph with NaN guards (IsNaN, Where) that ONNX Runtime cannot
    fuse; eager attention traces into the pattern its transformer optimizer fuses into `Attention`.
    The two compute the same thing (export's parity check holds both to the PyTorch predictor).
    """
    from transformers import PreTrainedModel

    encoders = [m for m in model.modules() if isinstance(m, PreTrainedModel)] if enabled else []
    # no public getter; transformers' attention-interface docs read config._attn_implementation
    before = [m.config._attn_implementation for m in encoders]
    for m in encoders:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, name in zip(encoders, before, strict=True):
            m.set_attn_implementation(name)


def export_onnx(
    model: torch.nn.Module, metas: dict, path: Path, exporter: str, eager: bool = True
) -> None:
    """One fold's network → `path` (fp32, dynamic batch and sequence axes). `eager`: trace with
    eager attention (what fuse_attention needs); else with the model's own (SDPA by default)."""
    wrapper = Probabilities(model.cpu().eval(), metas).eval()
    ids = torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]], dtype=torch.long)  # (B=2, T=4), one padded
    mask = (ids != 0).long()
    names = dict(
        input_names=["input_ids", "attention_mask"],
        output_names=[f"probs_{i}" for i in range(len(metas))],
        opset_version=OPSET,
    )
    with warnings.catch_warnings(), torch.no_grad(), eager_attention(model, eager):
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
            axes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
            torch.onnx.export(
                wrapper, (ids, mask), str(path), dynamo=True, dynamic_shapes=axes,
                external_data=False, **names,
            )  # fmt: skip
        else:
            axes = {n: {0: "batch", 1: "sequence"} for n in names["input_names"]}
            axes.update({n: {0: "batch"} for n in names["output_names"]})
            torch.onnx.export(
                wrapper, (ids, mask), str(path), dynamo=False, dynamic_axes=axes, **names
            )


def fuse_attention(path: Path, encoder_config) -> dict[str, int]:
    """Rewrite `path` with each attention block fused into one `Attention` op; returns the counts.

    ONNX Runtime's transformer optimizer, with every fusion but attention turned off: its
    SkipLayerNormalization, the fusion it would add next, is slower on a CPU than the ops it
    replaces (mtl.portable.SLOW_FUSIONS, which OnnxPredictor and mtl_onnx.py skip). The mask stays a
    (B, T) 0/1 tensor, so any padding side works. A graph the optimizer does not recognise is left
    as it is (counts of 0); a wrong fusion cannot pass the parity check that follows.
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name in ("gelu", "bias_gelu", "layer_norm", "skip_layer_norm", "bias_skip_layer_norm",
                 "embed_layer_norm", "rotary_embeddings", "qordered_matmul"):  # fmt: skip
        setattr(options, f"enable_{name}", False)
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    logging.disable(logging.INFO)  # the optimizer logs every fusion it tries at INFO
    try:
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(getattr(encoder_config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(encoder_config, "hidden_size", 0) or 0),
            opt_level=0,  # only the Python fusions; ONNX Runtime adds its own at session start
            optimization_options=options,
        )
    finally:
        logging.disable(logging.NOTSET)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if fused.get("Attention"):
        optimized.save_model_to_file(str(path))
    return {"Attention": fused.get("Attention", 0)}


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # its "consider pre-processing" warning
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # shape inference cannot type the outputs of com.microsoft ops (the fused Attention)
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    exporter: str = "torchscript",
    tolerance: float = 1e-4,
    fuse: bool = True,
) -> Path:
    """Export every finished fold of `run_dir` to `out` (default RUN/export/); returns `out`.

    `fuse=False` exports as before the fusion existed: the model's own attention (SDPA by
    default), no `Attention` op; for measuring what the fusion buys
    (`scripts/benchmark.py --serve RUN --onnx-ablation`).

    The folder is built beside `out` and renamed into place only after the fp32 models have
    matched Predictor within `tolerance` (max abs probability) on a few probe texts.
    """
    from mtl.config import to_dict
    from mtl.inference.predictor import Predictor

    if quantize not in (None, *QUANTIZE):
        raise PredictError(f"Unknown quantization '{quantize}'; use one of {', '.join(QUANTIZE)}.")
    if exporter not in EXPORTERS:
        raise PredictError(f"Unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}.")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    reference = Predictor.from_run(run_dir, device="cpu")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    began = time.perf_counter()
    files: dict[str, list[str]] = {"fp32": []}
    if quantize:
        files[quantize] = []
    sources = []
    fused: dict[str, dict[str, int]] = {}
    for path, model in zip(reference.sources, reference.models, strict=True):
        fold = path.parent.name  # fold_<k>
        fp32 = tmp / f"{fold}.onnx"
        try:
            export_onnx(model, reference.metas, fp32, exporter, eager=fuse)
            if fuse:
                fused[fold] = fuse_attention(fp32, getattr(model.encoder, "config", None))
            if quantize:
                quantize_int8(fp32, tmp / f"{fold}.{quantize}.onnx")
        except Exception as err:  # the exporters raise many types; name the fold and the cause
            shutil.rmtree(tmp, ignore_errors=True)
            raise PredictError(
                f"ONNX export of {path} failed ({exporter} exporter): "
                f"{type(err).__name__}: {first_line(err)}"
            ) from None
        files["fp32"].append(fp32.name)
        if quantize:
            files[quantize].append(f"{fold}.{quantize}.onnx")
        sources.append({"fold": fold, "checkpoint": str(path), "sha256": file_sha256(path)})
        log.info("exported %s", fold)
    reference.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    shutil.copyfile(portable.__file__, tmp / RUNTIME_FILE)
    spec = {
        "format": "onnx",
        "tasks": {name: meta.to_dict() for name, meta in reference.metas.items()},
        "outputs": {name: f"probs_{i}" for i, name in enumerate(reference.metas)},
        "blend": reference.blend_method,
        "fold_scores": reference.fold_scores,
        "thresholds": {name: cut.tolist() for name, cut in reference.thresholds.items()},
        "files": files,
        "config": to_dict(reference.cfg),
    }
    write_json(tmp / SPEC_FILE, spec)
    parity = check_parity(reference, tmp, files, tolerance)
    manifest = {
        "run": str(run_dir.resolve()),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exporter": exporter,
        "opset": OPSET,
        "quantize": quantize,
        "fused_operators": fused,
        "sources": sources,
        "parity_on_probe_texts": parity,
        "export_seconds": round(time.perf_counter() - began, 1),
        "versions": versions(),
        "files": {
            str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        },
    }
    write_json(tmp / MANIFEST_FILE, manifest)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def check_parity(reference, folder: Path, files: dict, tolerance: float) -> dict:
    """Probe texts through Predictor and the exported models; fp32 beyond `tolerance` is an error."""
    from mtl.inference.onnx_predict import OnnxPredictor

    expected = reference.predict_proba(PROBE_TEXTS)
    report = {}
    for model in files:
        onnx = OnnxPredictor.from_export(folder, model=model, device="cpu")
        got = onnx.predict_proba(PROBE_TEXTS)
        diff = max(float(np.abs(got[t] - expected[t]).max()) for t in expected)
        same = [
            np.mean([a == b for a, b in zip(x, y, strict=True)])
            for x, y in zip(
                onnx.labels(got).values(), reference.labels(expected).values(), strict=True
            )
        ]
        report[model] = {"max_abs_prob_diff": diff, "label_agreement": float(np.mean(same))}
        if model == "fp32" and not diff <= tolerance:
            shutil.rmtree(folder, ignore_errors=True)
            raise PredictError(
                f"The exported fp32 models differ from the PyTorch predictor by {diff:.2e} "
                f"(max abs probability, over {tolerance:.0e}); nothing was written."
            )
    return report


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
