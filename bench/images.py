"""Benchmark images: 640x480 JPEGs and a few phone-photo-sized ones, generated (seeded)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A smooth colour field with edges and grain, JPEG-encoded like a camera frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16
    )
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
    stripe = max(1, height // 10)
    pixels[height // 2 : height // 2 + stripe, :, :] = rng.integers(0, 256, 3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def bench_images(count: int = 64, large: int = 4) -> tuple[list[bytes], list[bytes]]:
    """`count` 640x480 frames (keyframe-sized) and `large` 4032x3024 photos, all distinct."""
    frames = [photo_jpeg(640, 480, seed) for seed in range(count)]
    photos = [photo_jpeg(4032, 3024, 10_000 + seed) for seed in range(large)]
    return frames, photos
