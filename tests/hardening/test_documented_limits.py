"""The README's limits and statuses, each at its documented boundary against a real server: at the
limit a call is answered, one over it is refused with the documented status, and the server keeps
answering. Also `--max-concurrent-rpcs`, `--max-connection-age-s` and the INTERNAL answer."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from embedder.wire import REQUEST_ID_KEY, MiB
from tests.hardening.conftest import image_request
from tests.support.images import encode, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP
from tests.support.polling import wait_until

Serve = Callable[..., Served]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def text_request(*texts: str) -> pb.EmbedTextRequest:
    return pb.EmbedTextRequest(model=CLIP, texts=texts)


# --- texts --------------------------------------------------------------------------------------


def test_max_text_chars_counts_characters_at_the_boundary(serve: Serve) -> None:
    served = serve(max_text_chars=300)
    # 300 two-byte characters (600 bytes of UTF-8): the limit is on characters, so this is at it.
    at_limit = "é" * 300
    assert served.texts(CLIP, at_limit).shape == (1, 16)
    error = served.error(text_request("ok", at_limit + "é"))
    assert error.code() == INVALID
    assert error.details() == "text 1: 301 characters exceeds max_text_chars=300", error.details()
    assert served.texts(CLIP, "still serving").shape == (1, 16)


def test_max_texts_per_request_at_the_boundary(serve: Serve) -> None:
    served = serve(max_texts_per_request=5)
    assert served.texts(CLIP, *[f"text {i}" for i in range(5)]).shape == (5, 16)
    error = served.error(text_request(*[f"text {i}" for i in range(6)]))
    assert error.code() == INVALID
    assert error.details() == "6 texts exceeds max_texts_per_request=5", error.details()
    assert served.texts(CLIP, "still serving").shape == (1, 16)


def test_max_queue_texts_request_size_at_the_boundary(serve: Serve) -> None:
    served = serve(max_queue_texts=6, max_texts_per_request=6)
    assert served.texts(CLIP, *["a"] * 6).shape == (6, 16)  # a request that fills the queue exactly
    # One over can never fit, however long the caller waits: a limit (INVALID_ARGUMENT), not load.
    served_small = serve(max_queue_texts=6, max_texts_per_request=7)
    error = served_small.error(text_request(*["a"] * 7))
    assert error.code() == INVALID
    assert "7 texts exceeds max_queue_texts=6: split the request" in error.details(), error.details()


def test_full_text_queue_answers_resource_exhausted(serve: Serve) -> None:
    """The queue holds one request's texts; requests arriving while one is tokenized or run are
    refused with RESOURCE_EXHAUSTED ('retry later'), and the accepted ones answer correctly."""
    per_request = 8
    served = serve(
        max_queue_texts=per_request,
        max_texts_per_request=per_request,
        max_text_batch_size=1,
        max_batch_delay_ms=0,
    )
    texts = [f"{'word ' * 90} {i}" for i in range(per_request)]  # each past 77 tokens: full-length runs
    expected = served.texts(CLIP, *texts)
    codes: Counter[str] = Counter()
    details: set[str] = set()
    for _round in range(10):  # rounds of 50 concurrent calls until the queue overflowed
        calls = [served.stub.EmbedText.future(text_request(*texts), timeout=60.0) for _ in range(50)]
        for call in calls:
            try:
                got = np.array([e.values for e in call.result().embeddings], np.float32)
                np.testing.assert_array_equal(got, expected)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                details.add(str(exc.details()))
        if codes["RESOURCE_EXHAUSTED"] and codes["OK"]:
            break
    print(f"\nflood of {sum(codes.values())} EmbedText calls x {per_request} texts: {dict(codes)}")
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert all(f"max_queue_texts={per_request}" in d and "retry later" in d for d in details), details
    assert served.texts(CLIP, *texts).shape == (per_request, 16)


# --- images and messages ------------------------------------------------------------------------


def resized_pixels(width: int, height: int, shortest_edge: int) -> int:
    """Pixels after HF's shortest-edge resize (the short side to `shortest_edge`, the long side
    scaled and truncated), computed here rather than by the server's own function."""
    short, long = sorted((width, height))
    return shortest_edge * int(shortest_edge * long / short)


def test_max_resized_pixels_at_the_boundary(serve: Serve, tiny_clip_dir: Path) -> None:
    rule = load_spec(tiny_clip_dir / SPEC_FILE).preprocessing.resize
    assert rule is not None and rule.shortest_edge is not None
    strip = encode(picture(120, 6, 5), "PNG")  # 20:1, well under max_image_pixels
    limit = resized_pixels(120, 6, rule.shortest_edge)
    at_limit = serve(max_resized_pixels=limit)
    assert at_limit.vectors(strip, model=CLIP).shape == (1, 16)
    over = serve(max_resized_pixels=limit - 1)
    error = over.error(image_request(strip))
    assert error.code() == INVALID
    assert error.details().startswith("image 0: aspect ratio too extreme: 120x6 resizes to "), error.details()
    assert f"over max_resized_pixels={limit - 1}" in error.details(), error.details()
    assert over.vectors(encode(picture(64, 48, 1), "PNG"), model=CLIP).shape == (1, 16)


def request_of_size(size: int, jpeg: bytes) -> pb.EmbedRequest:
    """An Embed request of exactly `size` bytes on the wire: one JPEG padded after its end of
    image marker (decoders stop there, so it is still the same picture)."""
    padding = 0
    for _ in range(5):  # the length prefixes are varints: converge on their width
        request = image_request(jpeg + bytes(padding))
        padding += size - request.ByteSize()
        if request.ByteSize() == size:
            return request
    raise AssertionError(f"no request of exactly {size} bytes")


def test_max_message_bytes_at_the_boundary(serve: Serve) -> None:
    served = serve(max_message_bytes=MiB)
    jpeg = encode(picture(64, 48, 2), "JPEG", quality=90)
    at_limit = request_of_size(MiB, jpeg)
    assert len(served.call(at_limit).embeddings) == 1
    over = request_of_size(MiB + 1, jpeg)
    error = served.error(over)  # the stub's own limit is larger: gRPC on the server refuses it
    assert error.code() == EXHAUSTED, error.details()
    assert len(served.call(image_request(jpeg)).embeddings) == 1


# --- calls in progress, connections ---------------------------------------------------------


def open_watch(served: Served) -> grpc.Future:
    """A Health.Watch stream, open (its first answer read) until cancelled: one call in progress."""
    stream = served.health_stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60.0)
    assert health_pb2.HealthCheckResponse.ServingStatus.Name(next(stream).status) == "SERVING"
    return stream


def test_max_concurrent_rpcs_answers_resource_exhausted_beyond_the_limit(serve: Serve) -> None:
    """Calls in progress (open Health.Watch streams and an Embed) against --max-concurrent-rpcs=2.
    gRPC frees a call's slot when its handler's task ends, a moment after the answer went out: an
    accepted call may need a retry to see a slot freed, a refused one never has a spare."""
    served = serve(max_concurrent_rpcs=2)
    jpeg = encode(picture(64, 48, 3), "JPEG")
    expected = served.vectors(jpeg, model=CLIP)

    def answered() -> bool:
        try:
            return bool(np.array_equal(served.vectors(jpeg, model=CLIP), expected))
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED, exc.details()
            return False

    first = open_watch(served)
    assert wait_until(answered, 10.0), "one stream and one Embed (the limit) were never both served"
    second = open_watch(served)
    for _ in range(3):  # a third call in progress, however often it is tried
        error = served.error(image_request(jpeg))
        assert error.code() == EXHAUSTED, (error.code(), error.details())
    first.cancel()
    assert wait_until(answered, 10.0), "a slot freed by a cancelled stream was never reused"
    second.cancel()


def channel_states(channel: grpc.Channel) -> list[str]:
    states: list[str] = []
    channel.subscribe(lambda state: states.append(state.name), try_to_connect=True)
    return states


def dropped_after_ready(states: list[str]) -> bool:
    return "READY" in states and any(s != "READY" for s in states[states.index("READY") + 1 :])


def test_max_connection_age_closes_connections_and_calls_continue(serve: Serve) -> None:
    """With the setting, the server ends a connection once it is that old (GOAWAY): the client's
    channel leaves READY and its next call reconnects. Without it, the connection stays."""
    jpeg = encode(picture(64, 48, 4), "JPEG")
    aged, kept = serve(max_connection_age_s=1.0), serve()
    aged_states, kept_states = channel_states(aged.channel), channel_states(kept.channel)
    expected = kept.vectors(jpeg, model=CLIP)
    np.testing.assert_array_equal(aged.vectors(jpeg, model=CLIP), expected)
    # gRPC adds up to 10% of jitter to the age; 20 s is a wide bound on a 1 s age.
    assert wait_until(lambda: dropped_after_ready(aged_states), 20.0), aged_states
    np.testing.assert_array_equal(aged.vectors(jpeg, model=CLIP), expected)  # a new connection
    assert aged_states[-1] == "READY", aged_states
    # The control has been connected at least as long as the aged connection lived.
    np.testing.assert_array_equal(kept.vectors(jpeg, model=CLIP), expected)
    assert "READY" in kept_states and not dropped_after_ready(kept_states), kept_states


# --- INTERNAL ---------------------------------------------------------------------------------


def test_a_server_fault_is_internal_with_the_request_id_and_the_traceback_only_in_the_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing a client sends may cause INTERNAL, so the fault comes from the server's environment:
    its preprocessing thread pool is shut down under it (as at the end of a stop), and handing a
    request's images to it raises concurrent.futures' RuntimeError, which no error kind covers.

    The caller gets INTERNAL with its request id and nothing of the cause; the log holds the
    traceback under that id; the metrics count the call as INTERNAL; other calls are answered."""
    served = serve()
    jpeg = encode(picture(64, 48, 6), "JPEG")
    served.vectors(jpeg, model=CLIP)
    before = served.metric("embedder_requests_total", model=CLIP, code="INTERNAL")
    served.server.engine.pool.shutdown(wait=True)
    rid = "documented-internal-1"
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as caught:
        served.stub.Embed(image_request(jpeg), timeout=30.0, metadata=[(REQUEST_ID_KEY, rid)])
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == f"internal error (request {rid}); see the server log", error.details()
    assert (REQUEST_ID_KEY, rid) in tuple(error.trailing_metadata() or ())
    logged = [r for r in caplog.records if rid in r.getMessage() and r.exc_info is not None]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError
    assert "shutdown" in caplog.text and "Traceback" in caplog.text  # the cause: in the log only
    assert served.metric("embedder_requests_total", model=CLIP, code="INTERNAL") == before + 1
    assert served.health() == "SERVING" and CLIP in served.models()  # other calls still answered


def test_concurrent_internal_faults_each_name_their_own_request(serve: Serve) -> None:
    """Several faulting calls at once: each message names its own caller's request id."""
    served = serve()
    jpeg = encode(picture(64, 48, 7), "JPEG")
    served.vectors(jpeg, model=CLIP)
    served.server.engine.pool.shutdown(wait=True)
    results: dict[str, str] = {}

    def call(rid: str) -> None:
        try:
            served.stub.Embed(image_request(jpeg), timeout=30.0, metadata=[(REQUEST_ID_KEY, rid)])
            results[rid] = "OK"
        except grpc.RpcError as exc:
            results[rid] = f"{exc.code().name}: {exc.details()}"

    threads = [threading.Thread(target=call, args=(f"fault-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {
        f"fault-{i}": f"INTERNAL: internal error (request fault-{i}); see the server log" for i in range(6)
    }
