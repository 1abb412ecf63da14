"""Handing freed heap memory back to the OS (embedder/memory.py), measured on this process's RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from embedder.memory import MALLOC_TUNABLES, OPT_IN, IdleTrimmer, malloc_tuned_environment

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
    print(f"\nRSS with ~190 MB freed in the heap: {before_kb // 1024} MB; after the trim {after_kb // 1024} MB")
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


# A thread allocating and freeing 16 x 4 MB of activations per "run", touching every page, as an
# ONNX Runtime run does with its arena off. Prints the page faults of each run after the first.
RUNS = """
import resource, threading
import numpy as np
def work(out):
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(1 << 20, dtype=np.float32) for _ in range(16)]
        del blocks
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
out = []
thread = threading.Thread(target=work, args=(out,))
thread.start()
thread.join()
print(*out[1:])
"""


def test_with_the_tunables_runs_reuse_their_memory_instead_of_faulting_it_in_again() -> None:
    environ = malloc_tuned_environment({**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, OPT_IN: "1"})
    assert environ is not None
    out = subprocess.run([sys.executable, "-c", RUNS], env=environ, check=True, capture_output=True, text=True)
    faults = [int(f) for f in out.stdout.split()]
    print(f"\npage faults per run after the first, with {environ['GLIBC_TUNABLES']}: {faults}")
    assert max(faults) < 64  # 16 x 4 MB touched anew would be 16 384 faults


def test_tunables_are_opt_in_added_once_and_never_override_the_operators() -> None:
    ours = ":".join(f"{name}={value}" for name, value in MALLOC_TUNABLES)
    assert malloc_tuned_environment({"PATH": "/bin"}) is None  # off unless asked for
    assert malloc_tuned_environment({OPT_IN: "0"}) is None
    assert malloc_tuned_environment({OPT_IN: "1"}) == {OPT_IN: "1", "GLIBC_TUNABLES": ours}
    other = {OPT_IN: "1", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    assert malloc_tuned_environment(other) == {OPT_IN: "1", "GLIBC_TUNABLES": f"glibc.cpu.hwcaps=-AVX512F:{ours}"}
    assert malloc_tuned_environment({OPT_IN: "1", "GLIBC_TUNABLES": ours}) is None  # after the restart
    assert malloc_tuned_environment({OPT_IN: "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None


def test_embedder_serve_asked_for_the_tunables_restarts_with_them_under_its_own_pid(tmp_path: Path) -> None:
    environ = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, OPT_IN: "1"}
    command = [sys.executable, "-m", "embedder", "serve", "--address", "127.0.0.1:0", "--models-dir", str(tmp_path)]
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            if any(v.startswith(b"GLIBC_TUNABLES=") for v in seen):
                break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        tunables = [v for v in seen if v.startswith(b"GLIBC_TUNABLES=")]
        # glibc cuts the variable in place once it has read it: the first of ours is what shows.
        name, value = MALLOC_TUNABLES[0]
        assert len(tunables) == 1 and tunables[0].startswith(f"GLIBC_TUNABLES={name}={value}".encode())
        assert Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1:4] == [b"-m", b"embedder", b"serve"]
    finally:
        process.terminate()
        process.wait(timeout=30)
