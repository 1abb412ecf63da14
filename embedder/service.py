"""The protobuf edge (STYLE 7): requests become domain values, results and errors become messages.

This is the one place errors are translated to gRPC statuses (STYLE 8): an `EmbedderError`
carries its own status and message; anything else is logged with its traceback and answered with
a plain INTERNAL that leaks nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from .engine import CancelToken, EmbedOptions, EmbedResult, Engine
from .errors import EmbedderError, InvalidImage
from .repository import ModelEntry
from .sessions import ModelState
from .sources import ImageSource
from .telemetry import Telemetry
from .v1 import embedder_pb2 as pb
from .v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATES = {
    ModelState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
    ModelState.AVAILABLE: pb.MODEL_STATE_AVAILABLE,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.SERVING: pb.MODEL_STATE_SERVING,
}

REQUEST_ID_KEY = "x-request-id"
MAX_DEADLINE_S = 365 * 24 * 3600.0  # beyond a year, a deadline is "none"


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
    )


def _embedding(vector: np.ndarray) -> pb.Embedding:
    return pb.Embedding(values=vector.tolist())


def _sources(request: pb.EmbedRequest) -> list[ImageSource]:
    return [
        ImageSource(path=image.path) if image.WhichOneof("source") == "path" else ImageSource(data=image.data)
        for image in request.images
    ]


def _options(request: pb.EmbedRequest) -> EmbedOptions:
    return EmbedOptions(
        normalize=request.normalize,
        aggregate_mean=request.aggregate == pb.AGGREGATION_MEAN,
        normalize_aggregate=request.normalize_aggregate,
        aggregate_only=request.aggregate_only,
    )


class Outcome:
    """The status a call ended with, for the access log and metrics."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    error: EmbedderError | None = None


@contextmanager
def translated_errors(context: grpc.ServicerContext, request_id: str = "-") -> Iterator[Outcome]:
    outcome = Outcome()
    try:
        yield outcome
    except EmbedderError as exc:
        outcome.code, outcome.error = exc.code, exc
        context.abort(exc.code, exc.message)
    except Exception:
        outcome.code = grpc.StatusCode.INTERNAL
        log.exception("internal error (request %s)", request_id, extra={"request_id": request_id})
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {request_id}); see the server log")


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() value; None when the call has none (gRPC then
    reports an effectively infinite time remaining, which no timeout can hold)."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= MAX_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def request_id(context: grpc.ServicerContext) -> str:
    """The caller's x-request-id, or a new one; echoed back in the response metadata."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
    rid = str(given)[:128] if given else uuid.uuid4().hex[:16]
    context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    return rid


class EmbedderService(pb_grpc.EmbedderServicer):
    def __init__(self, engine: Engine, telemetry: Telemetry) -> None:
        self.engine = engine
        self.telemetry = telemetry
        self._inflight = 0
        self._idle = threading.Condition()

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        """Counts unary calls in progress, so shutdown can wait for them and not for streams."""
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter()
        rid = request_id(context)
        try:
            with self._tracked(), translated_errors(context, rid) as outcome:
                token = CancelToken()
                context.add_callback(token.cancel)
                deadline = call_deadline(context)
                result = self.engine.embed(request.model, _sources(request), _options(request), deadline, token)
                return self._response(result)
        finally:
            self._record(request, outcome, time.perf_counter() - started, rid)
        raise AssertionError("unreachable: abort raises")

    def _record(self, request: pb.EmbedRequest, outcome: Outcome, seconds: float, rid: str) -> None:
        if isinstance(outcome.error, InvalidImage):
            self.telemetry.decode_failed(outcome.error.kind)
        try:
            model = self.engine.repository.resolve(request.model).name
        except EmbedderError:
            model = "unknown"  # never a caller-chosen label: that would let clients grow the metric set
        self.telemetry.request_done(model, len(request.images), outcome.code.name, seconds, rid)

    @staticmethod
    def _response(result: EmbedResult) -> pb.EmbedResponse:
        response = pb.EmbedResponse(
            embeddings=[_embedding(v) for v in result.embeddings], model=model_info(result.entry)
        )
        if result.aggregate is not None:
            response.aggregate.CopyFrom(_embedding(result.aggregate))
        return response

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        with self._tracked(), translated_errors(context):
            cache = self.engine.cache
            resident = set(cache.resident())
            statuses = []
            for name, entry in sorted(self.engine.repository.entries.items()):
                state, error, load_seconds = cache.status(name)
                size = entry.onnx_path.stat().st_size if entry.onnx_path.is_file() else 0
                statuses.append(
                    pb.ModelStatus(
                        info=model_info(entry),
                        state=_STATES[state],
                        loaded=name in resident,
                        error=error,
                        load_seconds=load_seconds,
                        onnx_bytes=size,
                    )
                )
            return pb.ListModelsResponse(models=statuses)
        raise AssertionError("unreachable: abort raises")
