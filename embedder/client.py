"""Python client: deadlines by default, retries with backoff on UNAVAILABLE (and on a CANCELLED
that no handler answered: see `retryable`), message sizes matching the server, numpy output,
chunking of large jobs, sync and asyncio.

    with EmbedderClient("127.0.0.1:50051") as client:
        result = client.embed("clip-vit-base-patch32", [Path("a.jpg"), jpeg_bytes], normalize=True)
        result.embeddings  # np.ndarray [N, D] float32

A target with several addresses (`ipv4:10.0.0.1:50051,10.0.0.2:50051`) or a DNS name resolving
to several replicas is balanced per call with gRPC's `round_robin` policy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypedDict, TypeVar, Unpack, cast

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .v1 import embedder_pb2 as pb
from .v1 import embedder_pb2_grpc as pb_grpc
from .wire import DEFAULT_MAX_MESSAGE_BYTES, REQUEST_ID_KEY, channel_options

ImageLike = bytes | str | Path
T = TypeVar("T")
C = TypeVar("C")  # a sync or an asyncio channel


@dataclass(frozen=True)
class Embeddings:
    embeddings: np.ndarray  # [N, D] float32, in request order
    aggregate: np.ndarray | None
    model: pb.ModelInfo


def _image(item: ImageLike) -> pb.Image:
    if isinstance(item, bytes):
        return pb.Image(data=item)
    return pb.Image(data=Path(item).read_bytes())


def server_path(path: str) -> pb.Image:
    """An image the server reads from its own image root (`--image-root`)."""
    return pb.Image(path=path)


class Options(TypedDict, total=False):
    """Embed's options: `aggregate="mean"` also returns the mean of the vectors (re-normalised
    with `normalize_aggregate`), `aggregate_only` only that."""

    normalize: bool
    aggregate: Literal["mean"] | None
    normalize_aggregate: bool
    aggregate_only: bool


def build_request(
    model: str,
    images: Sequence[ImageLike | pb.Image],
    *,
    normalize: bool = False,
    aggregate: Literal["mean"] | None = None,
    normalize_aggregate: bool = False,
    aggregate_only: bool = False,
) -> pb.EmbedRequest:
    """`aggregate="mean"`: also the mean of the returned vectors; `aggregate_only`: only that."""
    if aggregate not in (None, "mean"):
        raise ValueError(f"aggregate must be None or 'mean', not {aggregate!r}")
    return pb.EmbedRequest(
        model=model,
        images=[item if isinstance(item, pb.Image) else _image(item) for item in images],
        normalize=normalize,
        aggregate=pb.AGGREGATION_MEAN if aggregate == "mean" else pb.AGGREGATION_NONE,
        normalize_aggregate=normalize_aggregate,
        aggregate_only=aggregate_only,
    )


def to_numpy(response: pb.EmbedResponse) -> Embeddings:
    dim = response.model.dim
    vectors = np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(-1, dim)
    aggregate = (
        np.array(response.aggregate.values, dtype=np.float32) if response.HasField("aggregate") else None
    )
    return Embeddings(vectors, aggregate, response.model)


def retryable(exc: grpc.RpcError) -> bool:
    """Whether a failed call is safe and useful to repeat. Embedding is a pure function of the
    request, so the only question is whether the server refused or dropped it:

    - UNAVAILABLE: refused (the server is shutting down, or the replica is gone);
    - CANCELLED with none of the server's trailing metadata: no handler answered it. This client
      never cancels a call itself (its deadline ends as DEADLINE_EXCEEDED), so the server dropped
      it: gRPC core cancels the calls it has received but not yet handed to the application when
      a server shuts down (grpc/grpc#41785).
    """
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    # Sync calls give _Metadatum items and aio calls a Metadata object: both iterate as (key, value).
    trailers = cast("Iterable[tuple[str, object]]", exc.trailing_metadata() or ())
    return code == grpc.StatusCode.CANCELLED and all(key != REQUEST_ID_KEY for key, _ in trailers)


@dataclass(frozen=True)
class ClientConfig:
    target: str = "127.0.0.1:50051"
    timeout: float = 60.0  # per call, seconds: every call has a deadline
    retries: int = 4  # extra attempts on a refused or dropped call (see `retryable`)
    backoff: float = 0.1  # first retry delay; doubles, with jitter
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    token: str | None = None
    tls: bool = False  # TLS with the system's trusted CAs (or root_ca)
    root_ca: bytes | None = None  # TLS with this CA
    client_cert: bytes | None = None  # mTLS
    client_key: bytes | None = None

    def secure(self) -> bool:
        return self.tls or self.root_ca is not None

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def delays(self) -> Iterator[float]:
        delay = self.backoff
        for _ in range(self.retries):
            yield delay * (0.5 + random.random())
            delay *= 2


def open_channel(config: ClientConfig, secure: Callable[..., C], insecure: Callable[..., C]) -> C:
    """A channel to `config.target` with the server's message sizes; `secure`/`insecure` are
    grpc's or grpc.aio's channel constructors, so the sync and asyncio clients share this."""
    options = channel_options(config.max_message_bytes)
    if not config.secure():
        return insecure(config.target, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=config.root_ca, private_key=config.client_key, certificate_chain=config.client_cert
    )
    return secure(config.target, creds, options=options)


class EmbedderClient:
    def __init__(self, target: str = "127.0.0.1:50051", **config: Any) -> None:
        self.config = ClientConfig(target=target, **config)
        self.channel = open_channel(self.config, grpc.secure_channel, grpc.insecure_channel)
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._closed = False  # a call cut short by `close` ends CANCELLED: never retried

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.channel.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        delays = self.config.delays()
        while True:
            try:
                return method(request, timeout=self.config.timeout, metadata=self.config.metadata())
            except grpc.RpcError as exc:
                delay = next(delays, None) if retryable(exc) and not self._closed else None
                if delay is None:
                    raise
                time.sleep(delay)

    def embed(
        self, model: str, images: Sequence[ImageLike | pb.Image], **options: Unpack[Options]
    ) -> Embeddings:
        return to_numpy(self._call(self.stub.Embed, build_request(model, images, **options)))

    def embed_text(self, model: str, texts: Sequence[str], *, normalize: bool = False) -> Embeddings:
        """Texts into the space of the model's images (a model with a text tower: CLIP)."""
        request = pb.EmbedTextRequest(model=model, texts=list(texts), normalize=normalize)
        return to_numpy(self._call(self.stub.EmbedText, request))

    def embed_many(
        self, model: str, images: Iterable[ImageLike | pb.Image], *, chunk: int = 32, normalize: bool = False
    ) -> Iterator[Embeddings]:
        """A large job in requests of `chunk` images, results in order, one request at a time."""
        batch: list[ImageLike | pb.Image] = []
        for item in images:
            batch.append(item)
            if len(batch) == chunk:
                yield self.embed(model, batch, normalize=normalize)
                batch = []
        if batch:
            yield self.embed(model, batch, normalize=normalize)

    def list_models(self) -> list[pb.ModelStatus]:
        return list(self._call(self.stub.ListModels, pb.ListModelsRequest()).models)

    def health(self, service: str = "") -> str:
        check = self.health_stub.Check  # type: ignore[attr-defined]  # types-grpcio-health-checking declares no methods
        response = self._call(check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class AsyncEmbedderClient:
    """The asyncio twin of EmbedderClient (grpc.aio), same defaults."""

    def __init__(self, target: str = "127.0.0.1:50051", **config: Any) -> None:
        self.config = ClientConfig(target=target, **config)
        self.channel = open_channel(self.config, grpc.aio.secure_channel, grpc.aio.insecure_channel)
        self.stub = pb_grpc.EmbedderStub(self.channel)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        await self.channel.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        delays = self.config.delays()
        while True:
            try:
                return await method(request, timeout=self.config.timeout, metadata=self.config.metadata())
            except grpc.aio.AioRpcError as exc:
                delay = next(delays, None) if retryable(exc) and not self._closed else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def embed(
        self, model: str, images: Sequence[ImageLike | pb.Image], **options: Unpack[Options]
    ) -> Embeddings:
        return to_numpy(await self._call(self.stub.Embed, build_request(model, images, **options)))

    async def embed_text(self, model: str, texts: Sequence[str], *, normalize: bool = False) -> Embeddings:
        request = pb.EmbedTextRequest(model=model, texts=list(texts), normalize=normalize)
        return to_numpy(await self._call(self.stub.EmbedText, request))

    async def list_models(self) -> list[pb.ModelStatus]:
        return list((await self._call(self.stub.ListModels, pb.ListModelsRequest())).models)
