"""Full-size random-init exports through the CLI with the complete parity set, huge images included.

This is the real gate at real model sizes (ViT-B/32 CLIP and ViT-S/14 DINOv2): tiny models can
hide accumulation error that 12 layers of 384-768 wide blocks do not. The exports are conftest
session fixtures (`clip_b32_dir`, `dinov2_small_dir`) because the server tests serve them too.
How long an export takes is a figure of `make bench` (bench/timings.py), not a budget here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from embedder.spec import load_spec
from export.images import parity_images

TOLERANCE = 1e-6
ALL_IMAGE_NAMES = [image.name for image in parity_images(include_huge=True)]
FULL_SIZE = {  # fixture -> (hub id, embedding dim of the architecture)
    "clip_b32_export": ("openai/clip-vit-base-patch32", 512),
    "dinov2_small_export": ("facebook/dinov2-small", 384),
}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fixture", FULL_SIZE)
def test_full_size_export_passes_the_whole_gate(fixture: str, request: pytest.FixtureRequest) -> None:
    exported: Any = request.getfixturevalue(fixture)
    source, dim = FULL_SIZE[fixture]
    assert exported.process.returncode == 0
    spec = load_spec(exported.directory / "model.json")
    assert spec.verified and spec.embedding_dim == dim
    assert spec.provenance is not None and (spec.provenance.source, spec.provenance.weights) == (
        source,
        "random-init",
    )
    report = json.loads((exported.directory / "parity.json").read_text())
    assert [row["name"] for row in report["images"]] == ALL_IMAGE_NAMES  # huge images included
    assert max(row["normalized_max_abs"] for row in report["images"]) <= TOLERANCE
    assert all(row["pixel_max_abs"] == 0.0 for row in report["images"])
    assert report["batch_normalized_max_abs"] <= TOLERANCE
    ops = {node.op_type for node in onnx.load(str(exported.directory / spec.onnx_file)).graph.node}
    assert "Resize" not in ops


def test_full_size_fixtures_are_named_like_the_committed_models(
    clip_b32_dir: Path, dinov2_small_dir: Path
) -> None:
    """The server tests rely on these directory names (the model name is the directory name)."""
    assert load_spec(clip_b32_dir / "model.json").name == "clip-vit-base-patch32" == clip_b32_dir.name
    assert load_spec(dinov2_small_dir / "model.json").name == "dinov2-small" == dinov2_small_dir.name
