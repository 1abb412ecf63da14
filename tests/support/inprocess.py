"""A real `EmbedderServer` in this process on 127.0.0.1:0, and the clients a test talks to it with
over the socket. Nothing of `embedder` is replaced: requests go through gRPC like anyone's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.client import EmbedderClient, ImageLike, build_request, to_numpy
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import DEFAULT_MAX_MESSAGE_BYTES, channel_options

TIMEOUT_S = 60.0


@dataclass
class Served:
    """A started server; a plain stub and an `EmbedderClient` on it, neither retrying, so every
    status reaches the test as the server sent it."""

    server: EmbedderServer
    address: str
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.EmbedderStub = field(init=False)
    health_stub: health_pb2_grpc.HealthStub = field(init=False)
    client: EmbedderClient = field(init=False)

    def __post_init__(self) -> None:
        # Never under the client default: a request over a server's lowered limit must reach the
        # server, whose refusal is what a test checks.
        limit = max(self.server.settings.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES)
        self.channel = grpc.insecure_channel(self.address, options=channel_options(limit, False))
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.client = EmbedderClient(self.address, retries=0, timeout=TIMEOUT_S)

    def embed(self, model: str, images: Sequence[ImageLike], **options: Any) -> np.ndarray:
        """Through `EmbedderClient.embed` (its request building and options)."""
        return self.client.embed(model, images, **options).embeddings

    def vectors(self, *images: bytes, model: str, timeout: float = TIMEOUT_S) -> np.ndarray:
        """Through the plain stub: the request is exactly these bytes."""
        return to_numpy(self.call(build_request(model, images), timeout)).embeddings

    def call(
        self, request: pb.EmbedRequest | pb.EmbedTextRequest, timeout: float = TIMEOUT_S
    ) -> pb.EmbedResponse:
        """Embed or EmbedText, by the request's type, through the plain stub."""
        method = self.stub.EmbedText if isinstance(request, pb.EmbedTextRequest) else self.stub.Embed
        response: pb.EmbedResponse = method(request, timeout=timeout)
        return response

    def texts(self, model: str, *texts: str, normalize: bool = False) -> np.ndarray:
        """Through the plain stub's EmbedText."""
        request = pb.EmbedTextRequest(model=model, texts=texts, normalize=normalize)
        return to_numpy(self.call(request)).embeddings

    def error(
        self, request: pb.EmbedRequest | pb.EmbedTextRequest, timeout: float = TIMEOUT_S
    ) -> grpc.RpcError:
        """The error a request must end with (the test fails if it succeeds)."""
        with pytest.raises(grpc.RpcError) as caught:
            self.call(request, timeout)
        return caught.value

    def health(self, service: str = "") -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the server's own samples of `name` whose labels include `labels` (0 when
        none exists yet), as a query by those labels would read it."""
        return sum(
            sample.value
            for family in self.server.telemetry.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def loads(self, model: str, modality: str = "image") -> float:
        return self.metric("embedder_model_loads_total", model=model, modality=modality)

    def models(self) -> dict[str, pb.ModelStatus]:
        return {m.info.name: m for m in self.client.list_models()}

    def close(self) -> None:
        self.client.close()
        self.channel.close()


@contextmanager
def serving(models_dir: Path, **overrides: Any) -> Iterator[Served]:
    """A server over `models_dir` with these settings (quick to stop: grace 0 unless given)."""
    settings = Settings(
        address="127.0.0.1:0", models_dir=models_dir, **{"shutdown_grace_s": 0.0, **overrides}
    )
    server = EmbedderServer(settings)
    try:
        served = Served(server, f"127.0.0.1:{server.start()}")
        try:
            yield served
        finally:
            served.close()
    finally:
        server.stop(0)
