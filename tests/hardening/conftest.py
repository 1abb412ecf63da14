"""Fixtures for the hardening suite: real tiny models, real servers on 127.0.0.1, an offline twin.

Models are `tiny_models` of tests/conftest.py: copies of the session exports, read-only. In-process
servers (`serve` of tests/conftest.py, `tests.support.inprocess.serving`) are
`EmbedderServer(Settings(...))` on port 0, always stopped with grace 0; where process behaviour
matters (signals, RSS) the tests `spawn` a `tests.support.processes.ServerProcess` instead.

`Offline` is the served pipeline without the server: the same Preprocessor with the same limits
and the same ONNX session configuration, so a served vector must equal it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from embedder.client import build_request
from embedder.preprocess import DecodeLimits, Preprocessor
from embedder.runtime import open_session, run
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from tests.support.images import encode, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP
from tests.support.processes import ServerProcess


@pytest.fixture(scope="session")
def good_jpeg() -> bytes:
    return encode(picture(160, 120, 11), "JPEG", quality=90)


def image_request(*images: bytes, model: str = CLIP) -> pb.EmbedRequest:
    return build_request(model, images)


class Offline:
    """One model's served pipeline run directly: decode + preprocess with the server's limits, then
    the exported graph in a session configured as the server configures its own."""

    def __init__(self, model_dir: Path, settings: Settings, intra_op_threads: int) -> None:
        spec = load_spec(model_dir / SPEC_FILE)
        limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, max_resized_pixels=settings.max_resized_pixels
        )
        self.preprocessor = Preprocessor(spec.preprocessing, limits)
        self.session = open_session(model_dir / spec.onnx_file, intra_op_threads)

    def vector(self, data: bytes) -> np.ndarray:
        """Raises InvalidImage exactly where the server must answer INVALID_ARGUMENT."""
        return run(self.session, self.preprocessor.from_bytes(data)[None])[0]


def offline_for(served: Served, model: str = CLIP) -> Offline:
    server = served.server
    return Offline(server.repository.entries[model].directory, server.settings, server.plan.intra_op)


@pytest.fixture
def spawn(tmp_path: Path, tiny_models: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`spawn(*flags)` -> a SERVING `embedder serve` subprocess over the tiny models; stopped
    (SIGTERM, then SIGKILL) after the test whatever happened."""
    started: list[ServerProcess] = []

    def start(*flags: str, models_dir: Path = tiny_models) -> ServerProcess:
        started.append(ServerProcess(models_dir, tmp_path / f"server-{len(started)}.log", *flags))
        started[-1].wait_serving()
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()
