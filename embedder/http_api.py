"""The HTTP front end: OpenAI's `POST /v1/embeddings` (texts, and images as data URIs), `GET
/v1/models`, and health probes, on FastAPI. The sibling of grpc_api.py: requests become domain
values for `Calls`, results become JSON, and error kinds become HTTP statuses through one table
(STATUS), in OpenAI's error envelope with the core's own messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .calls import CallRecord, Calls, ModelInfo, ModelStatus, request_id
from .engine import EmbedOptions
from .errors import DeadlineExpired, EmbedderError, Kind, Unauthenticated, shown
from .http_inputs import (
    IMAGE,
    TEXT,
    BadField,
    EmbeddingsBody,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    parse,
    render,
)
from .sessions import ModelState
from .settings import Settings

FRONTEND = "http"
REQUEST_ID_HEADER = "x-request-id"
TIMEOUT_HEADER = "x-request-timeout"
RETRY_AFTER_S = "1"
MAX_DEADLINE_S = 365 * 24 * 3600.0
INLINE_TOKEN_COUNT = 8  # texts counted on the loop; more go to a thread (tokenizing is not free)

# The one place kinds become HTTP statuses, with OpenAI's error `type` and `code`.
STATUS = {
    Kind.OK: 200,
    Kind.INVALID_ARGUMENT: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.NOT_FOUND: 404,
    Kind.RESOURCE_EXHAUSTED: 429,
    Kind.CANCELLED: 499,  # nginx's "client closed request": never reaches the client
    Kind.INTERNAL: 500,
    Kind.UNAVAILABLE: 503,
    Kind.DEADLINE_EXCEEDED: 504,
}
ERROR_TYPE = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}
ERROR_CODE = {Kind.NOT_FOUND: "model_not_found", Kind.UNAUTHENTICATED: "invalid_api_key"}
RETRY = {429, 503}  # statuses a client should retry after Retry-After


class HttpRefusal(EmbedderError):
    """A refusal of the HTTP layer itself, with a status no error kind maps to (408, 413)."""

    kind = Kind.INVALID_ARGUMENT

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class ClientGone(EmbedderError):
    kind = Kind.CANCELLED

    def __init__(self) -> None:
        super().__init__("the client closed the connection")


def error_response(exc: EmbedderError, rid: str) -> JSONResponse:
    status = exc.status if isinstance(exc, HttpRefusal) else STATUS[exc.kind]
    code = exc.code if isinstance(exc, HttpRefusal) else ERROR_CODE.get(exc.kind, exc.kind.value.lower())
    param = exc.param if isinstance(exc, BadField) else ("model" if exc.kind is Kind.NOT_FOUND else None)
    body = {
        "error": {
            "message": exc.message,
            "type": ERROR_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    headers = {REQUEST_ID_HEADER: rid}
    if status in RETRY:
        headers["retry-after"] = RETRY_AFTER_S
    if isinstance(exc, HttpRefusal):
        headers["connection"] = "close"  # the rest of the body is not read
    return JSONResponse(body, status, headers)


def _info(info: ModelInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


class HttpFrontEnd:
    """The FastAPI app over `calls`. `ready()` says whether the server takes traffic (start-up
    done, not draining, every preloaded graph serving)."""

    def __init__(self, calls: Calls, settings: Settings, ready: Callable[[], bool]) -> None:
        self.calls = calls
        self.settings = settings
        self.ready = ready
        self._tokens = [t.encode() for t in settings.tokens()]
        # Provenance pre-rendered once per model: it is the same in every response.
        self._provenance = {name: json.dumps(_info(info)) for name, info in calls.infos.items()}
        self.app = self._build()

    # -- the app -------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(
            title="embedder",
            summary="Image and text embeddings on ONNX Runtime; OpenAI-compatible /v1/embeddings",
            openapi_url="/openapi.json",
            docs_url="/docs",
            redoc_url=None,
        )
        errors = {status: {"model": ErrorBody} for status in (400, 401, 404, 408, 413, 429, 503, 504)}
        app.add_api_route(
            "/v1/embeddings",
            self.embeddings,
            methods=["POST"],
            response_model=EmbeddingsResponse,
            responses=errors,  # type: ignore[arg-type]
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": EmbeddingsBody.model_json_schema()}},
                }
            },
        )
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/health/live", self.live, methods=["GET"])
        app.add_api_route("/health/ready", self.readiness, methods=["GET"])
        app.add_exception_handler(HTTPException, self._http_error)  # unknown paths, wrong methods
        return app

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        body = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, exc.status_code, {**(exc.headers or {}), REQUEST_ID_HEADER: rid})

    # -- POST /v1/embeddings -------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            self._authorize(request)
            deadline = self._deadline(request)
            async with self.calls.call(IMAGE, FRONTEND, rid, deadline) as call:
                parsed = parse(await self._body(request))
                if not parsed.images:
                    call.modality = TEXT
                body = await self._until_gone(request, self._embed(call, parsed, rid, deadline), deadline)
        except EmbedderError as exc:
            return error_response(exc, rid)
        return Response(body, 200, {REQUEST_ID_HEADER: rid}, media_type="application/json")

    def _authorize(self, request: Request) -> None:
        if not self._tokens:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        candidate = presented.strip().encode()
        matched = False
        for token in self._tokens:  # no early exit: time does not depend on which token matched
            matched |= hmac.compare_digest(candidate, token)
        if scheme.lower() != "bearer" or not candidate or not matched:
            raise Unauthenticated("missing or invalid bearer token")

    def _deadline(self, request: Request) -> float | None:
        """X-Request-Timeout (seconds), else http_timeout_s; a time.monotonic() value or None."""
        raw = request.headers.get(TIMEOUT_HEADER)
        seconds = self.settings.http_timeout_s
        if raw is not None:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = math.nan
            if not seconds > 0:  # also NaN
                raise BadField(
                    f"X-Request-Timeout must be a positive number of seconds, not {shown(raw)}",
                    TIMEOUT_HEADER,
                )
        if seconds <= 0 or seconds >= MAX_DEADLINE_S:
            return None
        return time.monotonic() + seconds

    async def _body(self, request: Request) -> bytes:
        """The whole body, within http_max_body_bytes and http_body_timeout_s."""
        limit = self.settings.http_max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = f"request body exceeds http_max_body_bytes={limit}"
        if declared.isdigit() and int(declared) > limit:
            raise HttpRefusal(413, f"{too_large} (content-length {declared})", "request_too_large")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.http_body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HttpRefusal(413, too_large, "request_too_large")
                    chunks.append(chunk)
        except TimeoutError:
            timeout = self.settings.http_body_timeout_s
            raise HttpRefusal(
                408, f"request body not received within http_body_timeout_s={timeout:g}", "request_timeout"
            ) from None
        except ClientDisconnect:
            raise ClientGone() from None
        return b"".join(chunks)

    async def _until_gone(self, request: Request, work: Awaitable[bytes], deadline: float | None) -> bytes:
        """`work` as a task, cancelled if the client disconnects (its queued work is dropped, as
        for a cancelled gRPC call) or the deadline passes (the engine also checks it between
        steps; this ends a wait the engine does not bound, such as a model load)."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with suppress(asyncio.CancelledError, EmbedderError):
            await task
        if gone in done:
            raise ClientGone()
        raise _deadline_passed()

    async def _embed(
        self, call: CallRecord, request: EmbeddingsRequest, rid: str, deadline: float | None
    ) -> bytes:
        entry = self.calls.engine.repository.resolve(request.model)
        call.model = entry.name
        dim = entry.spec.embedding_dim
        if request.dimensions is not None and request.dimensions != dim:
            raise BadField(
                f"dimensions={request.dimensions}: model {entry.name!r} has dimension {dim} "
                "and does not shorten its vectors (omit dimensions, or send it)",
                "dimensions",
            )
        images: list[np.ndarray] = []
        texts: list[np.ndarray] = []
        if request.images and request.texts:  # each part its own call: metrics and log per modality
            async with self.calls.call(TEXT, FRONTEND, rid, deadline) as text_call:
                images_done = asyncio.ensure_future(self._images(call, request))
                try:
                    texts = await self._texts(text_call, request)
                except BaseException:
                    images_done.cancel()
                    with suppress(asyncio.CancelledError, EmbedderError):
                        await images_done
                    raise
            images = await images_done
        elif request.images:
            images = await self._images(call, request)
        else:
            texts = await self._texts(call, request)
        ordered = _in_order(request, images, texts)
        tokens = await self._token_count(entry.name, request.texts)
        extension = f'{{"request_id":{json.dumps(rid)},"model":{self._provenance[entry.name]}}}'
        return render(ordered, request.encoding_format, entry.name, tokens, extension)

    async def _images(self, call: CallRecord, request: EmbeddingsRequest) -> list[np.ndarray]:
        options = EmbedOptions(normalize=request.normalize)
        try:
            result = await self.calls.embed_images(call, request.model, request.images, options)
        except EmbedderError as exc:
            raise _placed(exc, request, IMAGE) from None
        return list(result.embeddings)

    async def _texts(self, call: CallRecord, request: EmbeddingsRequest) -> list[np.ndarray]:
        try:
            result = await self.calls.embed_texts(call, request.model, request.texts, request.normalize)
        except EmbedderError as exc:
            raise _placed(exc, request, TEXT) from None
        return list(result.embeddings)

    async def _token_count(self, model: str, texts: list[str]) -> int:
        """OpenAI's usage.prompt_tokens: the ids the tokenizer gives the texts (framing tokens
        included, 77 at most each); images count 0."""
        loaded = self.calls.engine.cache.cached(model, TEXT) if texts else None
        if loaded is None or loaded.tokenizer is None:
            return 0
        encode = loaded.tokenizer.encode
        rows = encode(texts) if len(texts) <= INLINE_TOKEN_COUNT else await asyncio.to_thread(encode, texts)
        return sum(len(row) for row in rows)

    # -- GET /v1/models, health ----------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            self._authorize(request)
        except EmbedderError as exc:
            return error_response(exc, rid)
        with self.calls.tracked():
            data = [_model(status) for status in self.calls.statuses()]
        return JSONResponse({"object": "list", "data": data}, 200, {REQUEST_ID_HEADER: rid})

    async def live(self) -> Response:
        return JSONResponse({"status": "live"})

    async def readiness(self) -> Response:
        ready = self.ready()
        models = {
            s.info.name: {m: {"state": g.state.value, "error": g.error} for m, g in s.graphs.items()}
            for s in self.calls.statuses()
        }
        body = {"status": "ready" if ready else "not ready", "models": models}
        return JSONResponse(body, 200 if ready else 503)


def _model(status: ModelStatus) -> dict[str, Any]:
    info = status.info
    graphs = {
        modality: {
            "state": graph.state.value,
            "loaded": graph.loaded,
            "error": graph.error,
            "load_seconds": graph.load_seconds,
            "onnx_bytes": graph.onnx_bytes,
            "self_check": None if graph.self_check is None else _check(graph.self_check),
        }
        for modality, graph in status.graphs.items()
    }
    return {
        "id": info.name,
        "object": "model",
        "created": 0,
        "owned_by": "embedder",
        "dimension": info.dim,
        "modalities": list(info.modalities),
        "family": info.family,
        "precision": info.quantization or "fp32",
        "state": status.graphs[IMAGE].state.value if IMAGE in status.graphs else ModelState.UNAVAILABLE.value,
        "graphs": graphs,
        "info": _info(info),
    }


def _check(check: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(check)
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fields.items()
    }  # NaN: not JSON


async def _disconnected(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> None:
    """Returns when the client goes away: once the body is read, uvicorn's next message is
    `http.disconnect`, sent when the connection closes."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _deadline_passed() -> EmbedderError:
    return DeadlineExpired("deadline exceeded before the inputs were embedded")


def _in_order(
    request: EmbeddingsRequest, images: list[np.ndarray], texts: list[np.ndarray]
) -> list[np.ndarray]:
    parts = {IMAGE: iter(images), TEXT: iter(texts)}
    return [next(parts[kind]) for _, kind in request.order]


def _placed(exc: EmbedderError, request: EmbeddingsRequest, modality: str) -> EmbedderError:
    """In a request that mixes texts and images, the core's "image 2:" (the third image) also
    names its place in `input`; otherwise the message is the core's, word for word."""
    if not (request.images and request.texts):
        return exc
    places = [index for index, kind in request.order if kind == modality]

    def where(match: re.Match[str]) -> str:
        k = int(match.group(2))
        return f"input[{places[k]}] ({match.group(1)} {k}):" if k < len(places) else match.group(0)

    message = re.sub(r"\b(image|text) (\d+):", where, exc.message)
    if message == exc.message:
        return exc
    placed = type(exc).__new__(type(exc))
    placed.__dict__.update(exc.__dict__)
    placed.message = message
    placed.args = (message,)
    return placed
