"""The images a static int8 graph is calibrated on, and the out-of-distribution images it is checked
on afterwards. Both are synthesised in code from seeds of their own, so neither shares an image
with the parity gate's set (seed 0) or the golden set drawn from it: the gate's cosine is measured
on images the calibration never saw.

- `calibration_images()`: photo-like JPEGs at the sizes and aspect ratios cameras and video
  keyframes have, the content the pipeline embeds.
- `unseen_images()`: kinds the calibration set has none of, where fixed activation ranges clip
  if anything does: flat colour, per-pixel noise, line art, very dark and very bright photos.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .images import ParityImage, encoded, photo_jpegs

CALIBRATION_SEED = 7001  # not 0 (the gate's set)
UNSEEN_SEED = 7002
_SIZES = (
    (640, 480),
    (480, 640),
    (1280, 720),
    (720, 1280),
    (500, 333),
    (1024, 1024),
    (320, 240),
    (1920, 1080),
)
CALIBRATION_COUNT = 32


def calibration_images(count: int = CALIBRATION_COUNT) -> list[ParityImage]:
    sizes = [_SIZES[i % len(_SIZES)] for i in range(count)]
    return photo_jpegs(CALIBRATION_SEED, "calibration", sizes)


def _flat(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (640, 480), colour)


def _noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB")


def _line_art(rng: np.random.Generator) -> Image.Image:
    """Black 1-3 px strokes on white: outlines, no fill, no gradient."""
    image = Image.new("RGB", (640, 480), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(12, 30))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, (640, 480, 640, 480)))
        width = int(rng.integers(1, 4))
        shape = int(rng.integers(0, 3))
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if shape == 0:
            draw.line((x0, y0, x1, y1), fill=(0, 0, 0), width=width)
        elif shape == 1:
            draw.rectangle(box, outline=(0, 0, 0), width=width)
        else:
            draw.ellipse(box, outline=(0, 0, 0), width=width)
    return image


def _exposed(photo: ParityImage, dark: bool) -> Image.Image:
    """The photo squeezed into the bottom (dark) or top (bright) 8% of the range."""
    with Image.open(io.BytesIO(photo.data)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"), dtype=np.float32)
    squeezed = pixels * 0.08 if dark else 255.0 - (255.0 - pixels) * 0.08
    return Image.fromarray(np.rint(squeezed).astype(np.uint8), "RGB")


def unseen_images() -> list[ParityImage]:
    """Two of each out-of-distribution kind, as PNG (no JPEG blur to soften them)."""
    rng = np.random.default_rng(UNSEEN_SEED)
    photos = photo_jpegs(UNSEEN_SEED, "exposure", [(640, 480), (480, 640)])
    made = {
        "flat_black": _flat((0, 0, 0)),
        "flat_white": _flat((255, 255, 255)),
        "flat_grey": _flat((128, 128, 128)),
        "flat_red": _flat((230, 20, 20)),
        "noise_0": _noise(rng),
        "noise_1": _noise(rng),
        "line_art_0": _line_art(rng),
        "line_art_1": _line_art(rng),
        "dark_0": _exposed(photos[0], dark=True),
        "dark_1": _exposed(photos[1], dark=True),
        "bright_0": _exposed(photos[0], dark=False),
        "bright_1": _exposed(photos[1], dark=False),
    }
    return [encoded(f"unseen_{name}.png", image) for name, image in made.items()]
