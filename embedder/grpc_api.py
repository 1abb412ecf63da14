"""The protobuf edge: requests become domain values, results and errors become messages.

This is the one place errors are translated to gRPC statuses: an `EmbedderError`
carries its own status and message; anything else is logged with its traceback and answered with
a plain INTERNAL that leaks nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from .engine import EmbedOptions, EmbedResult, Engine
from .errors import EmbedderError, InvalidRequest, image_kinds
from .golden import SelfCheck
from .repository import IMAGE, TEXT, ModelEntry
from .sessions import ModelState
from .sources import ImageSource
from .telemetry import Telemetry
from .v1 import embedder_pb2 as pb
from .v1 import embedder_pb2_grpc as pb_grpc
from .wire import REQUEST_ID_KEY

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name

_STATES = {
    ModelState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
    ModelState.AVAILABLE: pb.MODEL_STATE_AVAILABLE,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.SERVING: pb.MODEL_STATE_SERVING,
}

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


def model_info(entry: ModelEntry) -> pb.ModelInfo:
    spec = entry.spec
    provenance = spec.provenance
    return pb.ModelInfo(
        name=spec.name,
        aliases=list(spec.aliases),
        family=spec.family,
        pooling=spec.pooling,
        dim=spec.embedding_dim,
        onnx_sha256=spec.onnx_sha256 or "",
        preprocessing_sha256=spec.preprocessing.sha256(),
        weights=spec.weights_kind,
        parity_verified=spec.verified,
        source=provenance.source if provenance else "",
        quantization=(provenance.quantization or "") if provenance else "",
        modalities=list(spec.modalities),
        text_onnx_sha256=spec.text.onnx_sha256 if spec.text else "",
        tokenizer_sha256=spec.text.tokenizer_sha256 if spec.text else "",
        text_parity_verified=spec.text.verified if spec.text else False,
        batch_invariant=spec.batch_invariant,
    )


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


@dataclass
class CallRecord:
    """What the access log and metrics say of one Embed or EmbedText call."""

    request_id: str
    modality: str
    # The resolved name, never the caller's string: a caller-chosen label would grow the metric set.
    model: str = "unknown"
    items: int = 0

    def resolved(self, entry: ModelEntry) -> ModelEntry:
        self.model = entry.name
        return entry


@dataclass
class Outcome:
    """The status a call ended with, for the access log and metrics."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    error: EmbedderError | None = None


@asynccontextmanager
async def translated_errors(
    context: grpc.aio.ServicerContext[Any, Any],
    request_id: str = "-",
    ended: Callable[[Outcome], None] | None = None,
) -> AsyncIterator[Outcome]:
    """Errors become statuses. `ended(outcome)` runs before the answer goes out, so the metrics
    and access log already hold a call by the time its caller has the answer."""
    outcome = Outcome()
    end = ended or (lambda outcome: None)
    try:
        yield outcome
    except EmbedderError as exc:
        outcome.code, outcome.error = exc.code, exc
        end(outcome)
        await context.abort(exc.code, _bounded(exc.message))
    except asyncio.CancelledError:
        outcome.code = ended_early(context)
        end(outcome)
        raise
    except Exception:
        outcome.code = grpc.StatusCode.INTERNAL
        log.exception("internal error (request %s)", request_id, extra={"request_id": request_id})
        end(outcome)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error (request {request_id}); see the server log"
        )
    else:
        end(outcome)


def _bounded(message: str) -> str:
    """The status message travels as a header, which clients refuse past 16 KiB: cut it short."""
    return message if len(message) <= MAX_STATUS_MESSAGE else message[: MAX_STATUS_MESSAGE - 3] + "..."


def ended_early(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """Why gRPC cancelled a handler: its deadline passed, or the caller went away."""
    remaining = context.time_remaining()
    return (
        grpc.StatusCode.DEADLINE_EXCEEDED
        if remaining is not None and remaining <= 0
        else grpc.StatusCode.CANCELLED
    )


def call_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline as a time.monotonic() value; None when the call has none (gRPC then
    reports an effectively infinite time remaining, which no timeout can hold)."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= MAX_DEADLINE_S:
        return None
    return time.monotonic() + remaining


_ID_PREFIX = uuid.uuid4().hex[:8]  # per process, so ids from several replicas never collide
_id_counter = itertools.count(1)


def request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's x-request-id, or a new one; echoed back in the trailing metadata, which goes
    out with the status (no extra send on the hot path)."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
    rid = str(given)[:128] if given else f"{_ID_PREFIX}{next(_id_counter):08x}"
    context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    return rid


class EmbedderService(pb_grpc.EmbedderServicer):
    """Coroutine handlers on the server's event loop: a call holds no thread while its images are
    decoded and embedded, so admission control answers every call at once, however many wait."""

    def __init__(self, engine: Engine, telemetry: Telemetry) -> None:
        self.engine = engine
        self.telemetry = telemetry
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._infos = {name: model_info(entry) for name, entry in engine.repository.entries.items()}

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        """Counts unary calls in progress, so shutdown can wait for them and not for streams."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no unary call is in progress; False if that takes longer than `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

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
            call.items = len(request.images)
            entry = call.resolved(self.engine.repository.resolve(request.model))
            result = await self.engine.embed(
                entry, _sources(request), _options(request), call_deadline(context)
            )
            return self._response(result)
        raise AssertionError("unreachable: abort raises")

    async def EmbedText(
        self, request: pb.EmbedTextRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EmbedResponse:
        async with self._call(context, TEXT) as call:
            if isinstance(request, Malformed):
                raise request.refuse()
            call.items = len(request.texts)
            entry = call.resolved(self.engine.repository.resolve(request.model))
            texts = list(request.texts)
            result = await self.engine.embed_text(entry, texts, request.normalize, call_deadline(context))
            return self._response(result)
        raise AssertionError("unreachable: abort raises")

    @asynccontextmanager
    async def _call(
        self, context: grpc.aio.ServicerContext[Any, Any], modality: str
    ) -> AsyncIterator[CallRecord]:
        """An embedding call: tracked for shutdown, errors translated, recorded once it ends."""
        started = time.perf_counter()
        call = CallRecord(request_id(context), modality)

        def ended(outcome: Outcome) -> None:
            for kind in image_kinds(outcome.error):
                self.telemetry.decode_failed(kind)
            seconds = time.perf_counter() - started
            self.telemetry.request_done(
                call.model, modality, call.items, outcome.code.name, seconds, call.request_id
            )

        with self._tracked():
            async with translated_errors(context, call.request_id, ended):
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
        with self._tracked():
            async with translated_errors(context):
                if isinstance(request, Malformed):
                    raise request.refuse()
                return pb.ListModelsResponse(models=self._statuses())
        raise AssertionError("unreachable: abort raises")

    def _statuses(self) -> list[pb.ModelStatus]:
        statuses = []
        for name, entry in sorted(self.engine.repository.entries.items()):
            status = pb.ModelStatus(info=self._infos[name])
            for modality in entry.spec.modalities:
                graph = self._graph_status(entry, modality)
                if modality == TEXT:
                    status.text.CopyFrom(graph)
                else:
                    status.state, status.loaded, status.error = graph.state, graph.loaded, graph.error
                    status.load_seconds, status.onnx_bytes = graph.load_seconds, graph.onnx_bytes
                    status.self_check.CopyFrom(graph.self_check)
            statuses.append(status)
        return statuses

    def _graph_status(self, entry: ModelEntry, modality: str) -> pb.GraphStatus:
        cache = self.engine.cache
        state, error, load_seconds = cache.status(entry.name, modality)
        path = entry.graph_path(modality)
        check = cache.checks.get((entry.name, modality))
        return pb.GraphStatus(
            state=_STATES[state],
            loaded=(entry.name, modality) in cache.resident(),
            error=error,
            load_seconds=load_seconds,
            onnx_bytes=path.stat().st_size if path.is_file() else 0,
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
    )
