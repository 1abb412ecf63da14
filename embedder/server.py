"""The server's lifecycle: NOT_SERVING -> load and warm up -> SERVING; on stop,
NOT_SERVING, refuse new calls, let in-flight calls finish within the grace period.

gRPC runs on asyncio (`grpc.aio`) in a thread of its own: one event loop answers every call, and a
call waiting for its images holds no thread. The HTTP front end (uvicorn, http_api.py) runs on the
same loop over the same `Calls`: one engine, shared batchers, limits, metrics and drain. Decoding runs in the engine's worker pool and
inference in each model's batcher thread. The public methods (`start`, `stop`, `wait`) are
blocking, so the CLI and tests drive the server like any other object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import TokenAuthInterceptor
from .calls import Calls
from .cpus import plan_threads
from .engine import Engine
from .errors import EmbedderError
from .grpc_api import SERVICE_NAME, EmbedderService
from .http_api import HttpFrontEnd
from .http_server import HttpHost, bind
from .repository import IMAGE, Repository
from .sessions import ModelState, SessionCache, describe
from .settings import Settings
from .telemetry import Telemetry
from .wire import channel_options

log = logging.getLogger(__name__)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
T = TypeVar("T")
PENDING_SOFT_LIMIT = 5000
STOP_GRACE_S = 1.0  # after the handlers are done: for refusals being written and streams ending


def health_name(name: str, modality: str) -> str:
    """A graph's grpc.health.v1 service: the model's name for its image tower, NAME/text for text."""
    return name if modality == IMAGE else f"{name}/{modality}"


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 as published by grpcio-health-checking, plus a way to end open Watch
    streams, so they do not hold a shutdown for its whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[asyncio.Future[None]] = set()
        self._ending = False

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # The stream runs as an inner task: cancelling that one (not the call's own task, whose
        # cancellation gRPC turns into a wait for the end of the grace) lets the call end with OK.
        stream = asyncio.ensure_future(super().Watch(request, context))
        self._watches.add(stream)
        try:
            await stream
        except asyncio.CancelledError:
            if not stream.cancelled() or not self._ending:
                raise
        finally:
            self._watches.discard(stream)

    def end_watches(self) -> None:
        self._ending = True
        for stream in list(self._watches):
            stream.cancel()


class EmbedderServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository.scan(settings.models_dir)
        self.plan = plan_threads(settings.intra_op_threads or None, settings.preprocess_workers or None)
        self.telemetry = Telemetry()
        self.metrics_port: int | None = None
        self.health = HealthServicer()
        self.cache = SessionCache(
            self.repository,
            self.plan.intra_op,
            settings.max_loaded,
            settings.idle_ttl_s,
            self._model_state,
            allow_golden_mismatch=settings.allow_golden_mismatch,
        )
        graphs = [health_name(*graph) for graph in self.cache.graphs()]
        self._health: dict[str, int] = {s: _NOT_SERVING for s in ("", SERVICE_NAME, *graphs)}
        self.engine = Engine(
            settings,
            self.repository,
            self.cache,
            self.plan.preprocess_workers,
            batch_observer=self.telemetry.batch_done,
        )
        self.telemetry.track(self.engine.queue_depths, lambda: len(self.cache.resident()))
        self.calls = Calls(self.engine, self.telemetry)
        self.service = EmbedderService(self.calls)
        self.port = 0
        self.http_port: int | None = None
        self._http: HttpHost | None = None
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    # -- the event loop's thread ------------------------------------------------------------
    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's loop from another thread and returns its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _set_health(self, service: str, status: int) -> None:
        """Callable from any thread: before start it is only recorded, after it is published."""
        self._health[service] = status
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        if threading.current_thread() is self._thread:
            loop.create_task(self.health.set(service, status))
        else:
            asyncio.run_coroutine_threadsafe(self.health.set(service, status), loop)

    def _build_grpc_server(self) -> grpc.aio.Server:
        tokens = self.settings.tokens()
        server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(tokens)] if tokens else None,
            options=self._options(),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs or None,
        )
        self.service.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    def _options(self) -> list[tuple[str, object]]:
        options = [
            *channel_options(self.settings.max_message_bytes, round_robin=False),
            ("grpc.so_reuseport", 0),
            # Calls the event loop has not picked up yet wait in gRPC core. Past the soft limit core
            # refuses a random share of new calls with CANCELLED (all of them past the hard one),
            # before any handler could answer RESOURCE_EXHAUSTED; the defaults (1000 / 3000) are
            # reached by a stall of about a second at the call rates a small model sees.
            ("grpc.server.max_pending_requests", PENDING_SOFT_LIMIT),
            ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_SOFT_LIMIT),
        ]
        if self.settings.max_connection_age_s > 0:
            # Clients re-resolve DNS only when a connection ends: without this, replicas added by an
            # autoscaler are never used by clients already connected.
            age_ms = int(self.settings.max_connection_age_s * 1000)
            options += [
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", int(self.settings.shutdown_grace_s * 1000)),
            ]
        return options

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.tls_cert is None or s.tls_key is None:
            return None
        client_ca = s.tls_client_ca.read_bytes() if s.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def start(self) -> int:
        """Bind, start, preload if asked, then report SERVING. Returns the bound port."""
        started = time.perf_counter()
        credentials = self._credentials()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        try:
            self.port = self._on_loop(self._start_grpc(credentials))
            self.http_port = self._start_http()
        except BaseException:
            if self._server is not None:
                self._on_loop(self._server.stop(0))
                self._server = None
            self._close_loop()
            raise
        if self.settings.metrics_address:
            self.metrics_port = self.telemetry.serve(self.settings.metrics_address)
            log.info("metrics on %s (port %d)", self.settings.metrics_address, self.metrics_port)
        log.info(
            "threads: %d CPUs available -> ORT intra-op %d, preprocess workers %d, gRPC on one asyncio loop",
            self.plan.cpus,
            self.plan.intra_op,
            self.plan.preprocess_workers,
        )
        if self.settings.preload:
            self._preload()
        self.cache.start_reaper()
        self._set_health("", _SERVING)
        self._set_health(SERVICE_NAME, _SERVING)
        log.info(
            "serving gRPC on port %d, HTTP %s (%s TLS) in %.2f s; models: %s",
            self.port,
            f"on port {self.http_port}" if self.http_port is not None else "off",
            "with" if credentials else "without",
            time.perf_counter() - started,
            ", ".join(f"{n} [{self.cache.status(n)[0].value}]" for n in self.repository.entries) or "none",
        )
        return self.port

    async def _start_grpc(self, credentials: grpc.ServerCredentials | None) -> int:
        server = self._build_grpc_server()
        for service, status in dict(self._health).items():
            await self.health.set(service, status)
        try:
            if credentials is None:
                port = server.add_insecure_port(self.settings.address)
            else:
                port = server.add_secure_port(self.settings.address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot bind {self.settings.address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot bind {self.settings.address}")
        await server.start()
        self._server = server
        return port

    def http_address(self) -> str | None:
        """The HTTP front end's address as asked; port 0 (any free port) for a throwaway server
        whose gRPC address is on port 0 and whose HTTP address was left at its default, so that
        several of them run side by side."""
        address = self.settings.http_address
        if address.lower() == "off":
            return None
        if "http_address" not in self.settings.model_fields_set and self.settings.address.endswith(":0"):
            return address.rpartition(":")[0] + ":0"
        return address

    def _start_http(self) -> int | None:
        address = self.http_address()
        if address is None:
            return None
        sock = bind(address)
        front = HttpFrontEnd(self.calls, self.settings, self.ready)
        self._http = HttpHost(front.app, self.settings, sock)
        try:
            self._on_loop(self._http.start())
        except BaseException:
            sock.close()
            self._http = None
            raise
        log.info("HTTP on %s (port %d)", address, self._http.port)
        return self._http.port

    def ready(self) -> bool:
        """HTTP readiness: start-up done, not draining, and with --preload every graph that could
        load is serving (or was evicted since: it loads again on demand)."""
        if self._draining or self._health.get("") != _SERVING:
            return False
        if not self.settings.preload:
            return True
        return all(
            self.cache.status(*graph)[0] is not ModelState.UNAVAILABLE for graph in self.cache.graphs()
        )

    def _close_loop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None  # closed once: a `stop` after a failed `start` finds nothing

    def _preload(self) -> None:
        """Every available graph, as many at once as there are cores: building a session is mostly
        single-threaded (docs/performance.md, "Graphs preload in parallel")."""
        with ThreadPoolExecutor(self.plan.cpus, thread_name_prefix="preload") as pool:
            list(pool.map(self._preload_one, self.cache.graphs()))

    def _preload_one(self, graph: tuple[str, str]) -> None:
        state, error, _ = self.cache.status(*graph)
        if state is ModelState.UNAVAILABLE:
            log.warning("model %s not preloaded: %s", describe(graph), error)
            return
        name, modality = graph
        try:
            self.cache.get(self.repository.entries[name], modality)
        except EmbedderError as exc:
            log.error("model %s failed to preload: %s", describe(graph), exc.message)

    def _model_state(self, name: str, modality: str, state: ModelState, load_seconds: float) -> None:
        self._set_health(
            health_name(name, modality), _SERVING if state is ModelState.SERVING else _NOT_SERVING
        )
        if state is ModelState.SERVING:
            self.telemetry.loads.labels(name, modality).inc()
            self.telemetry.load_seconds.labels(name, modality).set(load_seconds)
        elif state is ModelState.AVAILABLE:  # only ever reached by eviction
            self.telemetry.evictions.labels(name, modality).inc()

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING everywhere, refuse new calls, wait for in-flight ones up to `grace` seconds.
        Safe to call more than once, and on a server that never started."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.settings.shutdown_grace_s if grace is None else grace
            self._draining = True
            if self._server is not None:
                log.info("shutting down: draining in-flight calls for up to %.1f s", grace)
                self._on_loop(self._drain(grace))
            self._close_loop()
            self.engine.close()
            self.cache.close()
            self._stopped.set()
            log.info("stopped")

    async def _drain(self, grace: float) -> None:
        """`stop` refuses new calls at once (GOAWAY, listener closed) and waits for the calls in
        progress. Unary calls get the grace period; long-lived streams (the health Watch of
        client-side health checking) would hold it to the end, so they are ended once the unary
        calls are done.

        What can still hold `stop` after that is a call no handler tracks: an open reflection stream
        (grpcurl keeps one), or a call that grpc.aio took from core in the instant shutdown began
        and never dispatched (seen here once in a dozen SIGTERMs under load: the exit then waited
        out the whole grace). So once the handlers are idle, `stop` gets STOP_GRACE_S more, then
        whatever is left is cancelled. gRPC's shutdown is not safe to run twice *at once*: the
        first `stop` is cancelled before the second one starts.
        """
        assert self._server is not None
        ends = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        # Both front ends stop accepting at once; uvicorn closes idle connections and lets
        # requests in progress answer (their connections close after the answer).
        http_stopping = asyncio.ensure_future(self._http.stop(grace)) if self._http else None
        stopping = asyncio.ensure_future(self._server.stop(grace))
        await self.calls.wait_idle(grace)
        self.health.end_watches()
        if http_stopping is not None:
            await http_stopping
        if ends - time.monotonic() <= STOP_GRACE_S:
            return await stopping  # its own grace runs out first
        done, _ = await asyncio.wait({stopping}, timeout=STOP_GRACE_S)
        if done:
            return stopping.result()
        log.warning(
            "gRPC still holds calls no handler has after %.1f s of idle: cancelling them", STOP_GRACE_S
        )
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await self._server.stop(0)

    def wait(self) -> None:
        """Blocks until `stop` has finished."""
        self._stopped.wait()
