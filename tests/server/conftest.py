"""A real server on port 0 over real exported graphs, driven by a real gRPC client.

Nothing of `embedder` is mocked: models are exported through the real CLI (the session fixtures
`tiny_clip_dir`, `tiny_dinov2_dir`, `clip_b32_dir`, `dinov2_small_dir` of tests/conftest.py), the
server is `EmbedderServer(Settings(...))` (tests/support/inprocess.py), requests go over a socket.
Those exports are read-only: a test that changes a model works on a copy
(`tests.support.models.make_models_dir`). Every server a test starts is stopped (grace 0) when
the test or module ends (`serve` of tests/conftest.py, `serving`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from export.images import ParityImage, parity_images
from tests.conftest import export_or_fail
from tests.support.inprocess import Served, serving


@pytest.fixture(scope="session")
def aliased_dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-dinov2 exported under another name with two `--alias` flags."""
    out = tmp_path_factory.mktemp("export") / "dino-aliased"
    export_or_fail(
        "dinov2",
        "tiny-dinov2",
        out,
        "--random-init",
        "--no-huge",
        "--alias",
        "acme/tiny-dino",
        "--alias",
        "tiny-dino",
    )
    return out


@pytest.fixture(scope="session")
def parity_set() -> list[ParityImage]:
    return parity_images(include_huge=False)


@pytest.fixture(scope="module")
def tiny_server(tiny_models: Path) -> Iterator[Served]:
    """One server for a module's read-only tests."""
    with serving(tiny_models) as served:
        yield served
