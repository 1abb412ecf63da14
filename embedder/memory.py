"""Handing freed heap memory back to the OS (glibc's `malloc_trim`), after loads and after bursts.

Loading a model frees a transient copy of its graph, and decoding frees its images; glibc keeps
freed blocks resident for reuse. Measured on a server with CLIP B/32 and DINOv2-small (then with
ONNX Runtime's activations malloc'd per run; they now live in a shared arena, runtime.py), four
fresh starts: resident memory after the preload was 542-674 MB, and 521 MB after one
`malloc_trim(0)` every time; after loads of 16 callers on both models 677-793 MB, and 538-559 MB
after a trim.

A trim returns pages, so the next run faults its activations in again: it is done once a burst
is over (no batch for `quiet_s`), never between the batches of a steady load. Elsewhere than
glibc (musl, macOS) it does nothing.

Between the runs of a steady load glibc itself hands memory back: freed blocks above its dynamic
mmap threshold are unmapped, the top of a heap is trimmed past its trim threshold, and a
thread's heap that empties is unmapped. Each run then faults its activations in again. Measured
in the server (CLIP B/32, 16 callers, fresh servers alternating): 816-1345 page faults per image
with glibc's defaults, 2-95 with `MALLOC_TUNABLES` below; kernel CPU 2.6-4.7 -> 0.8-0.9 ms per
image; images/s higher in 11 of 13 pairs (median +3.2%). But every thread's heap then keeps what
it held: after the bench's mixed loads (both models, 2 x 8 images, 12 MP photos) the peak was
1054 MB against 736 MB, over the memory budget. So the tunables are opt-in
(EMBEDDER_MALLOC_TUNABLES=1), for hosts with memory to spare. glibc reads them only at process
start, and `mallopt` once Python runs did not remove the faults (983-1071 per image), so
`embedder serve` then restarts itself once with them in `GLIBC_TUNABLES` (`restart_with_malloc_tunables`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping

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
                    log.debug("returned free heap memory to the OS in %.1f ms", (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# Blocks up to 32 MB come from the heap and stay there between runs; heaps are neither trimmed
# nor unmapped when they empty (a 64 MB pad). The idle trim still returns the memory at rest.
MALLOC_TUNABLES = (
    ("glibc.malloc.mmap_threshold", 32 << 20),
    ("glibc.malloc.trim_threshold", 1 << 30),
    ("glibc.malloc.top_pad", 64 << 20),
)
OPT_IN = "EMBEDDER_MALLOC_TUNABLES"  # "1": restart with MALLOC_TUNABLES


def malloc_tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart the server in, or None when there is nothing to do: not asked
    for (EMBEDDER_MALLOC_TUNABLES=1), not glibc, or malloc tunables already set (by this restart
    or by the operator, whose settings are kept)."""
    current = environ.get("GLIBC_TUNABLES", "")
    if _TRIM is None or environ.get(OPT_IN) != "1" or "glibc.malloc." in current:
        return None
    ours = ":".join(f"{name}={value}" for name, value in MALLOC_TUNABLES)
    return {**environ, "GLIBC_TUNABLES": f"{current}:{ours}" if current else ours}


def restart_with_malloc_tunables() -> None:
    """Replace this process (same pid, same command line) by one with `MALLOC_TUNABLES` set;
    returns only when there is nothing to do."""
    environ = malloc_tuned_environment(os.environ)
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, environ)
