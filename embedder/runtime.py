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

    Without an arena each run mallocs and frees its activations, and the next run faults them in
    again; an arena per session would keep each model's high-water mark. One shared arena keeps
    the largest batch's activations once (model weights are not in it, so eviction still frees
    them). Measured: docs/performance.md, design choices.
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
    # one; no memory pattern, which would keep a block per input shape.
    register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # ORT's threads spin while a run waits between parallel operators (its default; when that pays:
    # docs/performance.md) and stop when the run returns, so an idle server burns no core.
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


def run_text(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """One batch through the text graph contract: its int64 [N,L] inputs -> embedding [N,D]."""
    (embedding,) = session.run(["embedding"], feeds)
    return np.asarray(embedding, dtype=np.float32)
