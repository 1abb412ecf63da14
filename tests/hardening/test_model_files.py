"""The model repository's files are input too: a malformed one never gives INTERNAL.

A model.json that cannot be read as one (not UTF-8, not a regular file, megabytes) stops start-up
with the file named, as any invalid model.json does. A graph that loads and warms up but breaks
its contract on a real batch (fails, or gives another number of rows) makes that model
UNAVAILABLE with the reason; the other model keeps serving.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from embedder.repository import Repository
from embedder.spec import SPEC_FILE, SpecError, file_sha256, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from tests.hardening.conftest import image_request
from tests.support.inprocess import serving
from tests.support.models import CLIP, DINO
from tests.support.processes import ServerProcess


def copy_models(tiny_models: Path, root: Path) -> Path:
    shutil.copytree(tiny_models, root)
    return root


@pytest.mark.parametrize("kind", ["not-utf8", "device", "huge"])
def test_an_unreadable_model_json_stops_start_up_naming_the_file(
    tiny_models: Path, tmp_path: Path, kind: str
) -> None:
    models = copy_models(tiny_models, tmp_path / "models")
    spec = models / CLIP / SPEC_FILE
    spec.unlink()
    if kind == "not-utf8":
        spec.write_bytes(b'{"name": "\xff\xfe"}')
    elif kind == "device":
        spec.symlink_to("/dev/zero")  # reading it would never end
    else:
        spec.write_text('{"name": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(SpecError) as refused:
        Repository.scan(models)
    assert str(spec) in str(refused.value)


def test_embedder_serve_reports_it_and_exits_2(tiny_models: Path, tmp_path: Path) -> None:
    models = copy_models(tiny_models, tmp_path / "models")
    (models / CLIP / SPEC_FILE).write_bytes(b"\xff\xfe{}")
    server = ServerProcess(models, tmp_path / "server.log")
    assert server.process.wait(60) == 2
    assert f"cannot start: {models / CLIP / SPEC_FILE}: not UTF-8 text" in server.log()
    assert "Traceback" not in server.log()


def contract_breaker(kind: str, height: int, width: int) -> onnx.ModelProto:
    """pixel_values [N,3,H,W] -> embedding [1,3] whatever N is: right at batch 1 (the warm-up),
    wrong for a batch of two. `rows`: one row for any N; `fails`: a reshape that fails for N > 1."""
    pixels = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, height, width])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3])
    if kind == "rows":
        nodes = [
            helper.make_node("ReduceMean", ["pixel_values", "axes"], ["mean"], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "zero"], ["embedding"]),
        ]
        inits = [
            helper.make_tensor("axes", TensorProto.INT64, [3], [0, 2, 3]),
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        ]
    else:
        nodes = [
            helper.make_node("Reshape", ["pixel_values", "shape"], ["flat"]),
            helper.make_node("ReduceMean", ["flat", "last"], ["embedding"], keepdims=0),
        ]
        inits = [
            helper.make_tensor("shape", TensorProto.INT64, [3], [1, 3, height * width]),
            helper.make_tensor("last", TensorProto.INT64, [1], [2]),
        ]
    graph = helper.make_graph(nodes, "breaker", [pixels], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def break_contract(models: Path, kind: str, keep_golden: bool) -> None:
    """Replaces tiny-clip's graph by a contract breaker (model.json updated to match it)."""
    spec = load_spec(models / CLIP / SPEC_FILE)
    graph = models / CLIP / spec.onnx_file
    onnx.save(contract_breaker(kind, *spec.preprocessing.input_size()), graph)
    update = {"embedding_dim": 3, "onnx_sha256": file_sha256(graph), "parity": None, "text": None}
    write_spec(
        spec.model_copy(update=update if keep_golden else {**update, "golden": None}),
        models / CLIP / SPEC_FILE,
    )


@pytest.mark.parametrize(
    ("kind", "why"), [("rows", "gave [1, 3] for a batch of 2"), ("fails", "failed on a batch of 2")]
)
def test_a_graph_that_breaks_its_contract_makes_its_model_unavailable(
    tiny_models: Path, tmp_path: Path, good_jpeg: bytes, kind: str, why: str
) -> None:
    """Without a golden set (an export older than the self-check) nothing at load runs a batch
    of more than one: the contract is held on the batch that breaks it."""
    models = copy_models(tiny_models, tmp_path / "models")
    break_contract(models, kind, keep_golden=False)
    with serving(models) as served:
        assert served.vectors(good_jpeg, model=CLIP).shape == (1, 3)  # batch 1: within the contract
        error = served.error(image_request(good_jpeg, good_jpeg))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert f"model '{CLIP}'" in str(error.details()) and why in str(error.details())
        assert served.health() == "SERVING"
        assert np.isfinite(served.vectors(good_jpeg, model=DINO)).all()  # the other model serves on


@pytest.mark.parametrize("kind", ["rows", "fails"])
def test_the_golden_self_check_refuses_such_a_graph_at_load(
    tiny_models: Path, tmp_path: Path, good_jpeg: bytes, kind: str
) -> None:
    """With its golden set, the same graph never serves: the golden images go through it as a
    batch of four when it loads."""
    models = copy_models(tiny_models, tmp_path / "models")
    break_contract(models, kind, keep_golden=True)
    with serving(models) as served:
        error = served.error(image_request(good_jpeg))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert f"model '{CLIP}'" in str(error.details())
        assert served.models()[CLIP].state == pb.MODEL_STATE_UNAVAILABLE
        assert np.isfinite(served.vectors(good_jpeg, model=DINO)).all()
