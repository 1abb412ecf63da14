"""What the metrics count, checked against what the server is doing at the moment."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.images import encode
from tests.support.inprocess import serving
from tests.support.models import CLIP


def test_queue_depth_counts_images_still_being_decoded(tiny_models: Path) -> None:
    """Four large PNGs decoded one at a time: the depth is 4 before any of them has run."""
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 255, (1800, 1800, 3), dtype=np.uint8), "RGB")
    big = encode(noise, "PNG")  # noise: slow to inflate
    with serving(tiny_models, preprocess_workers=1) as served:
        served.vectors(big, model=CLIP)  # loaded and warm
        ran = served.metric("embedder_batch_size_count", model=CLIP, modality="image")
        seen: list[tuple[float, float]] = []
        pool = ThreadPoolExecutor(1)
        call = pool.submit(served.vectors, big, big, big, big, model=CLIP)
        while not call.done():
            depth = served.metric("embedder_queue_depth", model=CLIP, modality="image")
            seen.append(
                (depth, served.metric("embedder_batch_size_count", model=CLIP, modality="image") - ran)
            )
            time.sleep(0.002)
        assert call.result().shape == (4, 16)
        pool.shutdown()
        assert (4, 0) in seen, seen[:20]  # admitted, decoding, nothing run yet
        assert served.metric("embedder_queue_depth", model=CLIP, modality="image") == 0
        (family,) = [
            f for f in served.server.telemetry.registry.collect() if f.name == "embedder_queue_depth"
        ]
        assert "decoded" in family.documentation and "running" in family.documentation
