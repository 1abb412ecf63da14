"""Scale-out: one client, two server processes, calls balanced per call by round_robin.

Each replica counts the calls it served in its own Prometheus counter
(`embedder_requests_total{model, code="OK"}`), so the split is measured where the work happened,
not inferred by the client.

Losing a replica is tried two ways. SIGTERM is the orderly one: the server sends GOAWAY and drains,
and gRPC itself moves new calls to the other replica (with the client's retries switched off, no
call failed in repeated runs). SIGKILL is a crash: calls in flight on the dead replica fail with
UNAVAILABLE, and only the client's retry (EmbedderClient retries UNAVAILABLE with backoff) saves
them; with retries off that test fails.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from embedder.client import EmbedderClient
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.models import CLIP as TINY_MODEL
from tests.support.processes import ServerProcess, running

CALLS = 200
WORKERS = 4


def _target(servers: list[ServerProcess]) -> str:
    # Several addresses in one target: the ipv4: resolver form, as a headless Service's DNS name
    # resolves to several pods.
    return "ipv4:" + ",".join(server.address for server in servers)


def _served(servers: list[ServerProcess], before: list[int]) -> list[int]:
    return [server.requests_ok(TINY_MODEL) - b for server, b in zip(servers, before, strict=True)]


@pytest.mark.timeout(120)
def test_round_robin_spreads_calls_over_both_replicas(
    replicas: list[ServerProcess], png_bytes: bytes
) -> None:
    before = [server.requests_ok(TINY_MODEL) for server in replicas]
    with EmbedderClient(_target(replicas), timeout=10) as client:
        for _ in range(CALLS):
            result = client.embed(TINY_MODEL, [png_bytes])
            assert result.embeddings.shape[0] == 1
    split = _served(replicas, before)
    print(f"\nround_robin split of {CALLS} sequential calls over 2 replicas: {split}")
    assert sum(split) == CALLS
    assert min(split) >= 0.3 * CALLS, split


@pytest.mark.timeout(120)
def test_sigterm_to_one_replica_mid_run_loses_no_call(
    replicas: list[ServerProcess], png_bytes: bytes
) -> None:
    victim, survivor = replicas
    completed = 0
    lock = threading.Lock()
    halfway = threading.Event()
    seen: dict[str, int] = {}

    def call(_: int) -> np.ndarray:
        nonlocal completed
        vector = client.embed(TINY_MODEL, [png_bytes]).embeddings
        with lock:
            completed += 1
            if completed == CALLS // 2:
                halfway.set()
        # Paced so the run outlasts the victim's shutdown: calls keep coming after it is gone.
        time.sleep(0.05)
        return vector

    def stop_victim() -> None:
        halfway.wait()
        seen["victim_served"] = victim.requests_ok(TINY_MODEL) - before_victim
        seen["at_sigterm"] = completed
        seen["exit_code"] = victim.terminate()
        seen["at_exit"] = completed

    before_victim, before_survivor = victim.requests_ok(TINY_MODEL), survivor.requests_ok(TINY_MODEL)
    with EmbedderClient(_target(replicas), timeout=10) as client:
        stopper = threading.Thread(target=stop_victim)
        stopper.start()
        with ThreadPoolExecutor(WORKERS) as pool:
            vectors = list(pool.map(call, range(CALLS)))  # any failed call raises here
        stopper.join(60)
    survivor_served = survivor.requests_ok(TINY_MODEL) - before_survivor
    print(
        f"\nSIGTERM to one replica after {seen['at_sigterm']} of {CALLS} calls; it exited "
        f"{seen['exit_code']} after {seen['at_exit']}; victim served >= {seen['victim_served']}, "
        f"survivor {survivor_served}; all {len(vectors)} calls succeeded"
    )
    assert len(vectors) == CALLS and all(v.shape[0] == 1 for v in vectors)
    assert seen["exit_code"] == 0, victim.log()  # a graceful drain, not a crash
    # The victim was gone while calls were still being made, so the run really spanned the loss...
    assert seen["at_exit"] < CALLS
    # ...and every call that started after it began shutting down went to the survivor.
    assert survivor_served >= CALLS - seen["at_sigterm"] - WORKERS
    assert seen["victim_served"] > 0  # both replicas took part before the stop


class AttemptCodes(grpc.UnaryUnaryClientInterceptor):
    """Counts the status of every attempt on the wire, retries included (the client's own
    `_call` only ever shows the last one)."""

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        with self._lock:
            self.codes[outcome.code().name] += 1
        return outcome


@pytest.fixture
def slow_victim_and_survivor(tiny_models_dir: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two replicas; the first holds every call ~1.5 s in its batcher (waiting to fill a batch),
    so when it is killed there are calls in flight on it, by construction rather than by luck."""
    slow = ("--max-batch-delay-ms", "1500", "--max-batch-size", "1024")
    victim = ServerProcess(tiny_models_dir, tmp_path / "victim.log", *slow, metrics=True)
    survivor = ServerProcess(tiny_models_dir, tmp_path / "survivor.log", metrics=True)
    with running(victim, survivor) as servers:
        yield servers


@pytest.mark.timeout(120)
def test_sigkill_of_a_replica_mid_run_is_absorbed_by_client_retries(
    slow_victim_and_survivor: list[ServerProcess], png_bytes: bytes
) -> None:
    victim, survivor = slow_victim_and_survivor
    calls = 40
    attempts = AttemptCodes()
    killed_at: dict[str, float] = {}

    def kill_when_busy() -> None:
        # Calls wait in the victim's batcher for 1.5 s: its queue is non-empty while they do.
        deadline = time.monotonic() + 30
        while victim.metric("embedder_queue_depth", model=TINY_MODEL) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at["queued"] = victim.metric("embedder_queue_depth", model=TINY_MODEL)
        victim.process.send_signal(signal.SIGKILL)

    before = survivor.requests_ok(TINY_MODEL)
    with EmbedderClient(_target(slow_victim_and_survivor), timeout=10) as client:
        client.stub = pb_grpc.EmbedderStub(grpc.intercept_channel(client.channel, attempts))
        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        with ThreadPoolExecutor(WORKERS) as pool:
            vectors = list(pool.map(lambda _: client.embed(TINY_MODEL, [png_bytes]).embeddings, range(calls)))
        killer.join(30)
    assert victim.process.wait(10) == -signal.SIGKILL
    print(
        f"\nSIGKILL with {killed_at['queued']:.0f} call(s) queued on the victim; attempts by status: "
        f"{dict(attempts.codes)}; survivor served {survivor.requests_ok(TINY_MODEL) - before}; "
        f"all {len(vectors)} calls succeeded"
    )
    assert len(vectors) == calls and all(v.shape[0] == 1 for v in vectors)
    assert killed_at["queued"] >= 1
    # The crash did fail attempts on the wire, and every one of them was retried to success.
    assert attempts.codes["UNAVAILABLE"] >= 1, attempts.codes
    assert attempts.codes["OK"] == calls
