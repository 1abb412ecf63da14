"""Fixtures for the hardening suite: real tiny models, real servers on 127.0.0.1, an offline twin.

Models come from the session exports of tests/conftest.py (`tiny_clip_dir`, `tiny_dinov2_dir`,
exported through the real CLI); they are read-only, so this suite serves copies. In-process
servers (`serve`) are `EmbedderServer(Settings(...))` on port 0, always stopped with grace 0;
where process behaviour matters (signals, RSS) the tests use `process.ServerProcess` instead.

`Offline` is the served pipeline without the server: the same Preprocessor with the same limits
and the same ONNX session configuration, so a served vector must equal it bit for bit.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.preprocess import DecodeLimits, Preprocessor
from embedder.runtime import open_session, run
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import channel_options
from tests.hardening.corpus import encode, picture
from tests.hardening.process import ServerProcess

CLIP = "tiny-clip"
DINO = "tiny-dinov2"


@pytest.fixture(scope="session")
def hardening_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> Path:
    """A models dir with copies of both tiny exports, under their exported names (read-only)."""
    root = tmp_path_factory.mktemp("hardening-models")
    for source in (tiny_clip_dir, tiny_dinov2_dir):
        shutil.copytree(source, root / load_spec(source / SPEC_FILE).name)
    return root


@pytest.fixture(scope="session")
def good_jpeg() -> bytes:
    return encode(picture(160, 120, 11), "JPEG", quality=90)


def image_request(*images: bytes, model: str = CLIP) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=model, images=[pb.Image(data=data) for data in images])


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(-1, response.model.dim)


@dataclass
class Served:
    """A started in-process server and a plain stub on one channel (no retries: statuses as sent)."""

    server: EmbedderServer
    address: str
    max_message_bytes: int
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.EmbedderStub = field(init=False)
    health_stub: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.address, options=channel_options(self.max_message_bytes, False)
        )
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def embed(self, *images: bytes, model: str = CLIP, timeout: float = 60.0) -> np.ndarray:
        return vectors(self.stub.Embed(image_request(*images, model=model), timeout=timeout))

    def error(self, request: pb.EmbedRequest, timeout: float = 60.0) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.stub.Embed(request, timeout=timeout)
        return caught.value

    def health(self, service: str = "") -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's own Prometheus registry (0 when the series does not exist yet)."""
        return self.server.telemetry.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def serving(models_dir: Path, **overrides: Any) -> Iterator[Served]:
    settings = Settings(
        address="127.0.0.1:0", models_dir=models_dir, **{"shutdown_grace_s": 0.0, **overrides}
    )
    server = EmbedderServer(settings)
    try:
        served = Served(server, f"127.0.0.1:{server.start()}", settings.max_message_bytes)
        try:
            yield served
        finally:
            served.channel.close()
    finally:
        server.stop(0)


@pytest.fixture
def serve(hardening_models: Path) -> Iterator[Callable[..., Served]]:
    """`serve(**settings)` -> a started server over the tiny models, stopped after the test."""
    with ExitStack() as stack:
        yield lambda models_dir=hardening_models, **overrides: stack.enter_context(
            serving(models_dir, **overrides)
        )


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
def spawn(tmp_path: Path, hardening_models: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`spawn(*flags)` -> a SERVING `embedder serve` subprocess over the tiny models; stopped
    (SIGTERM, then SIGKILL) after the test whatever happened."""
    started: list[ServerProcess] = []

    def start(*flags: str, models_dir: Path = hardening_models) -> ServerProcess:
        proc = ServerProcess(models_dir, tmp_path / f"server-{len(started)}.log", *flags)
        started.append(proc)
        proc.wait_serving()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
