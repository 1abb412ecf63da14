"""Torch-free preprocessing that reproduces the Hugging Face slow image processors bit for bit.

The order is fixed and written down once:
    decode -> RGB -> resize -> center crop -> rescale -> normalize -> CHW float32

How it stays bit-identical to `CLIPImageProcessor` / `BitImageProcessor` (use_fast=False):
- decode and RGB conversion are the pipeline's own `Image.open(...).convert("RGB")`;
- resize is the same Pillow call on the same pixels, with HF's output-size rule;
- the crop is HF's integer arithmetic (zero padding when the image is smaller than the crop);
- rescale and normalize are per-value functions of a uint8 input, so they are tabulated once with
  HF's exact dtypes and operation order (float64 multiply, cast to float32, float32 subtract and
  divide) and applied as a lookup: the same floats, without per-request arithmetic.

One deliberate difference: HF guesses the channel axis of an image 1 or 3 pixels high as the first
axis and so mangles it. Decoded images are always height x width x channels here; the export gate
checks those images against HF told `input_data_format="channels_last"`.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidImage
from .spec import RESAMPLE_CODES, Preprocessing

log = logging.getLogger(__name__)

# Formats Pillow may try; anything else (PDF, SVG, ICO, PSD, ...) is refused before any parsing.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 40_000_000  # width x height as declared in the header
    max_resized_pixels: int = 16_000_000  # the shortest-edge resize of an extreme aspect ratio
    formats: tuple[str, ...] = ALLOWED_FORMATS


def decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Encoded bytes -> RGB image, as `Image.open(path).convert("RGB")` did in the pipeline.

    Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame is used.
    Size is checked from the header before any pixel is decoded; truncated files are errors.
    """
    if not data:
        raise InvalidImage("empty image data", failure="empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes; errors still raise
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
            _check_size(image, limits)
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except UnidentifiedImageError:
        raise InvalidImage(
            f"not a supported image (allowed formats: {', '.join(limits.formats)})", failure="format"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any Exception: see _refusal()
        raise _refusal(exc, f"cannot decode {image_format(data)}") from None


def _refusal(exc: Exception, what: str) -> InvalidImage:
    """What Pillow (or numpy after it) raised on a client's image, as the image's fault.

    Any `Exception` counts, not a hand-kept list of types: a crafted TIFF once raised a TypeError
    from deep inside Pillow. Callers catch `Exception` only, so KeyboardInterrupt and SystemExit
    pass through. The traceback goes to the log at DEBUG: it is about the input, not the server.
    """
    if isinstance(exc, InvalidImage):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return InvalidImage(f"decompression bomb refused: {exc}", failure="too_large")
    log.debug("%s", what, exc_info=exc)
    kind = "truncated" if "truncated" in str(exc) else "undecodable"
    return InvalidImage(f"{what}: {type(exc).__name__}: {_clipped(str(exc))}", failure=kind)


def _clipped(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def image_format(data: bytes) -> str:
    """A short label for messages; never used to decide anything."""
    for magic, name in ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return "image"


def _check_size(image: Image.Image, limits: DecodeLimits) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"invalid dimensions {width}x{height}", failure="undecodable")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            # Named as the setting an operator would raise (`max_image_pixels`), not the field.
            f"{width}x{height} = {width * height} pixels exceeds max_image_pixels={limits.max_pixels}",
            failure="too_large",
        )


def resize_output_size(width: int, height: int, spec: Preprocessing) -> tuple[int, int]:
    """(width, height) after resize, by HF's `get_resize_output_image_size` rule."""
    rule = spec.resize
    if rule is None:
        return width, height
    if rule.shortest_edge is None:
        assert rule.height is not None and rule.width is not None
        return rule.width, rule.height
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = rule.shortest_edge, int(rule.shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """HF's center crop of an HWC array, zero-padding where the image is smaller than the crop."""
    orig_h, orig_w = pixels.shape[:2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w) + pixels.shape[2:], dtype=pixels.dtype)
    top_pad, left_pad = -(-(new_h - orig_h) // 2), -(-(new_w - orig_w) // 2)  # ceil, as HF
    padded[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def value_table(spec: Preprocessing) -> np.ndarray:
    """float32 [3, 256]: the rescaled and normalised value of every uint8 level, per channel,
    computed with HF's dtypes and order of operations."""
    levels: np.ndarray = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0).T  # [256, 3] "HWC"
    values: np.ndarray = levels
    if spec.rescale_factor is not None:
        values = (values.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    if spec.mean is not None and spec.std is not None:
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float32)
        values = (values - np.array(spec.mean, dtype=values.dtype)) / np.array(spec.std, dtype=values.dtype)
    return np.ascontiguousarray(values.astype(np.float32).T)


class Preprocessor:
    """RGB image -> float32 CHW tensor for one model's preprocessing spec."""

    def __init__(self, spec: Preprocessing, limits: DecodeLimits = DecodeLimits()) -> None:
        self.spec = spec
        self.limits = limits
        self.resample = Image.Resampling(RESAMPLE_CODES[spec.resample])
        self.table = value_table(spec)
        self.height, self.width = spec.input_size()

    def resize(self, image: Image.Image) -> Image.Image:
        size = resize_output_size(image.width, image.height, self.spec)
        if size[0] * size[1] > self.limits.max_resized_pixels:
            raise InvalidImage(
                f"aspect ratio too extreme: {image.width}x{image.height} resizes to {size[0]}x{size[1]}, "
                f"over max_resized_pixels={self.limits.max_resized_pixels}",
                failure="too_large",
            )
        return image.resize(size, resample=self.resample) if self.spec.resize is not None else image

    def pixels(self, image: Image.Image) -> np.ndarray:
        """uint8 HWC after resize and crop: what HF rescales next (the bit-exact checkpoint)."""
        pixels = np.asarray(self.resize(image))
        if self.spec.center_crop is not None:
            pixels = center_crop(pixels, self.spec.center_crop.height, self.spec.center_crop.width)
        return pixels

    def __call__(self, image: Image.Image) -> np.ndarray:
        try:
            pixels = self.pixels(image)
            out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
            for channel in range(3):
                np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        except Exception as exc:  # noqa: BLE001 - any Exception: see _refusal()
            raise _refusal(exc, "cannot preprocess") from None
        return out

    def from_bytes(self, data: bytes) -> np.ndarray:
        return self(decode(data, self.limits))
