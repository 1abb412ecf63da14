"""int8 variants, static (calibrated) and per-token activation scales, gated by cosine to the fp32 graph
(on the gate's images and the out-of-distribution ones, none of them calibrated on) and by rows that are
bit-identical in any batch, for every registered family; the gate refuses a graph whose rows depend on
their batch-mates."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from bench.cpu import avx2_only_env
from embedder.golden import load_golden, write_golden
from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, file_sha256, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from export.calibration import calibration_images, unseen_images
from export.criteria import INT8_BATCH_SIZES, INT8_MIN_COSINE
from export.families import FAMILIES as REGISTRY
from export.golden import golden_images
from export.images import parity_images
from export.quantize import (
    ACTIVATION_ZERO_POINT,
    PER_TOKEN,
    SCHEME,
    STATIC,
    WEIGHT_MAX,
    Range,
    activation_ranges,
    attention_contexts,
    quantize_graph,
)
from tests.conftest import TINY_SEED
from tests.support.inprocess import serving
from tests.support.processes import ServerProcess

# family -> its tiny test architecture: a registered family is quantised and gated here as well.
FAMILIES = {name: family.test_architecture for name, family in REGISTRY.items()}


@pytest.fixture(scope="module")
def int8_dirs(tmp_path_factory: pytest.TempPathFactory, export_model: Callable[..., Any]) -> dict[str, Path]:
    """Every family's tiny architecture exported with --quantize int8, seeded like the session's fp32 ones."""
    dirs = {}
    for family, arch in FAMILIES.items():
        out = tmp_path_factory.mktemp("int8") / f"{arch}-int8"
        process = export_model(
            family, arch, out, "--random-init", "--seed", str(TINY_SEED), "--quantize", "int8", "--no-huge"
        )
        assert process.returncode == 0, process.stderr[-3000:]
        dirs[family] = out
    out = tmp_path_factory.mktemp("int8") / "tiny-clip-int8-per-token"
    process = export_model(
        "clip",
        FAMILIES["clip"],
        out,
        "--random-init",
        "--seed",
        str(TINY_SEED),
        "--quantize",
        "int8",
        "--int8-scheme",
        "per-token",
        "--no-huge",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    dirs["clip per-token"] = out
    return dirs


VARIANTS = [*FAMILIES, "clip per-token"]
# The tiny architectures have 2 layers: q, k, v, fc1 and fc2 static in each; per token, each layer's
# attention output, plus CLIP's projection of the pooled vector, plus SigLIP's pooling head
# (its attention output and its MLP on the pooled vector; its k and v read tokens: static).
STATIC_AND_PER_TOKEN = {"clip": (10, 3), "dinov2": (10, 2), "siglip": (12, 5)}


@pytest.mark.parametrize("family", VARIANTS)
def test_int8_export_passes_its_gate_and_is_labelled_batch_invariant(
    int8_dirs: dict[str, Path], family: str
) -> None:
    directory = int8_dirs[family]
    spec = load_spec(directory / SPEC_FILE)
    scheme = PER_TOKEN if family.endswith("per-token") else SCHEME
    assert SCHEME == STATIC
    assert spec.verified and spec.provenance is not None and spec.provenance.quantization == scheme
    assert spec.batch_invariant is True and spec.text is None
    report = json.loads((directory / "parity.json").read_text())
    criterion = report["criterion"]
    assert report["verified"] and criterion["min_cosine"] == INT8_MIN_COSINE and criterion["batch_exact"]
    assert report["batch_sizes"] == [len(report["images"]), *INT8_BATCH_SIZES]
    assert report["batch_raw_max_abs"] == 0.0 and report["batch_normalized_max_abs"] == 0.0
    for image in report["images"]:
        assert image["pixel_max_abs"] == 0.0 and image["cosine"] >= INT8_MIN_COSINE, image["name"]
    gated = {image["name"] for image in report["images"]}
    assert {image.name for image in unseen_images()} <= gated  # out-of-distribution kinds, held to 0.995 too
    assert spec.parity is not None and spec.parity.min_cosine >= INT8_MIN_COSINE


def test_the_calibration_set_shares_no_image_with_the_gate_or_the_golden_set() -> None:
    calibrated = {image.data for image in calibration_images()}
    gate = parity_images(include_huge=False)
    assert len(calibrated) == len(calibration_images()) >= 32
    assert calibrated.isdisjoint(image.data for image in gate)
    assert calibrated.isdisjoint(image.data for image in golden_images(gate))
    assert calibrated.isdisjoint(image.data for image in unseen_images())


@pytest.mark.parametrize("family", VARIANTS)
def test_int8_rows_are_bit_identical_alone_and_in_any_batch(int8_dirs: dict[str, Path], family: str) -> None:
    spec = load_spec(int8_dirs[family] / SPEC_FILE)
    pre = Preprocessor(spec.preprocessing)
    tensors = np.stack([pre.from_bytes(item.data) for item in parity_images(include_huge=False)])
    session = open_session(int8_dirs[family] / spec.onnx_file, 2)
    singles = np.stack([run(session, t[None])[0] for t in tensors])
    rng = np.random.default_rng(5)
    for size in (1, 2, 4, 7, 8, 13, len(tensors)):
        rows = rng.permutation(len(tensors))[:size]
        assert np.array_equal(run(session, tensors[rows]), singles[rows]), size


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_int8_golden_set_holds_the_fp32_graphs_vectors_and_the_gates_cosine(
    int8_dirs: dict[str, Path], family: str, request: pytest.FixtureRequest
) -> None:
    spec = load_spec(int8_dirs[family] / SPEC_FILE)
    assert spec.golden is not None and spec.golden.texts == 0 and spec.golden.min_cosine == INT8_MIN_COSINE
    golden = load_golden(int8_dirs[family] / spec.golden.file, spec.golden.sha256)
    pre = Preprocessor(spec.preprocessing)
    pixels = np.stack([pre.from_bytes(data) for data in golden.images])
    fp32_dir: Path = request.getfixturevalue(f"tiny_{family}_dir")  # the same seed: the same fp32 graph
    fp32 = run(open_session(fp32_dir / "model.onnx", 1), pixels)
    assert np.abs(fp32 - golden.vectors).max() <= 1e-6 * np.abs(fp32).max()
    served = run(open_session(int8_dirs[family] / spec.onnx_file, 1), pixels).astype(np.float64)
    unit = golden.vectors / np.linalg.norm(golden.vectors, axis=1, keepdims=True)
    cosines = (served * unit).sum(1) / np.linalg.norm(served, axis=1)
    assert cosines.min() >= INT8_MIN_COSINE and not np.allclose(served, golden.vectors, atol=1e-6)


def _rotated_golden(directory: Path, cosine: float) -> None:
    """Turns every golden reference of a copied int8 model away from where it was, to `cosine`."""
    spec = load_spec(directory / SPEC_FILE)
    assert spec.golden is not None
    path = directory / spec.golden.file
    golden = load_golden(path, spec.golden.sha256)
    unit = golden.vectors / np.linalg.norm(golden.vectors, axis=1, keepdims=True)
    other = np.roll(unit, 1, axis=1)
    other -= (other * unit).sum(1, keepdims=True) * unit
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    write_golden(path, replace(golden, vectors=cosine * unit + np.sqrt(1 - cosine**2) * other))
    update = {"golden": spec.golden.model_copy(update={"sha256": file_sha256(path)})}
    write_spec(spec.model_copy(update=update), directory / SPEC_FILE)


def test_an_int8_self_check_passes_by_the_gates_cosine_and_refuses_below_it(
    int8_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Vectors that moved as on another CPU's kernels still serve; vectors the gate would fail do not."""
    name = int8_dirs["clip"].name
    for cosine, served in ((0.999, True), (0.99, False)):
        models = tmp_path / str(cosine)
        shutil.copytree(int8_dirs["clip"], models / name)
        _rotated_golden(models / name, cosine)
        with serving(models, preload=True) as server:
            status = server.models()[name]
            check = status.self_check
            assert check.required_cosine == INT8_MIN_COSINE and check.max_abs > 1e-6
            if served:
                assert check.state == "passed" and 0.995 <= check.min_cosine < 0.9995, check
                assert server.health(name) == "SERVING"
            else:
                assert check.state == "failed" and check.min_cosine < 0.995, check
                assert (
                    status.state == pb.MODEL_STATE_UNAVAILABLE and "cosine to the fp32 graph" in status.error
                )


@pytest.mark.skipif(
    "cpuid_fault" not in Path("/proc/cpuinfo").read_text() or shutil.which("cc") is None,
    reason="needs Linux CPUID faulting and a C compiler (bench/cpu.py)",
)
def test_an_int8_export_serves_where_onnx_runtime_picks_the_avx2_kernels(
    int8_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The export ran with this CPU's kernels; a server that sees an AVX2-only CPU passes its
    self-check all the same, and says which CPU it checked on."""
    models = tmp_path / "models"
    models.mkdir()
    name = int8_dirs["clip"].name
    (models / name).symlink_to(int8_dirs["clip"])
    preload = avx2_only_env()["LD_PRELOAD"]
    server = ServerProcess(models, tmp_path / "server.log", "--preload", env={"LD_PRELOAD": preload})
    try:
        server.wait_serving(timeout=120.0)
        with grpc.insecure_channel(server.address) as channel:
            listed = pb_grpc.EmbedderStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
        (status,) = [m for m in listed.models if m.info.name == name]
        assert status.self_check.state == "passed", server.log_path.read_text()[-3000:]
        assert status.self_check.min_cosine >= INT8_MIN_COSINE
    finally:
        server.stop()


@pytest.mark.parametrize("family", VARIANTS)
def test_every_weight_matmul_is_int8_and_the_attention_products_stay_fp32(
    int8_dirs: dict[str, Path], family: str
) -> None:
    model = onnx.load(str(int8_dirs[family] / "model.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops = [node.op_type for node in model.graph.node]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(n.input[1] not in constants for n in matmuls)  # activation x activation only
    assert "DynamicQuantizeLinear" not in ops and "Conv" in ops  # nothing scaled per tensor
    integer = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    producer = {out: node for node in model.graph.node for out in node.output}
    static, per_token = [], []
    for node in integer:
        weight = constants[node.input[1]]
        assert weight.dtype == np.int8 and np.abs(weight).max() <= WEIGHT_MAX
        quantizer = producer[node.input[0]]
        if quantizer.op_type == "Reshape":  # per token: the rows quantised as [tokens, depth]
            quantizer = producer[quantizer.input[0]]
        assert quantizer.op_type == "QuantizeLinear"
        if quantizer.input[1] == node.input[2]:  # static: the QuantizeLinear's own scale and zero point
            assert quantizer.input[2] == node.input[4] and constants[node.input[2]].shape == ()
            static.append(node)
        else:  # per token: a unit scale here, the token's own scale multiplied in after the product
            assert constants[node.input[2]] == 1.0 and constants[node.input[4]] == ACTIVATION_ZERO_POINT
            per_token.append(node)
    if family.endswith("per-token"):
        assert not static and len(per_token) == len(integer)
    else:  # per token: each attention's output and each pooled vector's MatMul; the rest static
        assert (len(static), len(per_token)) == STATIC_AND_PER_TOKEN[family]
        assert any(len(n.input) == 7 and n.input[6] for n in static)  # a bias folded into the product


def _linear_graph(opset: int, rows: int, depth: int, width: int) -> onnx.ModelProto:
    """x [batch, rows, depth] -> MatMul + bias -> MatMul: two weight MatMuls."""
    rng = np.random.default_rng(opset)
    w1 = (rng.standard_normal((depth, width)) / np.sqrt(depth)).astype(np.float32)
    w2 = (rng.standard_normal((width, depth)) / np.sqrt(width)).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["hb"]),
            helper.make_node("MatMul", ["hb", "w2"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows, depth])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", rows, depth])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax's axes moved from attribute to input in 18
def test_quantize_graph_keeps_rows_independent_at_either_reduce_max_form(opset: int) -> None:
    fp32 = _linear_graph(opset, rows=5, depth=48, width=96)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(fp32)
    assert quantize_graph(quantized) == 2
    onnx.checker.check_model(quantized)
    reference = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((6, 5, 48)).astype(np.float32)
    x[2] *= 1000.0  # a loud batch-mate: per-tensor scales would crush the others' resolution
    x[3, 1] = 0.0  # an all-zero token: its scale must not divide by zero
    batched = session.run(None, {"x": x})[0]
    for i in range(len(x)):
        alone = session.run(None, {"x": x[i : i + 1]})[0][0]
        assert np.array_equal(batched[i], alone), i
    assert np.isfinite(batched).all()
    expected = reference.run(None, {"x": x})[0].reshape(-1, 48).astype(np.float64)
    got = batched.reshape(-1, 48).astype(np.float64)
    cosine = (expected * got).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() >= 0.999


def test_static_scales_keep_rows_independent_and_clip_only_what_lies_outside_the_calibration(
    tmp_path: Path,
) -> None:
    fp32 = _linear_graph(17, rows=5, depth=48, width=96)
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))
    rng = np.random.default_rng(2)
    calibration = rng.standard_normal((16, 5, 48)).astype(np.float32)
    ranges = activation_ranges(tmp_path / "fp32.onnx", calibration, tmp_path, names=["hb"])
    constants = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    hb = calibration @ constants["w1"] + constants["b"]
    assert ranges["hb"] == Range(float(hb.min()), float(hb.max()))  # min-max over the whole set
    narrower = activation_ranges(tmp_path / "fp32.onnx", calibration, tmp_path, 99.0, names=["hb"])["hb"]
    assert ranges["hb"].low < narrower.low < 0 < narrower.high < ranges["hb"].high
    ranges["x"] = Range(float(calibration.min()), float(calibration.max()))
    quantized = onnx.ModelProto()
    quantized.CopyFrom(fp32)
    assert quantize_graph(quantized, ranges) == 2
    onnx.checker.check_model(quantized)
    ops = [node.op_type for node in quantized.graph.node]
    assert "Add" not in ops and ops.count("QuantizeLinear") == 2 and "ReduceMax" not in ops  # bias folded
    reference = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((6, 5, 48)).astype(np.float32)
    x[2] *= 1000.0  # far outside the calibrated range: clipped, and only this row suffers
    batched = session.run(None, {"x": x})[0]
    for i in range(len(x)):
        assert np.array_equal(batched[i], session.run(None, {"x": x[i : i + 1]})[0][0]), i
    expected = reference.run(None, {"x": x})[0].astype(np.float64)
    got = batched.astype(np.float64)
    cosine = (expected * got).sum(-1) / (np.linalg.norm(expected, axis=-1) * np.linalg.norm(got, axis=-1))
    assert np.delete(cosine, 2, axis=0).min() >= 0.999
    assert cosine[2].min() < 0.99


def test_only_the_attention_outputs_keep_per_token_scales(tiny_clip_dir: Path) -> None:
    model = onnx.load(str(tiny_clip_dir / "model.onnx"))
    contexts = attention_contexts(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    assert len(contexts) == [node.op_type for node in model.graph.node].count("Softmax")
    for name in contexts:  # softmax x values, then reshaped: the out-projection's input
        node = producer[name]
        while node.op_type in ("Reshape", "Transpose"):
            node = producer[node.input[0]]
        assert node.op_type == "MatMul" and producer[node.input[0]].op_type == "Softmax"


def test_the_gate_refuses_an_int8_graph_whose_rows_depend_on_batch_mates(
    int8_dirs: dict[str, Path], tiny_clip_dir: Path, tmp_path: Path, run_parity: Callable[..., Any]
) -> None:
    """ORT's dynamic quantisation (one scale per tensor) in place of the per-token graph: the
    model claims batch invariance, and the gate's exact batch check fails it."""
    copy = tmp_path / "tiny-clip-int8"
    shutil.copytree(int8_dirs["clip"], copy)
    quantize_dynamic(
        str(tiny_clip_dir / "model.onnx"),
        str(copy / "model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    spec = load_spec(copy / SPEC_FILE)
    write_spec(spec.model_copy(update={"onnx_sha256": file_sha256(copy / "model.onnx")}), copy / SPEC_FILE)
    done = run_parity(copy, "--no-huge")
    assert done.returncode != 0, done.stdout[-3000:]
    assert "image batch vs one at a time" in done.stderr
    report = json.loads((copy / "parity.json").read_text())
    assert report["batch_raw_max_abs"] > 0 and not report["verified"]
    assert all(image["cosine"] >= INT8_MIN_COSINE for image in report["images"])  # only the batch check fails
