"""How an ONNX Runtime session is configured: written once, used by the server and the export gate,
so the gate proves parity for exactly the session the server runs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def register_shared_arena() -> None:
    """Once per process: the CPU arena every session of this process allocates its activations from.

    Without an arena, each run mallocs and frees its activations, and glibc hands part of that
    memory back to the kernel between runs (or fragments it), so the next run faults it in again.
    How badly depends on what the heap went through: after the bench's mixed loads (both models at
    concurrency 1/4/16, 2 x 8 images, 12 MP photos), 2942 (CLIP) and 6033 (DINOv2) page faults per
    image, and the service at 16 callers fell to 0.835 and 0.840 of the ceiling. One arena per
    session instead keeps each model's high-water mark (about 120 MB more with both loaded).

    One arena shared by all sessions keeps the largest working set once. After the same loads,
    side by side: 27-51 faults per image, the service at 0.911-0.921 (CLIP) and 0.917-0.940
    (DINOv2) of the ceiling in two runs; resident memory 746 and 728 MB right after the 12 MP
    photos against 942 MB, and 649-666 MB after the loads against 620-665 MB. glibc malloc
    tunables that keep heaps untrimmed (an opt-in of an earlier version) gained +0.2% and +0.7%
    on top of it, for 80 MB more. The arena extends by what is asked: by powers of two it kept
    120 MB more in one comparison. Model weights are not in it, so evicting a model still frees
    them; what it keeps at rest is the largest batch's activations, about 65 MB for CLIP B/32 and
    DINOv2-small at batch 8.
    """
    global _shared_arena_registered
    with _shared_arena_lock:
        if _shared_arena_registered:
            return
        config = ort.OrtArenaCfg(
            {
                "arena_extend_strategy": 1,
                "max_mem": 0,
                "initial_chunk_size_bytes": -1,
                "max_dead_bytes_per_chunk": -1,
                "initial_growth_chunk_size_bytes": -1,
            }
        )
        cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(cpu, config)
        _shared_arena_registered = True


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Activations come from the process's shared arena (register_shared_arena), not a per-session
    # one; no memory pattern, which measured no faster and would keep a block per input shape.
    register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # ORT's threads spin while a run waits between parallel operators (its default), and stop when
    # the run returns (session.force_spinning_stop), so an idle server burns no core. Against no
    # spinning, side by side, six alternating rounds each: +1.7% images/s at 16 callers for CLIP
    # and for DINOv2, ahead in every round; under a load on both models at once, +3.6% in all
    # (ahead in six of six) and +0.3% in a run of four; p50 of a single call 3-5 ms lower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")  # sequential: no inter-op pool
    options.log_severity_level = 3
    return options


def open_session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
    )


def run(session: ort.InferenceSession, pixel_values: np.ndarray) -> np.ndarray:
    """One batch through the graph contract: pixel_values [N,3,H,W] -> embedding [N,D]."""
    (embedding,) = session.run(["embedding"], {"pixel_values": pixel_values})
    return np.asarray(embedding, dtype=np.float32)
