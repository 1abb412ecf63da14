"""int8 variants: per-token dynamic quantisation of the fp32 graph's weight MatMuls, gated by cosine
to the fp32 graph and by exact batch consistency.

Every MatMul whose second input is a constant 2-D weight (q/k/v, attention output, the MLP and
CLIP's projection) is rewritten as

    scale = max(|x| over the last axis) / 127             one scale per token of each image
    q     = QuantizeLinear(x, scale, 128)                 uint8, symmetric around 128
    y     = MatMulIntegerToFloat(q, w8, 1, w_scale, 128) * scale      (the graph's bias Add follows)

A token's scale comes from that token alone, so an image's vector never depends on its
batch-mates: the integer products are exact and the float steps are per element or per row,
which makes a row alone bit-identical to the same row in any batch (the gate requires max-abs 0)
and lets the server batch int8 models like fp32 ones. ORT's dynamic quantisation instead scales
activations per tensor, i.e. over the whole batch.

Weights: int8 per output channel, symmetric, 7-bit (|w| <= 63). Without VNNI, ORT's U8S8 kernels
multiply with VPMADDUBSW, whose 16-bit pair sums saturate above 32767: 255 x 63 x 2 stays below,
so the integer parts are exact on any x86 CPU and the same vectors come out everywhere.

Kept in fp32: the patch-embedding Conv (ConvInteger measured slower than the fp32 Conv), the
attention score and value products (activation x activation), layer norms, softmax and GELU.
Measurements and the alternatives tried: docs/performance.md, "int8".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from embedder.runtime import open_session, run

from .criteria import Reference

log = logging.getLogger(__name__)
SCHEME = (
    "int8 per-token dynamic: uint8 activations with one scale per token (symmetric, zero point 128), "
    "int8 weights per output channel (7-bit); attention products, norms, softmax, GELU and the "
    "patch embedding in fp32"
)
MS_DOMAIN = "com.microsoft"
ACTIVATION_MAX = 127  # symmetric uint8 around the zero point 128: 1..255
ACTIVATION_ZERO_POINT = 128
WEIGHT_MAX = 63  # 7-bit weights: no VPMADDUBSW saturation (see the docstring)


@dataclass
class _Rewrite:
    """The rewritten graph's nodes in order, the constants added, and what they share."""

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    constants: list[onnx.TensorProto] = field(default_factory=list)
    # activation tensor -> (its uint8 tensor, its per-token scale): q, k and v share one
    quantized: dict[str, tuple[str, str]] = field(default_factory=dict)

    def constant(self, name: str, value: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: object) -> str:
        domain = MS_DOMAIN if op == "MatMulIntegerToFloat" else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attributes))
        return output

    def reduce_max_last_axis(self, x: str, output: str) -> str:
        if self.opset >= 18:  # ReduceMax takes its axes as an input from opset 18
            axes = self.constant(f"{output}_axes", np.array([-1], np.int64))
            return self.node("ReduceMax", [x, axes], output, keepdims=1)
        return self.node("ReduceMax", [x], output, axes=[-1], keepdims=1)

    def quantize_activation(self, x: str, depth: int) -> tuple[str, str]:
        """x [..., K] -> (uint8 x, scale [..., 1]), one scale per row of the last axis."""
        if x in self.quantized:
            return self.quantized[x]
        p = f"{x}_per_token"
        amax = self.reduce_max_last_axis(self.node("Abs", [x], f"{p}_abs"), f"{p}_amax")
        step = self.constant(f"{p}_step", np.array(1.0 / ACTIVATION_MAX, np.float32))
        tiny = self.constant(f"{p}_tiny", np.array(np.finfo(np.float32).tiny, np.float32))
        scale = self.node("Max", [self.node("Mul", [amax, step], f"{p}_raw_scale"), tiny], f"{p}_scale")
        # QuantizeLinear scales per row only along one axis: rows of x as [rows, K], scale as [rows].
        rows = self.node(
            "Reshape", [x, self.constant(f"{p}_2d", np.array([-1, depth], np.int64))], f"{p}_rows"
        )
        flat = self.node("Reshape", [scale, self.constant(f"{p}_1d", np.array([-1], np.int64))], f"{p}_flat")
        zero_point = self.node(
            "Expand",
            [
                self.constant(f"{p}_zp", np.array([ACTIVATION_ZERO_POINT], np.uint8)),
                self.node("Shape", [flat], f"{p}_count"),
            ],
            f"{p}_zero_points",
        )
        q_rows = self.node("QuantizeLinear", [rows, flat, zero_point], f"{p}_q_rows", axis=0)
        q = self.node("Reshape", [q_rows, self.node("Shape", [x], f"{p}_shape")], f"{p}_q")
        self.quantized[x] = (q, scale)
        return q, scale

    def matmul(self, node: onnx.NodeProto, weight: np.ndarray) -> None:
        q, scale = self.quantize_activation(node.input[0], weight.shape[0])
        w_scale = np.maximum(np.abs(weight).max(axis=0), np.finfo(np.float32).tiny) / WEIGHT_MAX
        w8 = np.clip(np.rint(weight / w_scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
        p = f"{node.output[0]}_int8"
        products = self.node(
            "MatMulIntegerToFloat",
            [
                q,
                self.constant(f"{p}_weight", w8),
                self.constant(f"{p}_one", np.array(1.0, np.float32)),
                self.constant(f"{p}_weight_scale", w_scale.astype(np.float32)),
                self.constant(f"{p}_zp", np.array(ACTIVATION_ZERO_POINT, np.uint8)),
            ],
            f"{p}_products",
        )
        self.node("Mul", [products, scale], node.output[0])


def quantize_graph(model: onnx.ModelProto) -> int:
    """Rewrites `model`'s weight MatMuls in place; how many."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    weights = {i.name: i for i in graph.initializer}
    rewrite = _Rewrite(opset)
    count = 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            rewrite.nodes.append(node)
            continue
        rewrite.matmul(node, numpy_helper.to_array(weight).astype(np.float32))
        count += 1
    used = {name for node in rewrite.nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + rewrite.constants)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    model = onnx.load(str(fp32_path))
    count = quantize_graph(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    log.info("quantised %d weight MatMuls per token (%s)", count, out_path)


def fp32_reference(fp32_path: Path, threads: int) -> Reference:
    """The quantised graph's reference: the fp32 graph on the same pixels."""
    session = open_session(fp32_path, threads)

    def embed(hf_pixels: object, ours: object) -> object:
        return run(session, ours[None])[0]  # type: ignore[index]

    return embed  # type: ignore[return-value]
