"""Backpressure: the per-model queue is bounded and refuses at once when full; work whose client
deadline has passed, or whose call was cancelled, never reaches the model.

Whether the model ran an image is read from the server's own `embedder_batch_size` histogram:
its sum is the number of images that went through `session.run`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from tests.hardening.conftest import image_request
from tests.support.images import encode, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP
from tests.support.polling import wait_until

Serve = Callable[..., Served]
MAX_QUEUE = 4
IMAGES_PER_REQUEST = 4


def images_run(served: Served) -> float:
    return served.metric("embedder_batch_size_sum", model=CLIP)


def requests_seen(served: Served) -> dict[str, float]:
    codes = ("OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "INTERNAL")
    return {code: served.metric("embedder_requests_total", model=CLIP, code=code) for code in codes}


def settled_value(read: Callable[[], float], quiet_s: float = 0.5, timeout: float = 15.0) -> float:
    """`read()` once it has stopped changing for `quiet_s` (or when `timeout` runs out)."""
    deadline, value = time.monotonic() + timeout, read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if (latest := read()) == value:
            break
        value = latest
    return value


@contextmanager
def peak_depth(served: Served) -> Iterator[list[int]]:
    """Samples the model's queue depth every ~0.5 ms while the block runs; yields [peak]."""
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], *served.server.engine.queue_depths().values(), 0)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


@pytest.fixture
def bounded(serve: Serve) -> Served:
    """Batches of one, no batching delay, room for one request's images: the queue is full
    whenever a request is being run and the next one tries to queue."""
    served = serve(
        max_queue_images=MAX_QUEUE,
        max_images_per_request=MAX_QUEUE,
        max_batch_size=1,
        max_batch_delay_ms=0,
        preprocess_workers=8,
    )
    served.vectors(encode(picture(32, 24), "JPEG"), model=CLIP)  # load the model before measuring anything
    return served


def test_full_queue_answers_resource_exhausted_and_never_runs_the_refused(bounded: Served) -> None:
    request = image_request(*[encode(picture(32, 24, seed), "JPEG") for seed in range(IMAGES_PER_REQUEST)])
    expected = bounded.vectors(*[img.data for img in request.images], model=CLIP)
    before = images_run(bounded)
    codes: Counter[str] = Counter()
    details: set[str] = set()
    with peak_depth(bounded) as peak:
        for _round in range(10):  # flood in rounds of 100 concurrent calls until the queue overflowed
            calls = [bounded.stub.Embed.future(request, timeout=60.0) for _ in range(100)]
            for call in calls:
                try:
                    np.testing.assert_array_equal(
                        np.array([e.values for e in call.result().embeddings]), expected
                    )
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                    details.add(str(exc.details()))
            if codes["RESOURCE_EXHAUSTED"] and codes["OK"]:
                break
    print(
        f"\nflood of {sum(codes.values())} requests x {IMAGES_PER_REQUEST} images, queue {MAX_QUEUE}: "
        f"{dict(codes)}, peak queue depth {peak[0]}"
    )
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert peak[0] <= MAX_QUEUE
    assert all(f"max_queue_images={MAX_QUEUE}" in text and "retry later" in text for text in details), details
    # Only accepted requests' images reached the model: a refusal costs no inference.
    assert images_run(bounded) - before == codes["OK"] * IMAGES_PER_REQUEST
    assert wait_until(lambda: bounded.server.engine.queue_depths()[(CLIP, "image")] == 0, 5.0)


def test_expired_deadline_is_answered_and_never_run(bounded: Served) -> None:
    """A 1 ms deadline passes while the server decodes a large JPEG: the call must end
    DEADLINE_EXCEEDED and its images must be dropped before `session.run`."""
    big = encode(picture(1024, 768, 5), "JPEG", quality=95)
    before_images, before = images_run(bounded), requests_seen(bounded)

    def handled() -> float:
        return sum(requests_seen(bounded).values()) - sum(before.values())

    sent = 0
    for _batch in range(6):  # some calls die in transit, never reaching a handler: retry a few batches
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as caught:
                bounded.stub.Embed(image_request(big, big), timeout=0.001)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            sent += 1
        wait_until(lambda: handled() > 0, 2.0)
        settled = settled_value(handled)  # the server has finished with what it received
        if settled:
            break
    seen = {code: n - before[code] for code, n in requests_seen(bounded).items() if n - before[code]}
    print(f"\n{sent} calls with a 1 ms deadline: the server handled {settled:.0f}, ending {seen}")
    assert settled >= 1, "no call reached the handler: nothing was tested"
    assert set(seen) <= {"DEADLINE_EXCEEDED", "CANCELLED"}, seen
    assert images_run(bounded) == before_images  # the model never ran them
    bounded.vectors(big, model=CLIP)
    assert images_run(bounded) == before_images + 1


def test_cancelled_call_frees_its_queue_slots(serve: Serve) -> None:
    served = serve(max_batch_size=1, max_batch_delay_ms=0, max_queue_images=256)
    small = [encode(picture(32, 24, seed), "JPEG") for seed in range(250)]
    served.vectors(small[0], model=CLIP)
    before = images_run(served)
    call = served.stub.Embed.future(image_request(*small), timeout=120.0)
    assert wait_until(lambda: served.server.engine.queue_depths()[(CLIP, "image")] > 0, 60.0, step=0.001), (
        "never queued"
    )
    call.cancel()
    assert call.cancelled() or call.code() == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: served.server.engine.queue_depths()[(CLIP, "image")] == 0, 5.0)
    ran = images_run(served) - before
    print(f"\ncancelled a 250-image call once queued: {ran:.0f} of its images had run, queue back to 0")
    assert ran < len(small), "every image ran: the cancellation freed nothing"
    # The slots are free again: a request needing the whole queue goes through.
    full = served.stub.Embed(image_request(*small[:250]), timeout=120.0)
    assert len(full.embeddings) == 250
    assert served.server.engine.queue_depths()[(CLIP, "image")] == 0


def test_call_without_a_deadline_is_served(serve: Serve, good_jpeg: bytes) -> None:
    """grpcurl without -max-time, and most clients by default, send no deadline at all."""
    served = serve()
    call = served.stub.Embed.future(image_request(good_jpeg))  # no timeout: the point of the test
    try:
        response = call.result(timeout=60.0)  # the watchdog is on our side only
    except grpc.FutureTimeoutError:
        call.cancel()
        pytest.fail("a call without a deadline hung")
    except grpc.RpcError as exc:
        pytest.fail(f"a call without a deadline failed: {exc.code().name} {exc.details()}")
    np.testing.assert_array_equal(
        np.array(response.embeddings[0].values, np.float32), served.vectors(good_jpeg, model=CLIP)[0]
    )


def test_request_larger_than_the_queue_is_not_told_to_retry(serve: Serve, good_jpeg: bytes) -> None:
    """On an idle server, retrying can never help: a request over the queue's size is a limit
    (INVALID_ARGUMENT), not RESOURCE_EXHAUSTED. The settings accept max_images_per_request >
    max_queue_images, so the server must answer that request itself."""
    served = serve(max_queue_images=MAX_QUEUE, max_images_per_request=2 * MAX_QUEUE)
    error = served.error(image_request(*[good_jpeg] * (MAX_QUEUE + 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code().name}: {error.details()}"
    assert f"max_queue_images={MAX_QUEUE}" in error.details()
