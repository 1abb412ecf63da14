"""Which failures the bundled client repeats, against a real gRPC server on an ephemeral port whose
Embed answers from a script (the statuses are the point here, not the embeddings; the real
server's side of these statuses is tested in tests/hardening/test_shutdown.py).

A CANCELLED that no handler answered (no trailing metadata) is what gRPC core sends for a call it
dropped while the server shut down (grpc/grpc#41785): repeated. A CANCELLED carrying the server's
request id came from a handler: not repeated. Nor is anything but UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from embedder.client import AsyncEmbedderClient, EmbedderClient
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import REQUEST_ID_KEY

Step = tuple[grpc.StatusCode, tuple[tuple[str, str], ...]] | None  # None: answer OK


class ScriptedEmbedder(pb_grpc.EmbedderServicer):
    def __init__(self) -> None:
        self.script: list[Step] = []
        self.calls = 0

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self.calls += 1
        step = self.script.pop(0)
        if step is None:
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=[1.0, 0.0])], model=pb.ModelInfo(dim=2))
        code, trailers = step
        if trailers:
            context.set_trailing_metadata(trailers)
        context.abort(code, code.name)
        raise AssertionError("abort raises")


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedEmbedder, str]]:
    servicer = ScriptedEmbedder()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EmbedderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


DROPPED = (grpc.StatusCode.CANCELLED, ())
ANSWERED_CANCELLED = (grpc.StatusCode.CANCELLED, ((REQUEST_ID_KEY, "abc"),))
REFUSED = (grpc.StatusCode.UNAVAILABLE, ())
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, ((REQUEST_ID_KEY, "abc"),))


@pytest.mark.parametrize(
    ("script", "calls"),
    [([DROPPED, None], 2), ([REFUSED, DROPPED, REFUSED, None], 4)],
    ids=["dropped-then-ok", "refused-and-dropped-then-ok"],
)
def test_refused_or_dropped_calls_are_repeated(
    scripted: tuple[ScriptedEmbedder, str], script: list[Step], calls: int
) -> None:
    servicer, address = scripted
    servicer.script = list(script)
    with EmbedderClient(address, backoff=0.01) as client:
        result = client.embed("m", [b"x"])
    assert result.embeddings.tolist() == [[1.0, 0.0]]
    assert servicer.calls == calls


@pytest.mark.parametrize("step", [ANSWERED_CANCELLED, INVALID], ids=["cancelled-by-a-handler", "invalid"])
def test_answered_failures_are_not_repeated(scripted: tuple[ScriptedEmbedder, str], step: Step) -> None:
    servicer, address = scripted
    servicer.script = [step, None]
    with EmbedderClient(address, backoff=0.01) as client, pytest.raises(grpc.RpcError) as raised:
        client.embed("m", [b"x"])
    assert step is not None and raised.value.code() == step[0]
    assert servicer.calls == 1


def test_retries_run_out(scripted: tuple[ScriptedEmbedder, str]) -> None:
    servicer, address = scripted
    servicer.script = [DROPPED] * 3
    with EmbedderClient(address, backoff=0.01, retries=2) as client, pytest.raises(grpc.RpcError) as raised:
        client.embed("m", [b"x"])
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    assert servicer.calls == 3


def test_async_client_repeats_a_dropped_call_only(scripted: tuple[ScriptedEmbedder, str]) -> None:
    servicer, address = scripted

    async def run() -> None:
        async with AsyncEmbedderClient(address, backoff=0.01) as client:
            servicer.script = [DROPPED, None]
            assert (await client.embed("m", [b"x"])).embeddings.shape == (1, 2)
            assert servicer.calls == 2
            servicer.script = [ANSWERED_CANCELLED, None]
            with pytest.raises(grpc.aio.AioRpcError):
                await client.embed("m", [b"x"])
            assert servicer.calls == 3

    asyncio.run(run())
