"""int8 variants: gated by cosine to the fp32 graph, labelled, and served one image per run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.client import EmbedderClient
from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import load_spec
from export.images import parity_images
from export.parity import INT8_MIN_COSINE


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory, export_model: Callable[..., Any]) -> Path:
    out = tmp_path_factory.mktemp("int8") / "tiny-clip-int8"
    process = export_model("clip", "tiny-clip", out, "--random-init", "--quantize", "int8", "--no-huge")
    assert process.returncode == 0, process.stderr[-3000:]
    return out


def test_int8_export_passes_its_cosine_gate_and_is_labelled(int8_dir: Path) -> None:
    spec = load_spec(int8_dir / "model.json")
    assert spec.verified and spec.provenance is not None
    assert spec.provenance.quantization and "int8" in spec.provenance.quantization
    assert spec.batch_invariant is False
    report = json.loads((int8_dir / "parity.json").read_text())
    assert report["verified"] and report["criterion"]["min_cosine"] == INT8_MIN_COSINE
    for image in report["images"]:
        assert image["pixel_max_abs"] == 0.0 and image["cosine"] >= INT8_MIN_COSINE, image["name"]


def test_int8_rows_depend_on_batch_mates_so_the_server_runs_them_alone(
    int8_dir: Path, tmp_path: Path
) -> None:
    spec = load_spec(int8_dir / "model.json")
    pre = Preprocessor(spec.preprocessing)
    session = open_session(int8_dir / spec.onnx_file, 1)
    images = [item.data for item in parity_images(include_huge=False)[:8]]
    singles = np.stack([run(session, pre.from_bytes(d)[None])[0] for d in images])
    batched = run(session, np.stack([pre.from_bytes(d) for d in images]))
    assert np.abs(batched - singles).max() > 1e-6  # why batch_invariant is false
    models = tmp_path / "models"
    models.mkdir()
    (models / int8_dir.name).symlink_to(int8_dir)
    server = EmbedderServer(Settings(address="127.0.0.1:0", models_dir=models, max_batch_delay_ms=50.0))
    port = server.start()
    try:
        with EmbedderClient(f"127.0.0.1:{port}") as client:
            served = client.embed("tiny-clip-int8", images).embeddings
    finally:
        server.stop(0)
    assert np.abs(served - singles).max() <= 1e-6
