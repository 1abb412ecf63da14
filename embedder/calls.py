"""What a call means, whichever front end it came through.

A front end turns its message into domain values (model name, image sources or texts, options,
deadline) and calls `Calls`; `Calls` resolves the model once, hands the resolved `ModelEntry` to
the engine, records the outcome (metrics, access log) and turns any fault of its own into an
`InternalError`. The front end then translates results and `EmbedderError` kinds into its own
messages and statuses. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from .engine import EmbedOptions, EmbedResult, Engine
from .errors import EmbedderError, InternalError, Kind, image_failures
from .golden import SelfCheck
from .repository import IMAGE, TEXT, ModelEntry
from .sessions import ModelState
from .sources import ImageSource
from .telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 128
_ID_PREFIX = uuid.uuid4().hex[:8]  # per process, so ids from several replicas never collide
_id_counter = itertools.count(1)


def request_id(given: str | None) -> str:
    """The caller's request id (cut to 128 characters), or a new one."""
    return str(given)[:MAX_REQUEST_ID] if given else f"{_ID_PREFIX}{next(_id_counter):08x}"


@dataclass(frozen=True)
class ModelInfo:
    """What a response says of the model that made its vectors (provenance)."""

    name: str
    aliases: tuple[str, ...]
    family: str
    pooling: str
    dim: int
    onnx_sha256: str
    preprocessing_sha256: str
    weights: str
    parity_verified: bool
    source: str
    quantization: str
    modalities: tuple[str, ...]
    text_onnx_sha256: str
    tokenizer_sha256: str
    text_parity_verified: bool
    batch_invariant: bool

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelInfo:
        spec, provenance, text = entry.spec, entry.spec.provenance, entry.spec.text
        return cls(
            name=spec.name,
            aliases=spec.aliases,
            family=spec.family,
            pooling=spec.pooling,
            dim=spec.embedding_dim,
            onnx_sha256=spec.onnx_sha256 or "",
            preprocessing_sha256=spec.preprocessing.sha256(),
            weights=spec.weights_kind,
            parity_verified=spec.verified,
            source=provenance.source if provenance else "",
            quantization=(provenance.quantization or "") if provenance else "",
            modalities=spec.modalities,
            text_onnx_sha256=text.onnx_sha256 if text else "",
            tokenizer_sha256=text.tokenizer_sha256 if text else "",
            text_parity_verified=text.verified if text else False,
            batch_invariant=spec.batch_invariant,
        )


@dataclass(frozen=True)
class GraphStatus:
    state: ModelState
    loaded: bool
    error: str
    load_seconds: float
    onnx_bytes: int
    self_check: SelfCheck | None


@dataclass(frozen=True)
class ModelStatus:
    info: ModelInfo
    graphs: dict[str, GraphStatus]  # by modality: "image", and "text" where the model has one


@dataclass
class CallRecord:
    """What the access log and metrics say of one embedding call."""

    request_id: str
    modality: str
    frontend: str
    deadline: float | None = None  # time.monotonic() value
    # The resolved name, never the caller's string: a caller-chosen label would grow the metric set.
    model: str = "unknown"
    items: int = 0
    kind: Kind = Kind.OK
    error: EmbedderError | None = field(default=None, repr=False)


class Calls:
    """The one request path both front ends call, and what they need to drain on shutdown."""

    def __init__(self, engine: Engine, telemetry: Telemetry) -> None:
        self.engine = engine
        self.telemetry = telemetry
        self.infos = {name: ModelInfo.of(entry) for name, entry in engine.repository.entries.items()}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- embedding -----------------------------------------------------------------------------
    async def embed_images(
        self, call: CallRecord, model: str, sources: list[ImageSource], options: EmbedOptions
    ) -> EmbedResult:
        entry = self._resolve(call, model, len(sources))
        return await self.engine.embed(entry, sources, options, call.deadline)

    async def embed_texts(
        self, call: CallRecord, model: str, texts: list[str], normalize: bool
    ) -> EmbedResult:
        entry = self._resolve(call, model, len(texts))
        return await self.engine.embed_text(entry, texts, normalize, call.deadline)

    def _resolve(self, call: CallRecord, model: str, items: int) -> ModelEntry:
        call.items = items
        entry = self.engine.repository.resolve(model)
        call.model = entry.name
        return entry

    @asynccontextmanager
    async def call(
        self, modality: str, frontend: str, rid: str, deadline: float | None = None
    ) -> AsyncIterator[CallRecord]:
        """One embedding call: tracked for shutdown, recorded once it ends (before the answer goes
        out, so metrics and the access log already hold a call when its caller has the answer)."""
        started = time.perf_counter()
        call = CallRecord(rid, modality, frontend, deadline)
        with self.tracked():
            try:
                yield call
            except EmbedderError as exc:
                call.kind, call.error = exc.kind, exc
                raise
            except asyncio.CancelledError:
                call.kind = self._ended_early(deadline)
                raise
            except Exception:
                call.kind = Kind.INTERNAL
                log.exception("internal error (request %s)", rid, extra={"request_id": rid})
                raise InternalError(rid) from None
            finally:
                self._record(call, time.perf_counter() - started)

    @staticmethod
    def _ended_early(deadline: float | None) -> Kind:
        """Why a front end cancelled a call: its deadline passed, or the caller went away."""
        if deadline is not None and time.monotonic() >= deadline:
            return Kind.DEADLINE_EXCEEDED
        return Kind.CANCELLED

    def _record(self, call: CallRecord, seconds: float) -> None:
        for failure in image_failures(call.error):
            self.telemetry.decode_failed(failure)
        self.telemetry.request_done(
            call.model, call.modality, call.frontend, call.items, call.kind.value, seconds, call.request_id
        )

    # -- shutdown ------------------------------------------------------------------------------
    @contextmanager
    def tracked(self) -> Iterator[None]:
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
        """True once no call is in progress; False if that takes longer than `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- the models ----------------------------------------------------------------------------
    def statuses(self) -> list[ModelStatus]:
        return [
            ModelStatus(
                self.infos[name],
                {modality: self._graph(entry, modality) for modality in entry.spec.modalities},
            )
            for name, entry in sorted(self.engine.repository.entries.items())
        ]

    def _graph(self, entry: ModelEntry, modality: str) -> GraphStatus:
        cache = self.engine.cache
        state, error, load_seconds = cache.status(entry.name, modality)
        path = entry.graph_path(modality)
        return GraphStatus(
            state=state,
            loaded=(entry.name, modality) in cache.resident(),
            error=error,
            load_seconds=load_seconds,
            onnx_bytes=path.stat().st_size if path.is_file() else 0,
            self_check=cache.checks.get((entry.name, modality)),
        )


__all__ = ["IMAGE", "TEXT", "CallRecord", "Calls", "GraphStatus", "ModelInfo", "ModelStatus", "request_id"]
