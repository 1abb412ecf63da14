"""Handing freed heap memory back to the OS (embedder/memory.py), measured on this process's RSS."""

from __future__ import annotations

import subprocess
import sys
import time

from embedder.memory import IdleTrimmer

# ~190 MB in 64 KiB blocks (below glibc's mmap threshold, so they live in the heap), all freed but
# the last, which pins the heap's top: glibc's own top trimming cannot return the freed space.
FREED_HEAP = """
import sys
from pathlib import Path
from embedder.memory import release_free_memory
def rss():
    return int([l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS")][0].split()[1])
blocks = [bytearray(64 << 10) for _ in range(3000)]
pin = bytearray(64 << 10)
del blocks
before = rss()
assert release_free_memory()
print(before, rss())
"""


def test_a_trim_returns_freed_heap_pages_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", FREED_HEAP], check=True, capture_output=True, text=True)
    before_kb, after_kb = map(int, out.stdout.split())
    print(
        f"\nRSS with ~190 MB freed in the heap: {before_kb // 1024} MB; after the trim {after_kb // 1024} MB"
    )
    assert before_kb - after_kb > 100 * 1024


def test_the_trimmer_waits_for_the_end_of_a_burst_and_trims_once() -> None:
    trimmer = IdleTrimmer(interval_s=0.05, quiet_s=0.3)
    try:
        time.sleep(0.2)
        assert trimmer.trims == 0  # nothing ran: nothing to give back
        for _ in range(12):  # a steady load: a batch every 50 ms for 0.6 s
            trimmer.touch()
            time.sleep(0.05)
        assert trimmer.trims == 0
        deadline = time.monotonic() + 5
        while trimmer.trims == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert trimmer.trims == 1
    finally:
        trimmer.close()
