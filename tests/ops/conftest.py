"""Fixtures for the operations tests: the repository's Dockerfile, a tiny model exported through
the real exporter, and real `embedder serve` processes on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.ops.dockerfile import Dockerfile
from tests.ops.servers import REPO, TINY_MODEL, ServerProcess, clean_env


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with one tiny random-init CLIP, exported by the real exporter (needs torch:
    the main venv has it)."""
    models = tmp_path_factory.mktemp("ops-models")
    argv = [
        sys.executable,
        "-m",
        "export",
        "clip",
        TINY_MODEL,
        "--random-init",
        "--no-huge",
        "--out",
        str(models / TINY_MODEL),
    ]
    done = subprocess.run(
        argv, check=False, cwd=REPO, capture_output=True, text=True, timeout=300, env=clean_env()
    )
    assert done.returncode == 0, f"export failed:\n{done.stdout}\n{done.stderr}"
    return models


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def replicas(tiny_models_dir: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two `embedder serve` processes of the main venv on one shared models dir, both SERVING."""
    command = [sys.executable, "-m", "embedder", "serve"]
    servers = [ServerProcess(command, tiny_models_dir, tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        for server in servers:
            server.wait_serving()
        yield servers
    finally:
        for server in servers:
            server.terminate()
