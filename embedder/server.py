"""The server's lifecycle (STYLE 9): NOT_SERVING -> load and warm up -> SERVING; on stop,
NOT_SERVING, refuse new calls, let in-flight calls finish within the grace period."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import TokenAuthInterceptor
from .client import channel_options
from .cpus import plan_threads
from .engine import Engine
from .errors import EmbedderError
from .repository import Repository
from .service import EmbedderService
from .sessions import ModelState, SessionCache
from .settings import Settings
from .telemetry import Telemetry
from .v1 import embedder_pb2 as pb
from .v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EmbedderServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository.scan(settings.models_dir)
        self.plan = plan_threads(settings.intra_op_threads or None, settings.preprocess_workers or None)
        self.telemetry = Telemetry()
        self.metrics_port: int | None = None
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(1, "health")
        )
        for service in ("", SERVICE_NAME, *self.repository.entries):
            self.health.set(service, _NOT_SERVING)
        self.cache = SessionCache(
            self.repository, self.plan.intra_op, settings.max_loaded, settings.idle_ttl_s, self._model_state
        )
        self.engine = Engine(settings, self.repository, self.cache, self.plan.preprocess_workers,
                             batch_observer=self.telemetry.batch_done)  # fmt: skip
        self.telemetry.track(self.engine.queue_depths, lambda: len(self.cache.resident()))
        self.server = self._build_grpc_server()
        self.port = 0

    def _build_grpc_server(self) -> grpc.Server:
        tokens = self.settings.tokens()
        interceptors = [TokenAuthInterceptor(tokens)] if tokens else []
        server = grpc.server(
            ThreadPoolExecutor(self.settings.grpc_workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=self._options(),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs or None,
        )
        self.service = EmbedderService(self.engine, self.telemetry)
        pb_grpc.add_EmbedderServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        return server

    def _options(self) -> list[tuple[str, object]]:
        options = [
            *channel_options(self.settings.max_message_bytes, round_robin=False),
            ("grpc.so_reuseport", 0),
            # gRPC core cancels (CANCELLED, before any handler runs) calls that wait for a handler
            # beyond 1000 pending; under overload our admission control is what should answer, with
            # RESOURCE_EXHAUSTED, so calls are allowed to wait in core for a handler thread.
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 40_000),
        ]
        if self.settings.max_connection_age_s > 0:
            # Clients re-resolve DNS only when a connection ends: without this, replicas added by an
            # autoscaler are never used by clients already connected.
            age_ms = int(self.settings.max_connection_age_s * 1000)
            options += [("grpc.max_connection_age_ms", age_ms),
                        ("grpc.max_connection_age_grace_ms", int(self.settings.shutdown_grace_s * 1000))]  # fmt: skip
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
        if credentials is None:
            self.port = self.server.add_insecure_port(self.settings.address)
        else:
            self.port = self.server.add_secure_port(self.settings.address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.address}")
        self.server.start()
        if self.settings.metrics_address:
            self.metrics_port = self.telemetry.serve(self.settings.metrics_address)
            log.info("metrics on %s (port %d)", self.settings.metrics_address, self.metrics_port)
        log.info(
            "threads: %d CPUs available -> ORT intra-op %d, preprocess workers %d, gRPC workers %d",
            self.plan.cpus, self.plan.intra_op, self.plan.preprocess_workers, self.settings.grpc_workers,
        )  # fmt: skip
        if self.settings.preload:
            self._preload()
        self.cache.start_reaper()
        self.health.set("", _SERVING)
        self.health.set(SERVICE_NAME, _SERVING)
        log.info("serving on port %d (%s TLS) in %.2f s; models: %s", self.port,
                 "with" if credentials else "without", time.perf_counter() - started,
                 ", ".join(f"{n} [{self.cache.status(n)[0].value}]" for n in self.repository.entries) or "none")  # fmt: skip
        return self.port

    def _preload(self) -> None:
        for name in self.repository.entries:
            if self.cache.status(name)[0] is ModelState.UNAVAILABLE:
                log.warning("model %s not preloaded: %s", name, self.cache.status(name)[1])
                continue
            try:
                self.cache.get(name)
            except EmbedderError as exc:
                log.error("model %s failed to preload: %s", name, exc.message)

    def _model_state(self, name: str, state: ModelState, load_seconds: float) -> None:
        self.health.set(name, _SERVING if state is ModelState.SERVING else _NOT_SERVING)
        if state is ModelState.SERVING:
            self.telemetry.loads.labels(name).inc()
            self.telemetry.load_seconds.labels(name).set(load_seconds)
        elif state is ModelState.AVAILABLE:  # only ever reached by eviction
            self.telemetry.evictions.labels(name).inc()

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING everywhere, refuse new calls, wait for in-flight ones up to `grace` seconds."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down: draining in-flight calls for up to %.1f s", grace)
        started = time.monotonic()
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)  # refuses new calls at once
        # Unary calls get the grace period; long-lived streams (health Watch of client-side health
        # checking) would hold it to the end, so they are cut once the unary calls are done.
        # A call that gRPC accepted but no handler has picked up yet is not counted in flight:
        # wait until the handlers have stayed idle briefly before cutting what is left.
        while self.service.wait_idle(max(0.0, grace - (time.monotonic() - started))):
            time.sleep(0.2)
            if self.service.wait_idle(0) or time.monotonic() - started >= grace:
                break
        self.server.stop(max(0.0, min(0.1, grace - (time.monotonic() - started))))
        stopped.wait()
        self.engine.close()
        self.cache.close()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()
