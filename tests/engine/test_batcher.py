"""The batcher alone, with a plain numpy function as the model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from embedder.batcher import Batcher, RunBatch, Runner
from embedder.errors import DeadlineExpired, LimitExceeded, Overloaded
from embedder.turns import CpuTurns


def _pixels(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.float32)


class Recorder:
    """Sums each image; remembers every batch it ran; can hold a run until released."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.batches.append([float(x[0, 0, 0]) for x in batch])
        return batch.sum(axis=(2, 3))


def runner(model: Callable[[np.ndarray], np.ndarray]) -> Runner:
    """A model that needs no loading, run on the batch's tensors stacked (as the engine does)."""
    return lambda: lambda items: model(np.stack(items))


def test_rows_come_back_in_order_and_batches_respect_the_maximum() -> None:
    model = Recorder()
    model.gate.clear()
    batcher = Batcher("m", runner(model), max_batch=4, max_delay_s=0.05, max_queue=100)
    first = batcher.submit([_pixels(-1)], None)  # occupies the runner while the rest queue up
    time.sleep(0.1)
    futures = batcher.submit([_pixels(i) for i in range(10)], None)
    model.gate.set()
    values = [f.result(5)[0] for f in futures]
    assert first[0].result(5)[0] == pytest.approx(-4.0)
    assert values == pytest.approx([i * 4.0 for i in range(10)])
    assert all(len(b) <= 4 for b in model.batches)
    assert [v for b in model.batches[1:] for v in b] == list(range(10))
    batcher.close()


def test_admission_is_refused_at_once_when_full_and_freed_on_answer() -> None:
    batcher = Batcher("m", runner(Recorder()), max_batch=1, max_delay_s=0.0, max_queue=3)
    with batcher.admit(2):
        assert batcher.depth() == 2
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="max_queue_images=3"), batcher.admit(2):
            pass
        assert time.perf_counter() - started < 0.05
        with batcher.admit(1):
            assert batcher.depth() == 3
    assert batcher.depth() == 0
    with pytest.raises(LimitExceeded, match="4 images exceeds max_queue_images=3"), batcher.admit(4):
        pass
    batcher.close()


def test_expired_and_cancelled_work_never_reaches_the_model() -> None:
    model = Recorder()
    model.gate.clear()
    batcher = Batcher("m", runner(model), max_batch=8, max_delay_s=0.0, max_queue=100)
    batcher.submit([_pixels(0)], None)
    time.sleep(0.05)
    expired = batcher.submit([_pixels(1)], deadline=time.monotonic() + 0.01)
    cancelled = batcher.submit([_pixels(2)], None)
    kept = batcher.submit([_pixels(3)], None)
    assert cancelled[0].cancel()
    time.sleep(0.05)
    model.gate.set()
    assert kept[0].result(5)[0] == pytest.approx(12.0)
    with pytest.raises(DeadlineExpired):
        expired[0].result(5)
    ran = [v for b in model.batches for v in b]
    assert 1.0 not in ran and 2.0 not in ran and 3.0 in ran
    batcher.close()


def test_a_failing_run_fails_every_request_in_it_and_the_batcher_survives() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch.sum(axis=(2, 3))

    batcher = Batcher("m", runner(flaky), max_batch=8, max_delay_s=0.0, max_queue=100)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit([_pixels(1)], None)[0].result(5)
    assert batcher.submit([_pixels(2)], None)[0].result(5)[0] == pytest.approx(8.0)
    batcher.close()


def test_images_still_being_decoded_join_the_batch() -> None:
    """Decoding happens between runs (turns.py): a batch taken the moment the first decoded image
    arrives would be a batch of one. Admitted images not yet submitted are waited for, up to
    max_fill_wait_s, though max_delay_s is long past."""
    model = Recorder()
    batcher = Batcher("m", runner(model), max_batch=8, max_delay_s=0.0, max_queue=100, max_fill_wait_s=2.0)
    with batcher.admit(1) as first, batcher.admit(2) as second:
        futures = batcher.submit([_pixels(1)], None, first)
        time.sleep(0.2)  # "decoding" the second request
        futures += batcher.submit([_pixels(2), _pixels(3)], None, second)
        assert [f.result(5)[0] for f in futures] == pytest.approx([4.0, 8.0, 12.0])
    assert model.batches == [[1.0, 2.0, 3.0]]
    batcher.close()


def test_an_admission_that_ends_undecoded_stops_the_wait_at_once() -> None:
    """A request whose image failed to decode never submits: the batch must not wait out
    max_fill_wait_s for it."""
    model = Recorder()
    batcher = Batcher("m", runner(model), max_batch=8, max_delay_s=0.0, max_queue=100, max_fill_wait_s=5.0)
    started = time.monotonic()
    with batcher.admit(1) as first:
        with batcher.admit(1):
            future = batcher.submit([_pixels(1)], None, first)[0]
            time.sleep(0.1)
        # the second admission ended without a submit (its decode failed)
        assert future.result(5)[0] == pytest.approx(4.0)
    assert time.monotonic() - started < 2.0
    assert model.batches == [[1.0]]
    batcher.close()


def test_without_images_in_decoding_a_lone_image_runs_at_once() -> None:
    model = Recorder()
    batcher = Batcher("m", runner(model), max_batch=8, max_delay_s=0.0, max_queue=100, max_fill_wait_s=5.0)
    started = time.monotonic()
    with batcher.admit(1) as only:
        assert batcher.submit([_pixels(1)], None, only)[0].result(5)[0] == pytest.approx(4.0)
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_a_model_loading_before_its_batch_does_not_hold_the_cores_turn() -> None:
    """A model evicted after a request was admitted is loaded by the batcher's runner, before the
    batch asks for its CPU turn: meanwhile other models' batches and the decodes go on."""
    turns = CpuTurns()
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> RunBatch:
        loading.set()
        release.wait(10)
        return runner(Recorder())()

    evicted = Batcher("evicted", slow_load, max_batch=8, max_delay_s=0.0, max_queue=100, turns=turns)
    other = Batcher("other", runner(Recorder()), max_batch=8, max_delay_s=0.0, max_queue=100, turns=turns)
    waiting = evicted.submit([_pixels(1)], None)
    assert loading.wait(5)
    started = time.perf_counter()
    assert other.submit([_pixels(2)], None)[0].result(5)[0] == pytest.approx(8.0)
    with turns.decode():
        pass
    assert time.perf_counter() - started < 1.0  # not the 10 s the load would hold
    assert not waiting[0].done()
    release.set()
    assert waiting[0].result(5)[0] == pytest.approx(4.0)
    evicted.close()
    other.close()


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The batch delay is for requests in progress elsewhere; with nothing else admitted, the
    batch runs at once."""
    batcher = Batcher("m", runner(Recorder()), max_batch=8, max_delay_s=2.0, max_queue=100)
    with batcher.admit(2) as admission:
        started = time.perf_counter()
        futures = batcher.submit([_pixels(1), _pixels(2)], None, admission)
        assert [f.result(5)[0] for f in futures] == pytest.approx([4.0, 8.0])
        assert time.perf_counter() - started < 1.0
    with batcher.admit(1) as first, batcher.admit(1):  # another request is being prepared
        started = time.perf_counter()
        batcher.submit([_pixels(3)], None, first)[0].result(5)
        assert time.perf_counter() - started >= 1.9  # waited the delay for it
    batcher.close()
