"""int8 variants: per-token activation scales, gated by cosine to the fp32 graph and by rows that are
bit-identical in any batch, for every registered family; the gate refuses a graph whose rows depend on their
batch-mates."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from embedder.golden import load_golden
from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, file_sha256, load_spec, write_spec
from export.criteria import INT8_BATCH_SIZES, INT8_MIN_COSINE
from export.families import FAMILIES as REGISTRY
from export.images import parity_images
from export.quantize import ACTIVATION_ZERO_POINT, SCHEME, WEIGHT_MAX, quantize_graph
from tests.conftest import TINY_SEED

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
    return dirs


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_export_passes_its_gate_and_is_labelled_batch_invariant(
    int8_dirs: dict[str, Path], family: str
) -> None:
    directory = int8_dirs[family]
    spec = load_spec(directory / SPEC_FILE)
    assert spec.verified and spec.provenance is not None and spec.provenance.quantization == SCHEME
    assert spec.batch_invariant is True and spec.text is None
    report = json.loads((directory / "parity.json").read_text())
    criterion = report["criterion"]
    assert report["verified"] and criterion["min_cosine"] == INT8_MIN_COSINE and criterion["batch_exact"]
    assert report["batch_sizes"] == [len(report["images"]), *INT8_BATCH_SIZES]
    assert report["batch_raw_max_abs"] == 0.0 and report["batch_normalized_max_abs"] == 0.0
    for image in report["images"]:
        assert image["pixel_max_abs"] == 0.0 and image["cosine"] >= INT8_MIN_COSINE, image["name"]
    assert spec.parity is not None and spec.parity.min_cosine >= INT8_MIN_COSINE


@pytest.mark.parametrize("family", FAMILIES)
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


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_golden_set_holds_the_graphs_own_vectors(int8_dirs: dict[str, Path], family: str) -> None:
    spec = load_spec(int8_dirs[family] / SPEC_FILE)
    assert spec.golden is not None and spec.golden.texts == 0
    golden = load_golden(int8_dirs[family] / spec.golden.file, spec.golden.sha256)
    pre = Preprocessor(spec.preprocessing)
    session = open_session(int8_dirs[family] / spec.onnx_file, 1)
    for data, vector in zip(golden.images, golden.vectors):
        assert np.array_equal(run(session, pre.from_bytes(data)[None])[0], vector.astype(np.float32))


def test_every_weight_matmul_is_int8_and_the_attention_products_stay_fp32(int8_dirs: dict[str, Path]) -> None:
    model = onnx.load(str(int8_dirs["clip"] / "model.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops = [node.op_type for node in model.graph.node]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(n.input[1] not in constants for n in matmuls)  # activation x activation only
    assert "DynamicQuantizeLinear" not in ops and "Conv" in ops  # nothing scaled per tensor
    integer = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(integer) == 6 * ops.count("Softmax") + 1  # q, k, v, out, fc1, fc2 per layer; projection
    for node in integer:
        weight = constants[node.input[1]]
        assert weight.dtype == np.int8 and np.abs(weight).max() <= WEIGHT_MAX
        assert constants[node.input[4]] == ACTIVATION_ZERO_POINT


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
