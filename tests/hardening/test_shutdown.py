"""SIGTERM under load against a real `embedder serve` process: NOT_SERVING, refuse new
calls, finish every accepted call, exit 0 within the grace period.

Every call carries its own `x-request-id`, so each one is followed from both ends:

- the server's access log lists the calls a handler took (*accepted*), with the status it gave;
- the client records the status it received and whether the server's trailing metadata came
  with it (every Embed a handler answers carries its request id back).

An accepted call that the client did not receive OK is *lost*: there must be none. A call no
handler took ends UNAVAILABLE (refused: the listener was closed, or GOAWAY) or, in the instant
shutdown begins, CANCELLED: gRPC core cancels calls it has received but not yet handed to the
application (grpc/grpc#41785). Those are not lost work, and the bundled client retries them
(`embedder.client.retryable`), which the test checks on each one it sees.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedder.client import retryable
from embedder.server import STOP_GRACE_S
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import REQUEST_ID_KEY
from tests.hardening.conftest import image_request
from tests.support.images import encode, picture
from tests.support.processes import ServerProcess, health_status

GRACE_S = 10.0
CLIENTS = 8


@dataclass
class Load:
    """CLIENTS threads, each on its own channel, calling Embed back to back until stopped."""

    address: str
    calls: list[Call] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, number: int) -> None:
        request = image_request(*[encode(picture(320, 240, seed), "JPEG") for seed in range(4)])
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.EmbedderStub(channel)
            for n in itertools.count():
                if self.stop.is_set():
                    return
                call = Call(f"load-{number}-{n}", time.monotonic())
                try:
                    _, outcome = stub.Embed.with_call(
                        request, timeout=30.0, metadata=[(REQUEST_ID_KEY, call.rid)]
                    )
                    call.code, call.answered = "OK", _echoes(outcome.trailing_metadata(), call.rid)
                except grpc.RpcError as exc:
                    call.code, call.answered = exc.code().name, _echoes(exc.trailing_metadata(), call.rid)
                    call.retryable = retryable(exc)
                    if call.code == "UNAVAILABLE":
                        with self.lock:
                            self.refusals[re.sub(r"\d+", "N", str(exc.details()))[:90]] += 1
                call.ended = time.monotonic()
                with self.lock:
                    self.calls.append(call)
                if call.code == "UNAVAILABLE":
                    time.sleep(0.01)  # refused: do not spin on a closed port

    def codes(self, since: float = 0.0) -> Counter[str]:
        with self.lock:
            return Counter(c.code for c in self.calls if c.started >= since)


@dataclass
class Call:
    rid: str
    started: float
    ended: float = 0.0
    code: str = ""
    answered: bool = False  # the server's trailing metadata came back: a handler answered it
    retryable: bool = False  # what EmbedderClient would make of the failure


def _echoes(trailers: object, rid: str) -> bool:
    return (REQUEST_ID_KEY, rid) in [tuple(item) for item in trailers or ()]  # type: ignore[attr-defined]


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
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while load.codes()["OK"] < 3 * CLIENTS and time.monotonic() < deadline:  # load is flowing
        time.sleep(0.05)
    signalled = time.monotonic()
    server.sigterm()
    health = poll_health_until_exit(server, signalled)
    server.process.wait(GRACE_S + 10)
    exited = time.monotonic() - signalled
    time.sleep(0.3)  # let the clients meet the closed port
    load.stop.set()
    for thread in threads:
        thread.join(35)
    calls = {call.rid: call for call in load.calls}
    # The server's own record (the whole log: a split at the signal would race with calls finishing
    # then): which calls a handler took, and what it answered.
    accepted = {
        rid: status
        for status, rid in re.findall(r"Embed model=\S+ images=\d+ status=(\w+) .* id=(\S+)", server.log())
    }
    lost = sorted(rid for rid in accepted if calls[rid].code != "OK")
    unanswered = [c for c in calls.values() if c.code not in ("OK", "UNAVAILABLE")]
    in_flight = [c for c in calls.values() if c.started < signalled < c.ended]
    print(
        f"\nbefore SIGTERM: {dict(load.codes() - load.codes(signalled))}; started after: "
        f"{dict(load.codes(signalled))}; refusals: {dict(load.refusals)}\n"
        f"calls accepted by a handler: {len(accepted)}; in flight at the signal: "
        f"{dict(Counter(c.code for c in in_flight))}; "
        f"dropped by gRPC core before any handler: {[(c.rid, c.code) for c in unanswered]}\n"
        f"health after the signal: {[(round(t, 3), s) for t, s in transitions(health)]}\n"
        f"exit code {server.process.returncode} after {exited:.2f} s (grace {GRACE_S:.0f} s)\n"
        f"requests lost on SIGTERM under load: {len(lost)}"
    )
    assert load.codes()["OK"] >= 3 * CLIENTS
    # Nothing a handler took was lost: it answered OK, and the client received that OK.
    assert lost == [] and set(accepted.values()) == {"OK"}, [
        (rid, accepted[rid], calls[rid].code) for rid in lost
    ]
    assert {c.rid for c in calls.values() if c.code == "OK"} == set(accepted)
    assert any(c.code == "OK" for c in in_flight), (
        "no call was in flight at the signal: the drain was not exercised"
    )
    # Whatever else failed never reached a handler, and the bundled client would retry it.
    assert all(not c.answered and c.rid not in accepted and c.retryable for c in unanswered), unanswered
    # Health: not SERVING from the start of the drain, and never again. What a probe sees is
    # NOT_SERVING, UNAVAILABLE (refused), or CANCELLED for a Check caught in flight by the stop.
    # Half the grace is a wide bound for "at the signal": a flip left to the end of the drain would
    # come after the in-flight calls, at the grace when one hangs. (The delay itself: make bench.)
    first_down = next((t for t, s in health if s != "SERVING"), None)
    assert first_down is not None and first_down < GRACE_S / 2, transitions(health)
    assert all(s in ("NOT_SERVING", "UNAVAILABLE", "CANCELLED") for t, s in health if t >= first_down), health
    assert server.process.returncode == 0
    assert exited < GRACE_S


def watch(channel: grpc.Channel, seen: list[str]) -> grpc.Future:
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60.0
    )

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
        server.sigterm()
        while "NOT_SERVING" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        stream.cancel()
    server.process.wait(15)
    assert seen[:2] == ["SERVING", "NOT_SERVING"], seen
    assert server.process.returncode == 0


def terminate_once_streaming(server: ServerProcess, seen: list[str], grace: float) -> float:
    """SIGTERM once the open stream has delivered something; seconds until the process exited."""
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    signalled = time.monotonic()
    server.sigterm()
    server.process.wait(grace + 10)
    return time.monotonic() - signalled


def test_open_health_watch_does_not_hold_shutdown_for_the_whole_grace(
    spawn: Callable[..., ServerProcess],
) -> None:
    """Clients with gRPC client-side health checking keep a Watch open for ever; draining must
    not wait for it (nothing is in flight here, so the exit should take well under a second)."""
    grace = 6.0
    server = spawn("--shutdown-grace-s", str(grace))
    seen: list[str] = []
    with grpc.insecure_channel(server.address) as channel:
        watch(channel, seen)
        exited = terminate_once_streaming(server, seen, grace)
    print(
        f"\nidle server with one open health Watch: exit {server.process.returncode} after {exited:.2f} s "
        f"(grace {grace:.0f} s)"
    )
    assert server.process.returncode == 0
    assert exited < grace / 2


def test_a_stream_no_handler_tracks_holds_shutdown_for_one_second_not_the_grace(
    spawn: Callable[..., ServerProcess],
) -> None:
    """After the unary calls are done, whatever gRPC still holds (here an open reflection stream,
    as grpcurl keeps; in the wild also a call grpc.aio dropped at the moment of stop) gets
    STOP_GRACE_S more, then is cancelled: the process exits 0 long before the grace."""
    grace = 8.0
    server = spawn("--shutdown-grace-s", str(grace))
    release = threading.Event()
    answers: list[str] = []

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(30)

    with grpc.insecure_channel(server.address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            requests(), timeout=60
        )

        def read() -> None:
            try:
                for response in stream:
                    answers.append(response.WhichOneof("message_response"))
            except grpc.RpcError as exc:
                answers.append(exc.code().name)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        exited = terminate_once_streaming(server, answers, grace)
        release.set()
        reader.join(10)
    print(
        f"\nopen reflection stream at SIGTERM: exit {server.process.returncode} after {exited:.2f} s "
        f"(grace {grace:.0f} s); stream saw {answers}"
    )
    assert answers[0] == "list_services_response"
    assert server.process.returncode == 0
    # It waited STOP_GRACE_S for the stream (an order: load can only add to it), then cancelled it
    # rather than wait for the grace: half of it is a wide bound, 3 s past STOP_GRACE_S.
    assert STOP_GRACE_S <= exited < grace / 2
    assert "still holds calls no handler has" in server.log()
