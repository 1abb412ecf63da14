"""Images generated in code (seeded, nothing binary committed): pictures with real content, photos
like a camera's, and PNGs assembled chunk by chunk so a header may claim anything."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def picture(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth gradients plus noise: real content, so a wrong frame or crop changes the vector."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            x * 255 // max(width - 1, 1),
            y * 255 // max(height - 1, 1),
            (x + y) * 127 // max(width + height - 2, 1),
        ],
        -1,
    )
    shift = (seed * 23) % 64 - 32  # each seed its own tint, never saturated
    pixels = np.clip(base + rng.integers(-40, 40, base.shape) + shift, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour field with an edge and grain: costs a decoder what a camera frame does
    (the benchmark's images; `picture`'s per-pixel noise would make JPEGs far larger)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16
    )
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
    stripe = max(1, height // 10)
    pixels[height // 2 : height // 2 + stripe, :, :] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


def photo_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=quality)


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)


def png(width: int, height: int, idat: bytes, *extra: bytes, depth: int = 8, color: int = 2) -> bytes:
    """A PNG assembled chunk by chunk, so the header may claim anything (valid CRCs throughout)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
