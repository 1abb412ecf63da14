"""The golden self-check: every export carries a few gate inputs with PyTorch's vectors; a server
re-embeds them when it loads the graph, and `embedder verify` re-embeds them over gRPC."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import build_request
from embedder.golden import TOLERANCE, cpu_flags, load_golden, write_golden
from embedder.spec import SPEC_FILE, file_sha256, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from export.parity_texts import parity_texts
from tests.support.commands import run_module
from tests.support.images import encode, picture
from tests.support.inprocess import serving
from tests.support.models import CLIP, DINO, make_models_dir
from tests.support.processes import clean_env


def embedder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_module("embedder", *args, env=clean_env(), timeout=180)


def alter_golden(model_dir: Path, *, images: bool = True, texts: bool = False) -> None:
    """Nudges the reference vectors of a copied model's golden set, as a changed graph would."""
    spec = load_spec(model_dir / SPEC_FILE)
    assert spec.golden is not None
    path = model_dir / spec.golden.file
    golden = load_golden(path, spec.golden.sha256)
    nudge = np.zeros_like(golden.vectors)
    nudge[:, 0] = 1e-3 * np.linalg.norm(golden.vectors, axis=1)
    write_golden(
        path,
        replace(
            golden,
            vectors=golden.vectors + nudge * images,
            text_vectors=golden.text_vectors + (nudge[: len(golden.texts)] * texts if texts else 0),
        ),
    )
    write_spec(
        spec.model_copy(update={"golden": spec.golden.model_copy(update={"sha256": file_sha256(path)})}),
        model_dir / SPEC_FILE,
    )


def test_exports_carry_a_small_golden_set(tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> None:
    for directory in (tiny_clip_dir, tiny_dinov2_dir):
        spec = load_spec(directory / SPEC_FILE)
        assert spec.golden is not None
        path = directory / spec.golden.file
        assert path.stat().st_size < 1 << 20
        golden = load_golden(path, spec.golden.sha256)
        assert len(golden.images) == spec.golden.images >= 4
        assert golden.vectors.shape == (len(golden.images), spec.embedding_dim)
        assert len(golden.texts) == spec.golden.texts
        if spec.text is None:  # DINOv2: no text tower, so no texts
            assert golden.texts == [] and golden.text_vectors.size == 0
        else:  # CLIP: at least 4 of the gate's own texts, each with a vector of the model's width
            assert len(golden.texts) >= 4 and set(golden.texts) <= {t.text for t in parity_texts()}
            assert golden.text_vectors.shape == (len(golden.texts), spec.embedding_dim)
    assert load_spec(tiny_clip_dir / SPEC_FILE).text is not None  # both branches above ran
    assert load_spec(tiny_dinov2_dir / SPEC_FILE).text is None


def test_a_matching_golden_set_is_reported_with_its_figure(tiny_models: Path) -> None:
    with serving(tiny_models, preload=True) as served:
        statuses = served.models()
    for name in (CLIP, DINO):
        check = statuses[name].self_check
        assert check.state == "passed" and 0 <= check.max_abs <= 1e-6, check
        assert check.inputs >= 4 and check.cpu_flags == cpu_flags() and check.seconds > 0
    text = statuses[CLIP].text.self_check
    assert text.state == "passed" and text.max_abs <= 1e-6 and text.inputs >= 4


def test_an_altered_reference_refuses_the_model_unless_allowed(
    tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = make_models_dir(tmp_path / "models", tiny_clip_dir, tiny_dinov2_dir)
    alter_golden(models / CLIP)  # the image references only: the text tower still matches
    image = encode(picture(64, 48, seed=1), "PNG")
    with caplog.at_level(logging.ERROR, logger="embedder"), serving(models) as served:
        error = served.error(build_request(CLIP, [image]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "golden self-check failed" in str(error.details()) and "max-abs" in str(error.details())
        status = served.models()[CLIP]
        assert status.state == pb.MODEL_STATE_UNAVAILABLE and "golden self-check failed" in status.error
        assert status.self_check.state == "failed" and status.self_check.max_abs > TOLERANCE
        assert served.health(CLIP) == "NOT_SERVING"
        again = served.error(build_request(CLIP, [image]))
        assert again.code() == grpc.StatusCode.UNAVAILABLE  # refused at once, not loaded again
        assert served.loads(CLIP) == 0
        assert served.texts(CLIP, "the text tower checks its own references").shape == (1, 16)
        assert served.models()[CLIP].text.self_check.state == "passed"
        assert served.vectors(image, model=DINO).shape == (1, 32)  # the other model is unaffected
    assert any(
        "golden self-check failed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )
    with serving(models, allow_golden_mismatch=True, preload=True) as served:
        check = served.models()[CLIP].self_check
        assert check.state == "failed, served anyway" and check.max_abs > TOLERANCE
        assert served.health(CLIP) == "SERVING"
        assert served.vectors(image, model=CLIP).shape == (1, 16)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_golden_file_is_refused_with_the_reason(
    tmp_path: Path, tiny_dinov2_dir: Path, damage: str
) -> None:
    models = make_models_dir(tmp_path / "models", tiny_dinov2_dir)
    spec = load_spec(models / DINO / SPEC_FILE)
    assert spec.golden is not None
    path = models / DINO / spec.golden.file
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-100])
    with serving(models, preload=True) as served:
        status = served.models()[DINO]
        assert status.state == pb.MODEL_STATE_UNAVAILABLE
        assert "golden set refused" in status.error
        assert ("cannot be read" if damage == "missing" else "does not match model.json") in status.error


def test_an_export_without_a_golden_set_is_served_as_not_self_checked(
    tmp_path: Path, tiny_dinov2_dir: Path
) -> None:
    models = make_models_dir(tmp_path / "models", tiny_dinov2_dir)
    spec = load_spec(models / DINO / SPEC_FILE)
    write_spec(spec.model_copy(update={"golden": None}), models / DINO / SPEC_FILE)
    with serving(models, preload=True) as served:
        assert served.models()[DINO].self_check.state == "not self-checked"
        assert served.health(DINO) == "SERVING"


def test_verify_exits_0_on_a_matching_server_and_1_otherwise(
    tmp_path: Path, tiny_models: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> None:
    with serving(tiny_models) as served:
        done = embedder("verify", "--server", served.address, "--models-dir", tiny_models)
        assert done.returncode == 0, done.stdout + done.stderr
        results = {r["model"]: r for r in map(json.loads, done.stdout.splitlines())}
        assert {r["result"] for r in results.values()} == {"passed"}
        assert results[CLIP]["max_abs"] <= TOLERANCE and results[CLIP]["inputs"] >= 8  # images and texts

        altered = make_models_dir(tmp_path / "altered", tiny_clip_dir)
        alter_golden(altered / CLIP, images=False, texts=True)
        done = embedder("verify", "--server", served.address, "--models-dir", altered, "--model", CLIP)
        assert done.returncode == 1
        (result,) = map(json.loads, done.stdout.splitlines())
        assert result["result"] == "failed" and result["max_abs"] > TOLERANCE

    # The server serves another graph under the folder's name: the sha256 tells.
    other = make_models_dir(tmp_path / "other", (tiny_dinov2_dir, CLIP))
    with serving(other) as served:
        done = embedder("verify", "--server", served.address, "--models-dir", tiny_models, "--model", CLIP)
        assert done.returncode == 1
        (result,) = map(json.loads, done.stdout.splitlines())
        assert result["result"] == "failed" and "onnx_sha256" in result["reason"]
    shutil.rmtree(other)
