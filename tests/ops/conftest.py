"""Fixtures for the operations tests: the repository's Dockerfile, the session's tiny CLIP export,
and real `embedder serve` processes on 127.0.0.1 (tests/support/processes.py; no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.ops.dockerfile import Dockerfile
from tests.support import REPO
from tests.support.images import encode
from tests.support.models import make_models_dir
from tests.support.processes import ServerProcess, running


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Path:
    """A models dir with a copy of the session's tiny CLIP export, alone (read-only)."""
    return make_models_dir(tmp_path_factory.mktemp("ops-models"), tiny_clip_dir)


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return encode(Image.new("RGB", (64, 48), (200, 40, 90)), "PNG")


@pytest.fixture
def replicas(tiny_models_dir: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two `embedder serve` processes of the main venv on one shared models dir, both SERVING."""
    servers = [ServerProcess(tiny_models_dir, tmp_path / f"replica{i}.log", metrics=True) for i in range(2)]
    with running(*servers) as started:
        yield started
