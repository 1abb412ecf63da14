"""The gRPC front end: protobuf requests become domain values for `Calls`, results become
messages, and error kinds become gRPC statuses through one table (STATUS).

An `EmbedderError` is answered with its kind's status and its message; anything else has been
logged by `Calls` with its traceback and is answered as INTERNAL naming the request id only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from .calls import CallRecord, Calls, GraphStatus, ModelInfo, ModelStatus, request_id
from .engine import EmbedOptions, EmbedResult
from .errors import EmbedderError, InvalidRequest, Kind
from .golden import SelfCheck
from .repository import IMAGE, TEXT
from .sessions import ModelState
from .sources import ImageSource
from .v1 import embedder_pb2 as pb
from .v1 import embedder_pb2_grpc as pb_grpc
from .wire import REQUEST_ID_KEY

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name

_STATES = {
    ModelState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
    ModelState.AVAILABLE: pb.MODEL_STATE_AVAILABLE,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.SERVING: pb.MODEL_STATE_SERVING,
}

# The one place kinds become gRPC statuses.
STATUS = {
    Kind.OK: grpc.StatusCode.OK,
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.CANCELLED: grpc.StatusCode.CANCELLED,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}
FRONTEND = "grpc"
MAX_DEADLINE_S = 365 * 24 * 3600.0  # beyond a year, a deadline is "none"
MAX_STATUS_MESSAGE = 2048


@dataclass(frozen=True)
class Malformed:
    """Bytes that do not parse as the method's request message, kept for the handler to refuse."""

    message_type: str
    reason: str

    def refuse(self) -> InvalidRequest:
        return InvalidRequest(f"malformed {self.message_type}: {self.reason}")


def lenient(message: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that never raises: gRPC answers a deserializer's exception with
    UNKNOWN before any handler runs, and bad bytes from a client are INVALID_ARGUMENT."""

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Malformed(message.DESCRIPTOR.name, str(exc) or "cannot parse")

    return parse


def model_info(info: ModelInfo) -> pb.ModelInfo:
    # ModelInfo's fields are named as the message's, so one can never lag the other unnoticed.
    return pb.ModelInfo(**dataclasses.asdict(info))


def _embedding(vector: np.ndarray) -> pb.Embedding:
    return pb.Embedding(values=vector.tolist())


def _sources(request: pb.EmbedRequest) -> list[ImageSource]:
    return [
        ImageSource(path=image.path) if image.WhichOneof("source") == "path" else ImageSource(data=image.data)
        for image in request.images
    ]


def _options(request: pb.EmbedRequest) -> EmbedOptions:
    if request.aggregate not in pb.Aggregation.values():  # proto3 keeps unknown enum numbers
        known = ", ".join(f"{name}={number}" for name, number in pb.Aggregation.items())
        raise InvalidRequest(f"aggregate={request.aggregate} is not a known Aggregation ({known})")
    return EmbedOptions(
        normalize=request.normalize,
        aggregate_mean=request.aggregate == pb.AGGREGATION_MEAN,
        normalize_aggregate=request.normalize_aggregate,
        aggregate_only=request.aggregate_only,
    )


@asynccontextmanager
async def translated_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Errors become statuses, with messages cut to what a header can carry."""
    try:
        yield
    except EmbedderError as exc:
        await context.abort(STATUS[exc.kind], _bounded(exc.message))


def _bounded(message: str) -> str:
    """The status message travels as a header, which clients refuse past 16 KiB: cut it short."""
    return message if len(message) <= MAX_STATUS_MESSAGE else message[: MAX_STATUS_MESSAGE - 3] + "..."


def call_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline as a time.monotonic() value; None when the call has none (gRPC then
    reports an effectively infinite time remaining, which no timeout can hold)."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= MAX_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def call_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's x-request-id, or a new one; echoed back in the trailing metadata, which goes
    out with the status (no extra send on the hot path)."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
    rid = request_id(str(given) if given else None)
    context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    return rid


class EmbedderService(pb_grpc.EmbedderServicer):
    """Coroutine handlers on the server's event loop: a call holds no thread while its images are
    decoded and embedded, so admission control answers every call at once, however many wait."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self._infos = {name: model_info(info) for name, info in calls.infos.items()}

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the Embedder service, with requests parsed by `lenient` deserializers."""
        handlers = {
            "Embed": grpc.unary_unary_rpc_method_handler(
                self.Embed, lenient(pb.EmbedRequest), pb.EmbedResponse.SerializeToString
            ),
            "EmbedText": grpc.unary_unary_rpc_method_handler(
                self.EmbedText, lenient(pb.EmbedTextRequest), pb.EmbedResponse.SerializeToString
            ),
            "ListModels": grpc.unary_unary_rpc_method_handler(
                self.ListModels, lenient(pb.ListModelsRequest), pb.ListModelsResponse.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    async def Embed(
        self, request: pb.EmbedRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EmbedResponse:
        async with self._call(context, IMAGE) as call:
            if isinstance(request, Malformed):
                raise request.refuse()
            sources, options = _sources(request), _options(request)
            return self._response(await self.calls.embed_images(call, request.model, sources, options))
        raise AssertionError("unreachable: abort raises")

    async def EmbedText(
        self, request: pb.EmbedTextRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EmbedResponse:
        async with self._call(context, TEXT) as call:
            if isinstance(request, Malformed):
                raise request.refuse()
            texts = list(request.texts)
            return self._response(await self.calls.embed_texts(call, request.model, texts, request.normalize))
        raise AssertionError("unreachable: abort raises")

    @asynccontextmanager
    async def _call(
        self, context: grpc.aio.ServicerContext[Any, Any], modality: str
    ) -> AsyncIterator[CallRecord]:
        async with translated_errors(context):
            rid, deadline = call_request_id(context), call_deadline(context)
            async with self.calls.call(modality, FRONTEND, rid, deadline) as call:
                yield call

    def _response(self, result: EmbedResult) -> pb.EmbedResponse:
        response = pb.EmbedResponse(
            embeddings=[_embedding(v) for v in result.embeddings], model=self._infos[result.entry.name]
        )
        if result.aggregate is not None:
            response.aggregate.CopyFrom(_embedding(result.aggregate))
        return response

    async def ListModels(
        self, request: pb.ListModelsRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        with self.calls.tracked():
            async with translated_errors(context):
                if isinstance(request, Malformed):
                    raise request.refuse()
                return pb.ListModelsResponse(models=[self._status(s) for s in self.calls.statuses()])
        raise AssertionError("unreachable: abort raises")

    def _status(self, model: ModelStatus) -> pb.ModelStatus:
        status = pb.ModelStatus(info=self._infos[model.info.name])
        for modality, graph in model.graphs.items():
            message = _graph_status(graph)
            if modality == TEXT:
                status.text.CopyFrom(message)
            else:
                status.state, status.loaded, status.error = message.state, message.loaded, message.error
                status.load_seconds, status.onnx_bytes = message.load_seconds, message.onnx_bytes
                status.self_check.CopyFrom(message.self_check)
        return status


def _graph_status(graph: GraphStatus) -> pb.GraphStatus:
    check = graph.self_check
    return pb.GraphStatus(
        state=_STATES[graph.state],
        loaded=graph.loaded,
        error=graph.error,
        load_seconds=graph.load_seconds,
        onnx_bytes=graph.onnx_bytes,
        self_check=_self_check(check) if check is not None else None,
    )


def _self_check(check: SelfCheck) -> pb.SelfCheck:
    measured = check.max_abs == check.max_abs  # NaN until measured
    return pb.SelfCheck(
        state=check.state,
        max_abs=check.max_abs if measured else 0.0,
        worst=check.worst,
        inputs=check.items,
        seconds=check.seconds,
        cpu_flags=check.cpu_flags,
        min_cosine=check.min_cosine if measured else 0.0,
        required_cosine=check.required_cosine or 0.0,
    )
