"""Metrics (Prometheus, own port, off unless `metrics_address` is set) and the access log.

The registry is per server rather than prometheus-client's global one, so several servers in one
process (tests, embedding) never share or clash on counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

access_log = logging.getLogger("embedder.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Telemetry:
    """Per-model series carry a `modality` label: "image" (Embed) or "text" (EmbedText)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        per_graph = ["model", "modality"]
        self.requests = Counter(
            "embedder_requests",
            "Embedding calls by model, modality, front end (grpc, http) and status code",
            [*per_graph, "frontend", "code"],
            registry=r,
        )
        self.images = Counter(
            "embedder_images", "Images in Embed calls by model and status", ["model", "code"], registry=r
        )
        self.texts = Counter(
            "embedder_texts", "Texts in EmbedText calls by model and status", ["model", "code"], registry=r
        )
        self.latency = Histogram(
            "embedder_request_seconds",
            "Latency of answered calls",
            per_graph,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "embedder_batch_size", "Items per session.run", per_graph, buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "embedder_batch_seconds", "session.run time", per_graph, buckets=LATENCY_BUCKETS, registry=r
        )
        self.decode_failures = Counter(
            "embedder_decode_failures", "Rejected images by reason", ["reason"], registry=r
        )
        self.load_seconds = Gauge(
            "embedder_model_load_seconds", "Last load + warm-up time", per_graph, registry=r
        )
        self.loads = Counter("embedder_model_loads", "Session loads", per_graph, registry=r)
        self.evictions = Counter(
            "embedder_evictions", "Sessions evicted (LRU or idle)", per_graph, registry=r
        )
        self.resident = Gauge("embedder_models_resident", "Sessions resident", registry=r)

    def serve(self, address: str) -> int:
        """Start the /metrics HTTP endpoint; returns its port (address may use port 0)."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"  # "[::]:9090" -> "::"
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return int(server.server_port)

    def track(
        self, queue_depths: Callable[[], dict[tuple[str, str], int]], resident: Callable[[], int]
    ) -> None:
        """Queue depth and residency are read at scrape time, never pushed from the hot path."""
        self.registry.register(_QueueDepth(queue_depths))
        self.resident.set_function(resident)

    def request_done(
        self, model: str, modality: str, frontend: str, items: int, code: str, seconds: float, request_id: str
    ) -> None:
        self.requests.labels(model, modality, frontend, code).inc()
        (self.texts if modality == "text" else self.images).labels(model, code).inc(items)
        if code == "OK":
            self.latency.labels(model, modality).observe(seconds)
        method, noun = ("EmbedText", "texts") if modality == "text" else ("Embed", "images")
        access_log.info(
            "%s %s model=%s %s=%d status=%s %.1f ms id=%s",
            frontend,
            method,
            model,
            noun,
            items,
            code,
            seconds * 1000,
            request_id,
            extra={
                "frontend": frontend,
                "method": method,
                "model": model,
                noun: items,
                "status": code,
                "ms": round(seconds * 1000, 2),
                "request_id": request_id,
            },
        )

    def batch_done(self, model: str, modality: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, modality).observe(size)
        self.batch_seconds.labels(model, modality).observe(seconds)

    def decode_failed(self, reason: str) -> None:
        self.decode_failures.labels(reason).inc()


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "embedder_queue_depth",
            "Items admitted and not yet answered: being decoded or tokenized, queued or running",
            labels=["model", "modality"],
        )
        for (model, modality), depth in self._depths().items():
            family.add_metric([model, modality], depth)
        yield family
