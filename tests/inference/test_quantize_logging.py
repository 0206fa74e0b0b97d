"""int8 quantization quiets ONNX Runtime's root-logger warning for its own call only: it used to set
the root logger to ERROR for good, so every later warning of the process (the summary's
"calibration: not fitted", the export's own info lines) was lost."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtl.inference.onnx_graph import quantize_int8


def test_quantizing_leaves_the_root_loggers_level_as_it_was(tmp_path):
    weight = numpy_helper.from_array(np.ones((8, 4), dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    source, target = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        quantize_int8(source, target)
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)
    assert target.is_file()
