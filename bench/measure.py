"""The measurements: PyTorch pipeline, ORT model-only ceiling, decode cost, int8 speed-up."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from embedder.preprocess import Preprocessor, decode
from embedder.runtime import open_session
from embedder.spec import ModelSpec


def rate(step: Callable[[], int], seconds: float, warmup: int = 1) -> tuple[float, float]:
    """(items per second, seconds per call) of `step`, which returns the items it did."""
    for _ in range(warmup):
        step()
    items = calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls == 0:
        items += step()
        calls += 1
    return items / elapsed, elapsed / calls


def torch_runner(spec: ModelSpec, images: list[bytes], scratch: Path) -> Callable[[int], int]:
    """HF slow processor + PyTorch eager, as the pipeline ran it: `run(count)` embeds the next
    `count` images as one batch and returns `count`."""
    import torch
    from PIL import Image

    from export.parity import load_reference

    loaded = load_reference(spec, scratch)
    cursor = iter(range(10**12))

    def pils(count: int) -> list[Image.Image]:
        return [
            Image.open(io.BytesIO(images[next(cursor) % len(images)])).convert("RGB") for _ in range(count)
        ]

    def run(count: int) -> int:
        with torch.no_grad():
            pixels = loaded.processor(images=pils(count), return_tensors="pt")["pixel_values"]
            loaded.reference(pixels)
        return count

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    return run


def torch_pipeline(spec: ModelSpec, images: list[bytes], seconds: float, scratch: Path) -> dict[str, float]:
    """The PyTorch pipeline one image at a time, and in batches of 8."""
    run = torch_runner(spec, images, scratch)
    single, _ = rate(lambda: run(1), seconds)
    batched, _ = rate(lambda: run(8), seconds)
    return {"one_at_a_time_images_per_s": single, "batch8_images_per_s": batched}


def default_session(onnx_path: Path) -> ort.InferenceSession:
    """The plain export at ORT's default settings: what the ceiling is measured on."""
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def session_rate(
    session: ort.InferenceSession, spec: ModelSpec, batch: int, seconds: float
) -> dict[str, float]:
    """images/s and ms per call of `session.run` on one precomputed batch."""
    height, width = spec.preprocessing.input_size()
    x = np.random.default_rng(batch).standard_normal((batch, 3, height, width)).astype(np.float32)
    images_per_s, per_call = rate(lambda: (session.run(None, {"pixel_values": x}), batch)[1], seconds)
    return {"images_per_s": images_per_s, "ms_per_batch": per_call * 1000}


def ceiling(
    onnx_path: Path, spec: ModelSpec, seconds: float, default_settings: bool = True
) -> dict[str, dict[str, float]]:
    """session.run on precomputed tensors; the plain export at ORT's default settings unless told."""
    if default_settings:
        session = default_session(onnx_path)
    else:
        session = open_session(onnx_path, len(__import__("os").sched_getaffinity(0)))
    return {f"batch{batch}": session_rate(session, spec, batch, seconds) for batch in (1, 8, 32)}


def decode_cost(spec: ModelSpec, images: list[bytes], seconds: float) -> float:
    """Milliseconds to decode and preprocess one 640x480 JPEG on one thread."""
    pre = Preprocessor(spec.preprocessing)
    cursor = iter(range(10**12))
    _, per_call = rate(lambda: (pre(decode(images[next(cursor) % len(images)])), 1)[1], seconds)
    return per_call * 1000
