"""How an ONNX Runtime session is configured: written once, used by the server and the export gate,
so the gate proves parity for exactly the session the server runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No arena and no memory pattern: activations are freed after each run instead of being kept at
    # the high-water mark of the largest batch seen, per model. Measured here: the same
    # throughput, and about 120 MB less resident with CLIP and DINOv2 loaded after batch-16 runs.
    # glibc hands some of that memory back between runs, to fault in again (memory.py: opt-in tunables).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # Spinning burns a core while idle; with batching the next run is rarely microseconds away.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
