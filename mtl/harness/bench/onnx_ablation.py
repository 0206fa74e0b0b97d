"""What the ONNX export's speed-ups buy (`--serve RUN --onnx-ablation`), int8, one process.

    python scripts/benchmark.py --serve checkpoints/default --onnx-ablation --out bench_ablation.json

Two choices made for CPU speed, measured on and off on the same texts, interleaved:
- the export traces eager attention and fuses each layer's into ONNX Runtime's `Attention` op
  (mtl.inference.onnx_graph.fuse_attention; off: a second export of the run with `fuse=False`, as
  exports were before: the model's own attention, SDPA by default; in a temporary folder);
- `OnnxPredictor` sessions skip ONNX Runtime's SkipLayerNormalization fusion (SLOW_FUSIONS).
And the reason for the second, one op alone: SkipLayerNormalization against Add + Add +
LayerNormalization on a (rows, hidden) input, microseconds per call. Re-run after upgrading
onnxruntime: if its SkipLayerNormalization gets fast, SLOW_FUSIONS should go.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def skip_layer_norm_timing(rows: int, hidden: int, threads: int, calls: int = 200) -> dict:
    """Microseconds per call of the fused op and of the three ops it replaces, same input."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    x, skip = (rng.standard_normal((rows, hidden), dtype=np.float32) for _ in range(2))
    weights = [
        onnx.numpy_helper.from_array(rng.random(hidden, dtype=np.float32), name)
        for name in ("gamma", "beta", "bias")
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, hidden]) for n in "xs"]
    output = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, hidden])]
    graphs = {
        "SkipLayerNormalization": [
            helper.make_node(
                "SkipLayerNormalization", ["x", "s", "gamma", "beta", "bias"], ["y"],
                domain="com.microsoft", epsilon=1e-12,
            )
        ],
        "Add+Add+LayerNormalization": [
            helper.make_node("Add", ["x", "s"], ["t"]),
            helper.make_node("Add", ["t", "bias"], ["u"]),
            helper.make_node("LayerNormalization", ["u", "gamma", "beta"], ["y"], epsilon=1e-12),
        ],
    }  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sessions = {}
    for name, nodes in graphs.items():
        model = helper.make_model(
            helper.make_graph(nodes, name, inputs, output, weights),
            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        )
        # no graph optimizations: the second graph must not be fused into the first
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sessions[name] = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    feed = {"x": x, "s": skip}
    best = {name: float("inf") for name in sessions}
    for _ in range(3):  # interleaved, best of three
        for name, session in sessions.items():
            session.run(None, feed)
            start = time.perf_counter()
            for _ in range(calls):
                session.run(None, feed)
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return {"rows": rows, "hidden": hidden, "threads": threads, "us_per_call": best}


def onnx_ablation(
    run_dir: Path, folder: Path, reference, texts: list[str], repeats: int, threads: int
) -> dict:
    """int8 texts/s with the fusion choices on and off, against `reference` (the PyTorch Predictor)."""
    from mtl.errors import PredictError
    from mtl.harness.bench.serve_paths import time_backends
    from mtl.inference.export import export_run
    from mtl.inference.onnx_predict import OnnxPredictor

    options = dict(model="int8", device="cpu", threads=threads, batch_size=reference.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # force: this measures speed; the agreement of the shipped export was checked when
            # it was made, and the unfused graph computes the same
            unfused = export_run(
                run_dir, Path(tmp) / "export", quantize="int8", fuse=False, force=True
            )
        except PredictError as err:
            raise PredictError(f"--onnx-ablation: the unfused export failed: {err}") from None
        backends = {
            "torch_fp32": reference,
            "int8": OnnxPredictor.from_export(folder, **options),
            "int8_skipln_fusion": OnnxPredictor.from_export(
                folder, disabled_optimizers=[], **options
            ),
            "int8_unfused": OnnxPredictor.from_export(unfused, **options),
            "int8_unfused_skipln_fusion": OnnxPredictor.from_export(
                unfused, disabled_optimizers=[], **options
            ),
        }
        speed = time_backends(backends, texts, repeats)
    encoder = reference.models[0].encoder.config
    rows = reference.batch_size * int(np.mean([len(x) for x in reference.encode(texts)]))
    return {
        "what": "int8 = as shipped (fused Attention, no SkipLayerNormalization fusion); "
        "*_unfused = export with fuse=False; *_skipln_fusion = ONNX Runtime's default optimizers",
        "speed": speed,
        "op": skip_layer_norm_timing(rows, int(encoder.hidden_size), threads),
    }
