"""Handing freed heap memory back to the OS (glibc's `malloc_trim`), after loads and after bursts.

Loading a model frees a transient copy of its graph, and decoding frees its images; glibc keeps
freed blocks resident for reuse. A trim returns those pages, which the next decodes fault in
again, so it runs once a burst is over (no batch for `quiet_s`), never between the batches of a
steady load. ORT's arena is not trimmed (glibc sees its free chunks as in use). Without glibc
(musl, macOS) it does nothing. Measured effect: docs/performance.md, design choices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give the free pages inside glibc's heaps back to the OS; False where there is no glibc."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class IdleTrimmer:
    """Trims once after each burst of batches: `touch()` on every batch; a thread checks every
    `interval_s` and trims when batches ran since the last trim and none for `quiet_s`."""

    def __init__(self, interval_s: float = 5.0, quiet_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.quiet_s = quiet_s
        self.trims = 0
        self._last_batch = 0.0
        self._dirty = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-trim", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._last_batch = time.monotonic()
        self._dirty = True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._dirty and time.monotonic() - self._last_batch >= self.quiet_s:
                self._dirty = False
                started = time.perf_counter()
                if release_free_memory():
                    self.trims += 1
                    log.debug(
                        "returned free heap memory to the OS in %.1f ms",
                        (time.perf_counter() - started) * 1000,
                    )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
