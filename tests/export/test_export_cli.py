"""`python -m export` and `python -m export.parity` end to end, on tiny seeded models.

Everything runs through the real CLI in a subprocess (conftest's `export_model` / `run_parity`).
The checks are the contract the server relies on: a verified model.json that matches its graph,
a graph `pixel_values [batch,3,H,W] -> embedding [batch,D]` with no resize op, outputs equal to a
PyTorch computation written here independently of the exporter, and a gate that fails when
either the graph or the preprocessing is slightly off.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, Dinov2Model, SiglipModel

from embedder.runtime import open_session, run
from embedder.spec import ModelSpec, load_spec
from export.architectures import ARCHITECTURES
from export.families import POOLINGS
from export.images import parity_images
from tests.support.graphs import perturb_first_layernorm

REPO_ROOT = Path(__file__).parents[2]
TOLERANCE = (
    1e-6  # the gate's contract, restated here rather than imported: a test must not follow a loosening
)
TINY_IMAGE_NAMES = [image.name for image in parity_images(include_huge=False)]
# Every pooling of every family, exported from a checkpoint directory with an explicit --pooling.
# (The default pooling, no flag, is what the random-init fixtures use.)
LOCAL_CASES = [(family, pooling) for family, poolings in POOLINGS.items() for pooling in poolings]


def case_id(case: tuple[str, str]) -> str:
    return "-".join(case)


def output(process: subprocess.CompletedProcess[str]) -> str:
    return f"exit {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LocalExport:
    family: str
    pooling: str
    checkpoint: Path
    directory: Path
    process: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def local_export(
    tiny_checkpoints: dict[str, Path],
    export_model: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], LocalExport]:
    """(family, pooling) -> that tiny checkpoint directory exported through the CLI (once each).

    No --random-init: the CLI reads the directory with from_pretrained, the path a real
    downloaded or fine-tuned checkpoint takes. Directories are shared; do not modify them.
    """
    done: dict[tuple[str, str], LocalExport] = {}

    def get(family: str, pooling: str) -> LocalExport:
        if (family, pooling) not in done:
            out = tmp_path_factory.mktemp("local-exports") / f"tiny-{family}-{pooling.replace('+', '-')}"
            process = export_model(family, tiny_checkpoints[family], out, "--pooling", pooling, "--no-huge")
            done[family, pooling] = LocalExport(family, pooling, tiny_checkpoints[family], out, process)
        return done[family, pooling]

    return get


def expected_dim(family: str, pooling: str) -> int:
    config = ARCHITECTURES[f"tiny-{family}"].config
    if family == "clip":
        return int(config["projection_dim"])
    if family == "siglip":
        return int(config["vision_config"]["hidden_size"])  # the attention-pooling head's width
    return int(config["hidden_size"]) * (2 if pooling == "cls+mean" else 1)


def graph_io(path: Path) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    graph = onnx.load(str(path)).graph
    initializers = {init.name for init in graph.initializer}
    return [i for i in graph.input if i.name not in initializers], list(graph.output)


# --- exports from a local checkpoint directory --------------------------------------------------


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_checkpoint_export_writes_a_verified_pretrained_model(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    exported = local_export(*case)
    assert exported.process.returncode == 0, output(exported.process)
    for name in ("model.onnx", "model.json", "parity.json"):
        assert (exported.directory / name).is_file(), name
    spec = load_spec(exported.directory / "model.json")
    assert spec.verified
    assert spec.provenance is not None
    assert spec.provenance.weights == "pretrained" and spec.provenance.seed is None
    assert spec.provenance.source == str(exported.checkpoint.resolve())
    assert spec.aliases == ()  # a local path is not a name clients can ask for
    assert (spec.family, spec.pooling) == (exported.family, exported.pooling)
    assert spec.embedding_dim == expected_dim(exported.family, exported.pooling)
    assert "RANDOM-INIT" not in exported.process.stderr


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_model_json_records_the_hash_of_the_graph_beside_it(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    directory = local_export(*case).directory
    spec = load_spec(directory / "model.json")
    actual = sha256(directory / spec.onnx_file)
    assert spec.onnx_sha256 == actual
    assert spec.parity is not None and spec.parity.onnx_sha256 == actual


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_graph_has_the_serving_contract(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    directory = local_export(*case).directory
    spec = load_spec(directory / "model.json")
    path = directory / spec.onnx_file
    onnx.checker.check_model(str(path), full_check=True)
    inputs, outputs = graph_io(path)
    assert [i.name for i in inputs] == ["pixel_values"] and [o.name for o in outputs] == ["embedding"]
    float32 = onnx.TensorProto.FLOAT
    assert (
        inputs[0].type.tensor_type.elem_type == float32 and outputs[0].type.tensor_type.elem_type == float32
    )
    in_dims = inputs[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value"), "batch axis must be symbolic"
    assert [d.dim_value for d in in_dims[1:]] == [3, *spec.preprocessing.input_size()]
    out_dims = outputs[0].type.tensor_type.shape.dim
    assert len(out_dims) == 2 and out_dims[0].dim_param
    # The symbolic batch axis really is dynamic: other batch sizes than the export's dummy (2) run.
    session = open_session(path, 1)
    height, width = spec.preprocessing.input_size()
    for batch in (1, 3):
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, height, width), dtype=np.float32)
        assert run(session, pixels).shape == (batch, spec.embedding_dim)


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_graph_holds_no_resize(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    """DINOv2 interpolates its 37x37 position embeddings on every call; the exporter freezes
    that result for the served size, so no Resize (bicubic in ORT vs PyTorch) is left in the graph."""
    ops = {node.op_type for node in onnx.load(str(local_export(*case).directory / "model.onnx")).graph.node}
    assert not ops & {"Resize", "Upsample"}, sorted(ops)


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_parity_report_is_exact_for_every_image(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    directory = local_export(*case).directory
    report = json.loads((directory / "parity.json").read_text())
    assert [
        row["name"] for row in report["images"]
    ] == TINY_IMAGE_NAMES  # the whole set minus the huge images
    for row in report["images"]:
        assert row["pixel_max_abs"] == 0.0, row["name"]
        assert row["normalized_max_abs"] <= TOLERANCE, row["name"]
    assert report["verified"] is True and report["batch_normalized_max_abs"] <= TOLERANCE
    summary = load_spec(directory / "model.json").parity
    assert summary is not None and summary.images == len(TINY_IMAGE_NAMES)
    assert summary.max_abs_normalized == max(row["normalized_max_abs"] for row in report["images"])


def torch_embeddings(family: str, pooling: str, checkpoint: Path, pixels: torch.Tensor) -> np.ndarray:
    """What the exported graph must compute, written from the model's public outputs."""
    with torch.no_grad():
        if family == "clip":
            return (
                CLIPModel.from_pretrained(checkpoint).eval().get_image_features(pixel_values=pixels).numpy()
            )
        if family == "siglip":
            vision = SiglipModel.from_pretrained(checkpoint).eval().vision_model
            return vision(pixel_values=pixels).pooler_output.numpy()  # the attention-pooling head
        tokens = Dinov2Model.from_pretrained(checkpoint).eval()(pixel_values=pixels).last_hidden_state
    cls, mean = tokens[:, 0], tokens[:, 1:].mean(dim=1)
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pooling].numpy()


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_onnx_output_equals_pytorch(
    case: tuple[str, str], local_export: Callable[[str, str], LocalExport]
) -> None:
    exported = local_export(*case)
    processor = AutoImageProcessor.from_pretrained(exported.checkpoint, use_fast=False)
    images = [Image.open(io.BytesIO(i.data)).convert("RGB") for i in parity_images(include_huge=False)]
    # Every decoded image is height x width x channels; say so, or HF misreads the 1 and 3 px high ones.
    pixels = processor(images=images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    expected = torch_embeddings(exported.family, exported.pooling, exported.checkpoint, pixels)
    got = run(open_session(exported.directory / "model.onnx", 1), pixels.numpy())
    dim = expected_dim(exported.family, exported.pooling)
    assert got.shape == expected.shape == (len(images), dim)
    assert np.abs(unit(got) - unit(expected)).max() <= TOLERANCE


# --- random-init labelling ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_clip_export", "tiny_dinov2_export", "tiny_siglip_export"])
def test_random_init_export_is_labelled_everywhere(fixture: str, request: pytest.FixtureRequest) -> None:
    exported = request.getfixturevalue(fixture)
    assert exported.process.returncode == 0
    assert "RANDOM-INIT" in exported.process.stderr and "NOT PRETRAINED" in exported.process.stderr
    spec = load_spec(exported.directory / "model.json")
    assert spec.provenance is not None
    assert (spec.provenance.weights, spec.provenance.seed) == ("random-init", exported.seed)
    assert spec.weights_kind == "random-init" and spec.verified
    assert spec.provenance.source == exported.directory.name  # the architecture name, e.g. tiny-clip
    assert spec.aliases == ()  # test-only architectures have no hub id to answer to
    assert spec.pooling == POOLINGS[spec.family][0]  # no --pooling: the family default


def test_random_init_source_stays_an_architecture_name_when_a_path_of_that_name_exists(
    tmp_path: Path,
) -> None:
    """Regression: run from a directory where `--out tiny-clip` creates ./tiny-clip, the exporter
    recorded the source as that path, and `python -m export.parity` could no longer rebuild the
    reference ("knows no architecture '/.../tiny-clip'")."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [
        sys.executable,
        "-m",
        "export",
        "clip",
        "tiny-clip",
        "--random-init",
        "--out",
        "tiny-clip",
        "--no-huge",
    ]
    process = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert process.returncode == 0, output(process)
    provenance = load_spec(tmp_path / "tiny-clip" / "model.json").provenance
    assert provenance is not None and provenance.source == "tiny-clip"


# --- the gate fails when something is slightly off ----------------------------------------------


def copy_model(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def edit_spec(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit model.json as plain JSON, so the test does not depend on the writer it checks."""
    path = directory / "model.json"
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body, indent=2))


@pytest.mark.parametrize("fixture", ["tiny_clip_dir", "tiny_dinov2_dir"])
def test_gate_fails_on_a_perturbed_graph(
    fixture: str, request: pytest.FixtureRequest, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(request.getfixturevalue(fixture), tmp_path)
    perturb_first_layernorm(directory / "model.onnx")
    new_sha = sha256(directory / "model.onnx")
    edit_spec(directory, lambda body: body.update(onnx_sha256=new_sha))  # only the numbers differ now

    process = run_parity(directory, "--no-huge")
    assert process.returncode != 0, output(process)
    assert "FAIL" in process.stdout + process.stderr
    spec = load_spec(directory / "model.json")
    assert spec.parity is not None and spec.parity.verified is False and not spec.verified
    assert spec.parity.onnx_sha256 == new_sha  # judged the perturbed file, not a stale one
    rows = json.loads((directory / "parity.json").read_text())["images"]
    assert all(row["pixel_max_abs"] == 0.0 for row in rows)  # the preprocessing is still exact
    assert max(row["normalized_max_abs"] for row in rows) > TOLERANCE


def nudge_mean(body: dict[str, Any]) -> None:
    body["preprocessing"]["mean"][0] += 1e-3


def test_gate_fails_on_perturbed_preprocessing(
    tiny_dinov2_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(tiny_dinov2_dir, tmp_path)
    edit_spec(directory, nudge_mean)

    process = run_parity(directory, "--no-huge")
    assert process.returncode != 0, output(process)
    assert "FAIL" in process.stdout + process.stderr
    spec = load_spec(directory / "model.json")
    assert spec.parity is not None and not spec.parity.verified and spec.parity.max_abs_pixels > 0
    rows = json.loads((directory / "parity.json").read_text())["images"]
    assert all(row["pixel_max_abs"] > 0 for row in rows)  # channel 0 of every image is off


@pytest.mark.parametrize("which", ["random-init", "checkpoint"])
def test_gate_passes_again_on_an_unchanged_export(
    which: str,
    request: pytest.FixtureRequest,
    local_export: Callable[[str, str], LocalExport],
    run_parity: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Both ways the gate rebuilds the PyTorch side from provenance: seeded architecture, checkpoint dir."""
    source = (
        request.getfixturevalue("tiny_clip_dir")
        if which == "random-init"
        else local_export("dinov2", "cls").directory
    )
    directory = copy_model(source, tmp_path)
    before = load_spec(directory / "model.json")

    process = run_parity(directory, "--no-huge")
    assert process.returncode == 0, output(process)
    assert "PASSED" in process.stdout
    after = load_spec(directory / "model.json")
    assert after.verified
    assert without_parity(after) == without_parity(before)  # the gate rewrites its summary only


def test_gate_fails_on_a_model_json_naming_another_graph(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    """A model.json that names another graph (stale onnx_sha256) fails the gate (docs/models.md:
    "`model.json`'s `onnx_sha256` is this graph's"): exit 1, the reason printed, and a model.json
    the server will not take as verified. The hash is kept, not rewritten to the graph's."""
    directory = copy_model(tiny_clip_dir, tmp_path)
    edit_spec(directory, lambda body: body.update(onnx_sha256="0" * 64))
    process = run_parity(directory, "--no-huge")
    assert process.returncode == 1, output(process)
    assert "onnx_sha256 mismatch" in process.stderr and "not this graph's" in process.stdout, output(process)
    after = load_spec(directory / "model.json")
    assert after.onnx_sha256 == "0" * 64 and not after.verified
    assert after.parity is not None and not after.parity.verified


def without_parity(spec: ModelSpec) -> ModelSpec:
    """The spec minus what the gate writes: its summary, and the text tower's (CLIP)."""
    text = spec.text.model_copy(update={"parity": None}) if spec.text is not None else None
    return spec.model_copy(update={"parity": None, "text": text})


# --- misuse ---------------------------------------------------------------------------------------

BAD_USES = {
    "unknown-architecture": (
        ["clip", "no-such-arch", "--random-init"],
        "knows no architecture 'no-such-arch'",
    ),
    "family-mismatch": (
        ["dinov2", "tiny-clip", "--random-init"],
        "tiny-clip is a clip architecture, not dinov2",
    ),
    "pooling-not-for-clip": (
        ["clip", "tiny-clip", "--random-init", "--pooling", "mean"],
        "--pooling mean is not valid for clip",
    ),
    "missing-local-checkpoint": (
        ["clip", "/nonexistent/checkpoint-dir"],
        "cannot load an image processor from '/nonexistent/checkpoint-dir'",
    ),
}


def test_invalid_model_name_is_refused_before_any_work(
    export_model: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "Bad+Name"
    process = export_model("clip", "tiny-clip", out, "--random-init")
    assert process.returncode != 0
    assert "the folder name is the model name" in process.stderr, output(process)
    assert not out.exists()


@pytest.mark.parametrize("use", BAD_USES.values(), ids=BAD_USES.keys())
def test_bad_cli_use_exits_non_zero_with_a_clear_message(
    use: tuple[list[str], str], export_model: Callable[..., Any], tmp_path: Path
) -> None:
    (family, source, *extra), message = use
    out = tmp_path / "bad"
    process = export_model(family, source, out, *extra)
    assert process.returncode != 0
    assert message in process.stderr, output(process)
    assert "Traceback" not in process.stderr  # a message for the user, not a crash
    assert not (out / "model.json").exists() and not (out / "model.onnx").exists()
