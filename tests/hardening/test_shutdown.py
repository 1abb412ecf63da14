"""SIGTERM under load against a real `embedder serve` process (STYLE 9): NOT_SERVING, refuse new
calls, finish every accepted call, exit 0 within the grace period.

A call is *accepted* when the server took it: it ends OK or with any status but UNAVAILABLE
(UNAVAILABLE is a refusal: the connection or the stream was turned away once shutdown began).
An accepted call that does not end OK is *lost*. The server's own access log is the second
witness: it must list exactly as many OK calls as the clients received, and nothing else.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening.conftest import image_request
from tests.hardening.corpus import encode, picture
from tests.hardening.process import ServerProcess, health_status

GRACE_S = 10.0
CLIENTS = 8


@dataclass
class Load:
    """CLIENTS threads, each on its own channel, calling Embed back to back until stopped."""

    address: str
    codes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        request = image_request(*[encode(picture(320, 240, seed), "JPEG") for seed in range(4)])
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.EmbedderStub(channel)
            while not self.stop.is_set():
                try:
                    stub.Embed(request, timeout=30.0)
                    code, details = "OK", ""
                except grpc.RpcError as exc:
                    code, details = exc.code().name, str(exc.details())
                with self.lock:
                    self.codes[code] += 1
                    if code == "UNAVAILABLE":
                        self.refusals[re.sub(r"\d+", "N", details)[:90]] += 1
                if code == "UNAVAILABLE":
                    time.sleep(0.01)  # refused: do not spin on a closed port

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.codes)


def poll_health_until_exit(server: ServerProcess, signalled: float) -> list[tuple[float, str]]:
    """Health Check answers (time since the signal, status), polled every few ms until exit."""
    answers: list[tuple[float, str]] = []
    with grpc.insecure_channel(server.address) as channel:
        while server.process.poll() is None and time.monotonic() - signalled < GRACE_S + 5:
            answers.append((time.monotonic() - signalled, health_status(channel, timeout=0.5)))
            time.sleep(0.002)
    return answers


def transitions(answers: list[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(t, s) for i, (t, s) in enumerate(answers) if i == 0 or answers[i - 1][1] != s]


def test_sigterm_under_load_loses_nothing_and_exits_0(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn("--preload", "--shutdown-grace-s", str(GRACE_S))
    load = Load(server.address)
    threads = [threading.Thread(target=load.client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while load.snapshot()["OK"] < 3 * CLIENTS and time.monotonic() < deadline:  # load is flowing
        time.sleep(0.05)
    before = load.snapshot()
    signalled = time.monotonic()
    server.terminate()
    health = poll_health_until_exit(server, signalled)
    server.process.wait(GRACE_S + 10)
    exited = time.monotonic() - signalled
    time.sleep(0.3)  # let the clients meet the closed port
    load.stop.set()
    for thread in threads:
        thread.join(35)
    after = load.snapshot() - before
    ok_after = after["OK"]
    lost = sum(n for code, n in after.items() if code not in ("OK", "UNAVAILABLE"))
    print(f"\nbefore SIGTERM: {dict(before)}; after: {dict(after)}; refusals: {dict(load.refusals)}\n"
          f"health after the signal: {[(round(t, 3), s) for t, s in transitions(health)]}\n"
          f"exit code {server.process.returncode} after {exited:.2f} s (grace {GRACE_S:.0f} s)\n"
          f"requests lost on SIGTERM under load: {lost}")  # fmt: skip
    assert before["OK"] >= 3 * CLIENTS and set(before) == {"OK"}, before
    assert lost == 0, after
    assert ok_after >= 1, "no call was in flight at the signal: the drain was not exercised"
    # The server's own record (whole log: a split at the signal would race with calls finishing
    # then): it answered only OK, and exactly as many as the clients received.
    statuses = Counter(re.findall(r"Embed model=\S+ images=\d+ status=(\w+)", server.log()))
    assert set(statuses) <= {"OK"} and statuses["OK"] == before["OK"] + ok_after, (statuses, before, after)
    # Health: not SERVING within a second of the signal, and never again. What a probe sees is
    # NOT_SERVING, UNAVAILABLE (refused), or CANCELLED for a Check caught in flight by the stop.
    first_down = next((t for t, s in health if s != "SERVING"), None)
    assert first_down is not None and first_down < 1.0, transitions(health)
    assert all(s in ("NOT_SERVING", "UNAVAILABLE", "CANCELLED") for t, s in health if t >= first_down), health
    assert server.process.returncode == 0
    assert exited < GRACE_S


def watch(channel: grpc.Channel, seen: list[str]) -> grpc.Future:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60.0)

    def read() -> None:
        try:
            for update in stream:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))
        except grpc.RpcError as exc:
            seen.append(exc.code().name)

    threading.Thread(target=read, daemon=True).start()
    return stream


def test_health_watch_sees_not_serving_on_sigterm(spawn: Callable[..., ServerProcess]) -> None:
    """Check calls are refused as soon as shutdown begins; a Watch stream shows the flip itself."""
    server = spawn("--shutdown-grace-s", "3")
    seen: list[str] = []
    with grpc.insecure_channel(server.address) as channel:
        stream = watch(channel, seen)
        deadline = time.monotonic() + 10
        while seen != ["SERVING"] and time.monotonic() < deadline:
            time.sleep(0.01)
        server.terminate()
        while "NOT_SERVING" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        stream.cancel()
    server.process.wait(15)
    assert seen[:2] == ["SERVING", "NOT_SERVING"], seen
    assert server.process.returncode == 0


def test_open_health_watch_does_not_hold_shutdown_for_the_whole_grace(spawn: Callable[..., ServerProcess]) -> None:
    """Clients with gRPC client-side health checking keep a Watch open for ever; draining must
    not wait for it (nothing is in flight here, so the exit should take well under a second)."""
    grace = 6.0
    server = spawn("--shutdown-grace-s", str(grace))
    seen: list[str] = []
    with grpc.insecure_channel(server.address) as channel:
        watch(channel, seen)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled = time.monotonic()
        server.terminate()
        server.process.wait(grace + 10)
        exited = time.monotonic() - signalled
    print(f"\nidle server with one open health Watch: exit {server.process.returncode} after {exited:.2f} s "
          f"(grace {grace:.0f} s)")  # fmt: skip
    assert server.process.returncode == 0
    assert exited < grace / 2
