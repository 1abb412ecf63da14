"""A real server on port 0 over real exported graphs, driven by a real gRPC client.

Nothing of `embedder` is mocked: models are exported through the real CLI (the session fixtures
`tiny_clip_dir`, `tiny_dinov2_dir`, `clip_b32_dir`, `dinov2_small_dir` of tests/conftest.py), the
server is `EmbedderServer(Settings(...))`, requests go over a socket. Those exports are read-only:
a test that changes a model works on a copy (`make_models`). Every server a test starts is stopped
(grace 0) when the test or module ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.client import EmbedderClient
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from export.images import ParityImage, parity_images
from tests.conftest import export_or_fail

# Quick to start and stop; everything else is the server's own default.
TEST_SETTINGS: dict[str, Any] = {"shutdown_grace_s": 0.0}


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


def add_model(models_dir: Path, source: Path, name: str | None = None) -> Path:
    """Copy an exported model into `models_dir`; a new name is written through the schema
    (and the aliases dropped, so a copy never claims its original's aliases)."""
    name = name or load_spec(source / SPEC_FILE).name
    target = models_dir / name
    shutil.copytree(source, target)
    spec = load_spec(target / SPEC_FILE)
    if spec.name != name:
        write_spec(spec.model_copy(update={"name": name, "aliases": ()}), target / SPEC_FILE)
    return target


def make_models_dir(root: Path, *models: Path | tuple[Path, str]) -> Path:
    """A fresh models dir holding copies of `models` (a dir, or (dir, new name))."""
    root.mkdir(parents=True, exist_ok=True)
    for item in models:
        source, name = item if isinstance(item, tuple) else (item, None)
        add_model(root, source, name)
    return root


@dataclass
class Served:
    """A started server and the clients that talk to it over the socket."""

    server: EmbedderServer
    address: str
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.EmbedderStub = field(init=False)
    health_stub: health_pb2_grpc.HealthStub = field(init=False)
    client: EmbedderClient = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        # No retries: an UNAVAILABLE must reach the test as it was sent.
        self.client = EmbedderClient(self.address, retries=0, timeout=60.0)

    def embed(self, model: str, images: list[bytes], **options: Any) -> np.ndarray:
        return self.client.embed(model, images, **options).embeddings

    def call(self, request: pb.EmbedRequest, timeout: float = 60.0) -> pb.EmbedResponse:
        response: pb.EmbedResponse = self.stub.Embed(request, timeout=timeout)
        return response

    def rpc_error(self, request: pb.EmbedRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(request)
        return caught.value

    def health(self, service: str = "") -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's own Prometheus registry (0 when the series does not exist yet)."""
        return self.server.telemetry.registry.get_sample_value(name, labels) or 0.0

    def loads(self, model: str) -> float:
        return self.metric("embedder_model_loads_total", model=model)

    def models(self) -> dict[str, pb.ModelStatus]:
        return {m.info.name: m for m in self.client.list_models()}

    def close(self) -> None:
        self.client.close()
        self.channel.close()


@contextmanager
def _serving(models_dir: Path, **overrides: Any) -> Iterator[Served]:
    server = EmbedderServer(
        Settings(address="127.0.0.1:0", models_dir=models_dir, **{**TEST_SETTINGS, **overrides})
    )
    try:
        served = Served(server, f"127.0.0.1:{server.start()}")
        try:
            yield served
        finally:
            served.close()
    finally:
        server.stop(0)


@pytest.fixture(scope="session")
def serving() -> Callable[..., AbstractContextManager[Served]]:
    """`with serving(models_dir, **settings) as served:` for servers that outlive one test."""
    return _serving


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """`serve(models_dir, **settings)` -> a started server, stopped after the test."""
    with ExitStack() as stack:
        yield lambda models_dir, **overrides: stack.enter_context(_serving(models_dir, **overrides))


@pytest.fixture(scope="session")
def make_models() -> Callable[..., Path]:
    """`make_models(root, dir, (dir, new_name), ...)` -> a models dir holding copies."""
    return make_models_dir


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> Path:
    """Both tiny families side by side, under their exported names."""
    return make_models_dir(tmp_path_factory.mktemp("models"), tiny_clip_dir, tiny_dinov2_dir)


@pytest.fixture(scope="module")
def tiny_server(tiny_models: Path) -> Iterator[Served]:
    """One server for a module's read-only tests."""
    with _serving(tiny_models) as served:
        yield served
