"""Changing an exported ONNX graph on purpose, for tests of what must notice the change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def perturb_first_layernorm(path: Path, factor: float = 1.001) -> None:
    """Scale the weight of the first LayerNormalization with an initializer scale by `factor`.

    Chosen because it cannot cancel out: scaling the *last* projection (or a LayerNorm right before
    it, whose bias is zero at init) only rescales the output, which the gate's comparison of
    L2-normalised vectors rightly ignores; and scaling a query/key weight only sharpens near-uniform
    attention of random weights, moving the output by ~1e-6. The first LayerNorm moves it by >1e-4.
    """
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    node = next(
        n for n in model.graph.node if n.op_type == "LayerNormalization" and n.input[1] in initializers
    )
    weight = numpy_helper.to_array(initializers[node.input[1]])
    initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * np.float32(factor), node.input[1]))
    onnx.save(model, str(path))


# The start of a script run in a process of its own (python -c SCRIPT PATH): two 512 x 512
# MatMuls with a Relu between, saved to argv[1], and `x`, a batch of 256 rows for them; the
# script goes on to time or watch sessions of it (`open_session` is imported).
TWO_MATMULS_SCRIPT = """
import os, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
from embedder.runtime import open_session
weights = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32) / 30
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
     helper.make_node("MatMul", ["b", "w"], ["y"])],
    "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])],
    [helper.make_tensor("w", TensorProto.FLOAT, [512, 512], weights.ravel())])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
x = np.ones((256, 512), np.float32)
"""
