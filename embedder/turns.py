"""Decoding and inference take turns on the cores instead of overlapping.

ONNX Runtime runs a batch on all the planned cores, and each of its parallel steps waits for its
slowest thread: a decode beside it takes a core from one thread and the others wait at the next
barrier. Decoding between runs costs only its own time. (Measured: docs/performance.md, design
choices.)

- A decode waits while a run is in progress, or while a run is waiting for its turn.
- A run waits for the decodes already started (milliseconds each), never for queued ones.
- Runs exclude each other and start in the order they asked: two models' batches side by side
  would put twice the intra-op threads on the cores. A request may then wait for another model's
  batch in progress, as it would for its own model's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CpuTurns:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._decoding = 0
        self._running = False
        # Runs get their turn in the order they asked for it; the tickets handed out and not yet
        # started are the runs waiting.
        self._tickets = 0
        self._next_ticket = 0

    @contextmanager
    def decode(self) -> Iterator[None]:
        with self._cond:
            while self._running or self._tickets != self._next_ticket:
                self._cond.wait()
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    @contextmanager
    def run(self) -> Iterator[None]:
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            while self._decoding or self._running or ticket != self._next_ticket:
                self._cond.wait()
            self._next_ticket = ticket + 1
            self._running = True
        try:
            yield
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
