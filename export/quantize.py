"""int8 variants of the fp32 image graph, gated by cosine to the fp32 graph and by exact batch
consistency. Every MatMul whose second input is a constant 2-D weight (q/k/v, attention output,
the MLP and the projection) reads uint8 activations and int8 weights, in one of two schemes:

- **static** (the default of `--quantize int8`): an input that comes out of a layer norm or the
  MLP's activation gets a fixed scale and zero point, calibrated on `export/calibration.py`'s
  images (min and max over the set):

      q = QuantizeLinear(x, scale, zero_point)        one pass, shared by the MatMuls reading x
      y = MatMulIntegerToFloat(q, w8, scale, w_scale, zero_point, (none), bias)   the bias Add folded in

  The attention's output (softmax x values), whose range follows how spread the attention is
  and so differs from image to image, keeps per-token scales as below, and so does a pooled
  vector (one row per image, e.g. into CLIP's projection): calibration sees one sample per
  channel per image there, too few to bound it, and one row costs nothing to scale.
- **per-token** (`--int8-scheme per-token`) for every input:

      scale = max(|x| over the last axis) / 127        one scale per token of each image
      q     = QuantizeLinear(x, scale, 128)            uint8, symmetric around 128
      y     = MatMulIntegerToFloat(q, w8, 1, w_scale, 128) * scale   (the bias Add follows)

Neither scale depends on batch-mates (a fixed constant, or one token's own values): the integer
products are exact and the float steps per element or per row, so a row alone is bit-identical to
the same row in any batch (the gate requires max-abs 0) and the server batches int8 models like
fp32 ones. ORT's dynamic quantisation instead scales activations per tensor, i.e. per batch.
Static needs no per-row passes over the activations (absolute value, row maximum, the rescale
after the product), which is what makes it faster where the integer kernels gain least (AVX2
without VNNI).

Weights: int8 per output channel, symmetric, 7-bit (|w| <= 63). Without VNNI, ORT's U8S8 kernels
multiply with VPMADDUBSW, whose 16-bit pair sums saturate above 32767: 255 x 63 x 2 stays below,
so the integer parts are exact on any x86 CPU and the same vectors come out everywhere.

Kept in fp32: the patch-embedding Conv (ConvInteger measured slower than the fp32 Conv), the
attention score and value products (activation x activation), layer norms, softmax and GELU.
Measurements and the alternatives tried: docs/performance.md, "int8".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, load_spec

from .calibration import calibration_images
from .criteria import Reference

log = logging.getLogger(__name__)
PER_TOKEN = (
    "int8 per-token dynamic: uint8 activations with one scale per token (symmetric, zero point 128), "
    "int8 weights per output channel (7-bit); attention products, norms, softmax, GELU and the "
    "patch embedding in fp32"
)
STATIC = (
    "int8 static: uint8 activations with calibrated scales and zero points (min-max over "
    "export/calibration.py's images) where a layer norm or the MLP's activation produces them, one "
    "scale per token for the attention outputs and the pooled vector; int8 weights per output "
    "channel (7-bit); attention products, norms, softmax, GELU and the patch embedding in fp32"
)
SCHEMES = {"static": STATIC, "per-token": PER_TOKEN}  # --int8-scheme -> provenance.quantization
SCHEME = STATIC  # the default
MS_DOMAIN = "com.microsoft"
ACTIVATION_MAX = 127  # symmetric uint8 around the zero point 128: 1..255
ACTIVATION_ZERO_POINT = 128
WEIGHT_MAX = 63  # 7-bit weights: no VPMADDUBSW saturation (see the docstring)
CALIBRATION_BATCH = 8
_BINS = 4096


def _weight_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 per output channel, symmetric, 7-bit; (weights, their float32 scales)."""
    w_scale = np.maximum(np.abs(weight).max(axis=0), np.finfo(np.float32).tiny) / WEIGHT_MAX
    w8 = np.clip(np.rint(weight / w_scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return w8, w_scale.astype(np.float32)


@dataclass(frozen=True)
class Range:
    """A calibrated activation range; zero is always inside, so it quantises exactly."""

    low: float
    high: float

    def scale_zero_point(self) -> tuple[float, int]:
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / 255.0, float(np.finfo(np.float32).tiny))
        return scale, int(np.clip(np.rint(-low / scale), 0, 255))


@dataclass(frozen=True)
class Bias:
    """The Add after a weight MatMul whose other input is a constant vector: folded into the product,
    which then writes the Add's output (the Add is dropped)."""

    name: str
    output: str


@dataclass
class _Rewrite:
    """The rewritten graph's nodes in order, the constants added, and what they share."""

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    constants: list[onnx.TensorProto] = field(default_factory=list)
    # activation tensor -> (its uint8 tensor, its scale: per token, or the static one): q, k and v
    # read one, quantised once
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
        w8, w_scale = _weight_int8(weight)
        p = f"{node.output[0]}_int8"
        products = self.node(
            "MatMulIntegerToFloat",
            [
                q,
                self.constant(f"{p}_weight", w8),
                self.constant(f"{p}_one", np.array(1.0, np.float32)),
                self.constant(f"{p}_weight_scale", w_scale),
                self.constant(f"{p}_zp", np.array(ACTIVATION_ZERO_POINT, np.uint8)),
            ],
            f"{p}_products",
        )
        self.node("Mul", [products, scale], node.output[0])

    def static_matmul(self, node: onnx.NodeProto, weight: np.ndarray, span: Range, bias: Bias | None) -> None:
        """x quantised with its calibrated scale and zero point (one QuantizeLinear, shared by the
        MatMuls that read x), the bias Add that followed folded into the product's own bias."""
        x = node.input[0]
        scale, zero_point = span.scale_zero_point()
        p = f"{x}_static"
        if x not in self.quantized:
            s = self.constant(f"{p}_scale", np.array(scale, np.float32))
            z = self.constant(f"{p}_zp", np.array(zero_point, np.uint8))
            self.quantized[x] = (self.node("QuantizeLinear", [x, s, z], f"{p}_q"), s)
        q, s = self.quantized[x]
        w8, w_scale = _weight_int8(weight)
        w = f"{node.output[0]}_int8"
        inputs = [
            q,
            self.constant(f"{w}_weight", w8),
            s,
            self.constant(f"{w}_weight_scale", w_scale),
            f"{p}_zp",
        ]
        if bias is None:
            self.node("MatMulIntegerToFloat", inputs, node.output[0])
        else:
            self.node("MatMulIntegerToFloat", [*inputs, "", bias.name], bias.output)


def weight_matmuls(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """Every MatMul whose second input is a constant 2-D weight, with that weight."""
    weights = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            found.append((node, weight))
    return found


def _bias_adds(model: onnx.ModelProto) -> dict[str, Bias]:
    """MatMul output -> the bias Add that alone reads it, where the bias is a constant vector."""
    vectors = {i.name for i in model.graph.initializer if len(i.dims) == 1}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = {}
    for node, _ in weight_matmuls(model):
        out = node.output[0]
        users = readers.get(out, [])
        if out in outputs or len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == out else add.input[0]
        if other in vectors:
            found[out] = Bias(other, add.output[0])
    return found


def attention_contexts(model: onnx.ModelProto) -> set[str]:
    """Weight-MatMul inputs that are an attention's output (softmax x values, then only reshaped or
    transposed): their range follows how spread the attention is, which differs from image to image,
    so they keep per-token scales. Every other input comes out of a normalisation or the MLP's
    activation, with a range the calibration set covers."""
    constants = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = set()
    for node, _ in weight_matmuls(model):
        source = producer.get(node.input[0])
        while source is not None and source.op_type in ("Reshape", "Transpose"):
            source = producer.get(source.input[0])
        if source is not None and source.op_type == "MatMul" and not constants.intersection(source.input):
            found.add(node.input[0])
    return found


def static_inputs(model: onnx.ModelProto) -> list[str]:
    """The weight-MatMul inputs the static scheme calibrates: all but the attention outputs."""
    contexts = attention_contexts(model)
    return sorted({node.input[0] for node, _ in weight_matmuls(model)} - contexts)


def quantize_graph(model: onnx.ModelProto, ranges: dict[str, Range] | None = None) -> int:
    """Rewrites `model`'s weight MatMuls in place; how many. An input with a calibrated range in
    `ranges` (`activation_ranges`) is quantised with it; every other input per token."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    rewrite = _Rewrite(opset)
    ranges = ranges or {}
    matmuls = {
        node.output[0]: numpy_helper.to_array(w).astype(np.float32) for node, w in weight_matmuls(model)
    }
    biases = {out: bias for out, bias in _bias_adds(model).items() if out in matmuls}
    static = {node.output[0] for node, _ in weight_matmuls(model) if node.input[0] in ranges}
    folded = {biases[out].output for out in static if out in biases}  # the Adds' outputs
    for node in graph.node:
        weight = matmuls.get(node.output[0]) if node.op_type == "MatMul" else None
        if node.op_type == "Add" and node.output[0] in folded:
            continue
        if weight is None:
            rewrite.nodes.append(node)
        elif node.output[0] in static:
            rewrite.static_matmul(node, weight, ranges[node.input[0]], biases.get(node.output[0]))
        else:
            rewrite.matmul(node, weight)
    used = {name for node in rewrite.nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + rewrite.constants)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(matmuls)


def probe_session(fp32_path: Path, names: list[str], scratch: Path, threads: int = 2) -> ort.InferenceSession:
    """A session of the fp32 graph that also outputs the tensors `names` (saved in `scratch`, its
    weights as external data so that any size fits)."""
    model = onnx.load(str(fp32_path))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names
        if name not in known
    )
    probe = scratch / "probe.onnx"
    onnx.save(model, str(probe), save_as_external_data=True, location="probe.onnx.data")
    return open_session(probe, threads)


def activation_ranges(
    fp32_path: Path,
    pixels: np.ndarray,
    scratch: Path,
    percentile: float = 100.0,
    names: list[str] | None = None,
    threads: int = 2,
) -> dict[str, Range]:
    """The range over `pixels` [n, 3, H, W] of each tensor in `names` (default `static_inputs`) that
    has more than one row (token) per image: the fp32 graph is run with those tensors as extra
    outputs (min and max; below 100 %, a second pass histograms 4096 bins between them and the
    range keeps `percentile` % of the values, cutting the two tails equally)."""
    names = static_inputs(onnx.load(str(fp32_path))) if names is None else names
    session = probe_session(fp32_path, names, scratch, threads)
    batches = [pixels[i : i + CALIBRATION_BATCH] for i in range(0, len(pixels), CALIBRATION_BATCH)]

    def outputs() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            yield dict(zip(names, session.run(names, {session.get_inputs()[0].name: batch}), strict=True))

    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    rows: dict[str, int] = {}
    for batch, seen in zip(batches, outputs(), strict=True):
        for n, values in seen.items():
            low[n], high[n] = min(low[n], float(values.min())), max(high[n], float(values.max()))
            rows[n] = values.size // (len(batch) * values.shape[-1])
    # One row per image (a pooled vector into its projection): the set gives each channel one
    # sample per image, too few to bound it; it keeps per-token scales, at no cost for one row.
    names = [n for n in names if rows[n] > 1]
    if percentile >= 100.0:
        return {n: Range(low[n], high[n]) for n in names}
    counts = {n: np.zeros(_BINS, np.int64) for n in names}
    for seen in outputs():
        for n in names:
            counts[n] += np.histogram(seen[n], _BINS, (low[n], high[n]))[0]
    cut = (100.0 - percentile) / 200.0
    ranges = {}
    for n in names:
        edges = np.linspace(low[n], high[n], _BINS + 1)
        share = np.cumsum(counts[n]) / counts[n].sum()
        first, last = int(np.searchsorted(share, cut)), int(np.searchsorted(share, 1.0 - cut))
        ranges[n] = Range(float(edges[first]), float(edges[min(last + 1, _BINS)]))
    return ranges


def calibrate(fp32_dir: Path, scratch: Path) -> dict[str, Range]:
    """The static scheme's ranges for the exported fp32 model in `fp32_dir`: its own preprocessing
    of the calibration images, then `activation_ranges`."""
    spec = load_spec(fp32_dir / SPEC_FILE)
    pre = Preprocessor(spec.preprocessing)
    pixels = np.stack([pre.from_bytes(item.data) for item in calibration_images()])
    scratch.mkdir(parents=True, exist_ok=True)
    return activation_ranges(fp32_dir / spec.onnx_file, pixels, scratch)


def quantize_int8(fp32_path: Path, out_path: Path, ranges: dict[str, Range] | None = None) -> None:
    model = onnx.load(str(fp32_path))
    count = quantize_graph(model, ranges)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    log.info(
        "quantised %d weight MatMuls %s (%s)", count, "per token" if ranges is None else "static", out_path
    )


def fp32_reference(fp32_path: Path, threads: int) -> Reference:
    """The quantised graph's reference: the fp32 graph on the same pixels."""
    session = open_session(fp32_path, threads)

    def embed(hf_pixels: object, ours: object) -> object:
        return run(session, ours[None])[0]  # type: ignore[index]

    return embed  # type: ignore[return-value]
