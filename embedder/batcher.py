"""Dynamic batching for one graph of one model: concurrent requests' items (image tensors, or a
text's token ids) are coalesced into one `session.run` (up to a max batch size, or whatever
arrived within a short delay, plus items still being prepared, up to max_fill_wait_s) and the
rows are handed back to each request's futures in order.

Admission is bounded: a request reserves room for its items *before* they are decoded or
tokenized, and holds it until it is answered, so every item in preparation, waiting or running
counts. When full,
RESOURCE_EXHAUSTED comes at once, before any work, instead of a backlog growing in the
server or the decode pool. Work whose deadline has passed, or whose request was cancelled, is
dropped before inference, so it never costs model time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DeadlineExpired, LimitExceeded, Overloaded, ShuttingDown
from .turns import CpuTurns

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Any]], np.ndarray]  # the batch's items -> one row each
# Called before each batch takes its CPU turn; returns what runs the batch. Loading a model (an
# evicted one) happens there, so a load never holds the cores' turn from decodes and other models.
Runner = Callable[[], RunBatch]
# How long a batch waits for images still being decoded: decoding happens between runs (turns.py),
# so those images are what the next batch is made of (measured: docs/performance.md, design choices).
FILL_WAIT_S = 0.05
BatchObserver = Callable[[str, str, int, float], None]  # model, modality, batch size, seconds


@dataclass(eq=False)
class Admission:
    """A request's room in the queue; `incoming` while its items are still being prepared."""

    items: int
    incoming: bool = True


@dataclass(eq=False)
class Job:
    item: Any  # an image's [3, H, W] float32 tensor, a text's token ids
    future: Future[np.ndarray]
    deadline: float | None  # time.monotonic() value


class Batcher:
    def __init__(
        self,
        name: str,
        runner: Runner,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        turns: CpuTurns | None = None,
        max_fill_wait_s: float = FILL_WAIT_S,
        modality: str = "image",
    ) -> None:
        self.name = name
        self.modality = modality
        self._runner = runner
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._observer = observer or (lambda name, modality, size, seconds: None)
        self._turns = turns or CpuTurns()
        self.max_fill_wait_s = max_fill_wait_s
        self._items, self._limit = f"{modality}s", f"max_queue_{modality}s"  # for messages
        self._incoming = 0  # admitted items not yet submitted: being decoded or tokenized
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._admitted = 0  # items of requests between admission and answer
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}-{modality}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Items admitted and not yet answered (being prepared, queued or running)."""
        return self._admitted

    @contextmanager
    def admit(self, items: int) -> Iterator[Admission]:
        """Hold room for a request's items from before their preparation until it is answered."""
        if items > self.max_queue:  # retrying could never help: a limit, not load
            raise LimitExceeded(
                f"{items} {self._items} exceeds {self._limit}={self.max_queue}: split the request"
            )
        with self._cond:
            if self._closed:
                raise ShuttingDown(f"model {self.name!r} is shutting down")
            if self._admitted + items > self.max_queue:
                raise Overloaded(
                    f"model {self.name!r} is overloaded: {self._admitted} {self._items} in progress, "
                    f"{self._limit}={self.max_queue}; retry later"
                )
            self._admitted += items
            self._incoming += items
        admission = Admission(items)
        try:
            yield admission
        finally:
            with self._cond:
                self._admitted -= items
                if admission.incoming:
                    self._incoming -= items
                    self._cond.notify()

    def submit(
        self, items: list[Any], deadline: float | None, admission: Admission | None = None
    ) -> list[Future[np.ndarray]]:
        """Queue a request's items together (admitted first); one future per item, in order."""
        jobs = [Job(item, Future(), deadline) for item in items]
        with self._cond:
            if self._closed:
                raise ShuttingDown(f"model {self.name!r} is shutting down")
            if admission is not None and admission.incoming:
                admission.incoming = False
                self._incoming -= admission.items
            self._queue.extend(jobs)
            self._cond.notify()
        return [job.future for job in jobs]

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            started = time.monotonic()
            # A lone request (every item admitted is here) gains nothing from waiting for company.
            alone = self._admitted == len(self._queue)
            fill_by = started if alone else started + self.max_delay_s
            # Images still being decoded join the batch too, up to max_fill_wait_s: decoding
            # happens between runs (turns.py), so they are what the next batch is made of.
            cap = started + max(self.max_delay_s, self.max_fill_wait_s)
            while len(self._queue) < self.max_batch and not self._closed:
                now = time.monotonic()
                until = fill_by if now < fill_by else (cap if self._incoming > 0 else now)
                if until <= now:
                    break
                self._cond.wait(until - now)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            live = self._still_wanted(jobs)
            if live:
                self._run(live)

    @staticmethod
    def _still_wanted(jobs: list[Job]) -> list[Job]:
        now = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled by its request
            if job.deadline is not None and job.deadline <= now:
                job.future.set_exception(DeadlineExpired("deadline passed before inference"))
                continue
            live.append(job)
        return live

    def _run(self, jobs: list[Job]) -> None:
        try:
            run_batch = self._runner()
            with self._turns.run():
                started = time.perf_counter()  # the run itself, not the wait for its turn
                out = run_batch([job.item for job in jobs])
                seconds = time.perf_counter() - started
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear of it
            for job in jobs:
                job.future.set_exception(exc)
            return
        self._observer(self.name, self.modality, len(jobs), seconds)
        for job, row in zip(jobs, out):
            job.future.set_result(row)
