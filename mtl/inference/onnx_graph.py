"""One fold's network as an ONNX graph: traced, its attention fused, optionally int8.

`mtl/inference/export.py` builds an export folder from these; `export_onnx` → `fuse_attention`
→ `quantize_int8` per fold.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

OPSET = 18  # LayerNormalization is one op; ONNX Runtime runs it on CPU and CUDA
EXPORTERS = ("torchscript", "dynamo")


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

    # its "consider pre-processing" warning goes to the root logger: quiet it for this call only,
    # else every later warning and info line of the process (the export's own) is lost too
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # shape inference cannot type the outputs of com.microsoft ops (the fused Attention)
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
