"""Deterministic, seeded "parity image set" for preprocessing parity tests.

Every image is synthesised in code with numpy + Pillow from a fixed seed and
encoded in memory, so nothing is downloaded and no binary files need to be
committed.  The set is meant to prove that the torch-free preprocessing equals
the Hugging Face slow image processor bit for bit, so it deliberately covers:

* photo-like content: smooth low-frequency colour fields, hard-edged shapes,
  1-px lines, a 1-px checkerboard patch and fine grain, so bicubic resampling
  sees both smooth areas and sharp edges;
* tiny images, images exactly 1 or 3 px high/wide, huge images and extreme
  aspect ratios;
* the PIL modes ``1``, ``L``, ``LA``, ``P`` (with ``transparency``), ``RGB``,
  ``RGBA``, ``CMYK`` and ``I;16``;
* the formats JPEG (baseline/progressive, 4:2:0/4:2:2/4:4:4), PNG, WebP
  (lossy/lossless), GIF, BMP and TIFF.

Each image draws from its own random stream derived from ``(seed, name)``, so
adding or removing an image never changes the others.  Encoding is checked on
the spot: the file is re-opened and must decode to the source mode, the format
and the size.  Mode/format pairs that Pillow does not round-trip (e.g. WebP
decodes ``L``/``P``/``CMYK`` as ``RGB`` and ``LA`` as ``RGBA``, a GIF written
from ``L`` decodes as ``P``, an ``RGBA`` BMP decodes as ``RGB``) are not used,
so ``ParityImage.mode`` is always what Pillow actually decodes.

Byte-identical output is guaranteed for a given seed *and* a given build of
Pillow and its codecs (libjpeg-turbo, libpng/zlib, libwebp, libtiff); a
different codec build may legitimately produce different bytes.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ParityImage", "encoded", "parity_images", "photo_jpegs", "write_parity_images"]

_GRAIN_TILE = 128  # grain is generated on a tile this big and repeated


@dataclass(frozen=True)
class ParityImage:
    """One encoded image of the parity set."""

    name: str  # unique, filename-like, e.g. "photo_640x480.jpg"
    data: bytes  # the encoded file
    mode: str  # PIL mode of the decoded file, e.g. "RGB", "CMYK", "I;16"
    format: str  # PIL format name: "JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"
    size: tuple[int, int]  # (width, height) as decoded


# --------------------------------------------------------------------------
# Pixel synthesis
# --------------------------------------------------------------------------


def _rng(seed: int, name: str) -> np.random.Generator:
    """Independent random stream for one image, keyed by seed and name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _smooth_field(rng: np.random.Generator, width: int, height: int, mode: str) -> Image.Image:
    """Low-frequency field: random noise on a 3-8 cell grid, bicubic-upsampled.

    ``mode`` "F" gives float32 values of roughly [0, 1] (bicubic overshoot is
    kept); 8-bit modes ("L", "RGB", "CMYK") use the full 0-255 range.
    """
    grid = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
    if mode == "F":
        low = rng.random((grid[1], grid[0]), dtype=np.float32)
    else:
        low = rng.integers(0, 256, (grid[1], grid[0], len(mode)), dtype=np.uint8)
    field = Image.frombytes(mode, grid, low.tobytes())
    return field.resize((width, height), Image.Resampling.BICUBIC)


def _draw_shapes(
    rng: np.random.Generator, image: Image.Image, fills: Sequence[int | tuple[int, ...]]
) -> Image.Image:
    """Draw, in place, one hard-edged shape per fill, cycling rectangle, ellipse,
    triangle and 1-3 px line across the frame; shapes are at most half the frame
    on each axis and may be cut by its border."""
    width, height = image.size
    draw = ImageDraw.Draw(image)
    for index, fill in enumerate(fills):
        x0, x1 = _span(rng, width)
        y0, y1 = _span(rng, height)
        kind = index % 4
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 2:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
        else:
            ends = rng.integers(0, (width, height, width, height))
            draw.line(tuple(int(v) for v in ends), fill=fill, width=int(rng.integers(1, 4)))
    return image


def _span(rng: np.random.Generator, length: int) -> tuple[int, int]:
    """Random interval of 1 to length/2 px centred anywhere in [-length/8, 9*length/8]."""
    extent = int(rng.integers(1, max(2, length // 2 + 1)))
    centre = int(rng.integers(-(length // 8), length + length // 8 + 1))
    return centre - extent // 2, centre - extent // 2 + extent


def _shape_labels(rng: np.random.Generator, width: int, height: int, count: int) -> np.ndarray:
    """Label map: 0 = background, k = k-th shape (later shapes on top)."""
    labels = Image.new("L", (width, height), 0)
    return np.asarray(_draw_shapes(rng, labels, range(1, count + 1)))


def _add_checker(rng: np.random.Generator, pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Paint, in place, a 1-px checkerboard patch of colours ``a``/``b`` (maximal frequency)."""
    height, width = pixels.shape[:2]
    if width < 8 or height < 8:
        return
    ph, pw = height // 8, width // 8
    y, x = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
    checker = (np.indices((ph, pw)).sum(axis=0) % 2).astype(bool)
    pixels[y : y + ph, x : x + pw] = np.where(checker[..., None], a, b)


def _add_grain(rng: np.random.Generator, pixels: np.ndarray, amplitude: int) -> np.ndarray:
    """Add uniform integer grain in [-amplitude, amplitude] (tiled, so huge images stay cheap)."""
    height, width, channels = pixels.shape
    tile_shape = (min(height, _GRAIN_TILE), min(width, _GRAIN_TILE), channels)
    tile = rng.integers(-amplitude, amplitude + 1, tile_shape, dtype=np.int16)
    reps = (-(-height // tile_shape[0]), -(-width // tile_shape[1]), 1)
    grain = np.tile(tile, reps)[:height, :width]
    return np.clip(pixels.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def _photo(
    rng: np.random.Generator, width: int, height: int, mode: str = "RGB", grain: int = 6
) -> Image.Image:
    """Photo-like 8-bit image ("L", "RGB" or "CMYK"): smooth colour field, hard-edged
    shapes and thin lines, a 1-px checkerboard patch, and fine grain."""
    bands = len(mode)
    image = _smooth_field(rng, width, height, mode)
    colours = rng.integers(0, 256, (int(rng.integers(5, 10)), bands), dtype=np.uint8)
    fills = [int(c[0]) if bands == 1 else tuple(int(v) for v in c) for c in colours]
    pixels = np.array(_draw_shapes(rng, image, fills)).reshape(height, width, bands)
    _add_checker(rng, pixels, colours[0], colours[1])
    pixels = _add_grain(rng, pixels, grain)
    return Image.frombytes(mode, (width, height), pixels.tobytes())


def _alpha(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Alpha band: smooth partial transparency plus fully clear and fully opaque shapes."""
    return _draw_shapes(rng, _smooth_field(rng, width, height, "L"), [0, 255, 0, 255])


def _with_alpha(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """``image`` ("L" or "RGB") plus a generated alpha band ("LA" or "RGBA")."""
    bands = (*image.split(), _alpha(rng, *image.size))
    return Image.merge(image.mode + "A", bands)


def _palette(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Palette ("P") image: a photo quantised to 254 colours plus hard-edged shapes of
    index 255 (magenta), the index the PNG/GIF encoders mark as transparent."""
    quantised = _photo(rng, width, height).quantize(colors=254, method=Image.Quantize.MEDIANCUT)
    indices = np.asarray(quantised).copy()
    blob = _shape_labels(rng, width, height, count=3) > 0
    indices[blob] = 255
    palette = (quantised.getpalette() or [])[: 254 * 3]
    palette += [0] * (255 * 3 - len(palette)) + [255, 0, 255]  # index 255: magenta
    image = Image.frombytes("P", (width, height), indices.tobytes())
    image.putpalette(palette)
    return image


def _sixteen_bit(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """16-bit greyscale ("I;16") image: a smooth ramp below ~700 (so an 8-bit
    convert both keeps and clips values), shapes at 0, 65535 and mid-range, and grain."""
    field = np.asarray(_smooth_field(rng, width, height, "F")) * float(rng.integers(300, 700))
    labels = _shape_labels(rng, width, height, count=6)
    levels = np.array([0, 0, 65535, 300, 32768, 128, 65535], dtype=np.float32)  # by label
    values = np.where(labels > 0, levels[labels], field)
    values += rng.integers(-3, 4, values.shape)
    pixels = np.clip(np.rint(values), 0, 65535).astype("<u2")
    return Image.frombytes("I;16", (width, height), pixels.tobytes())


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

_FORMATS = {
    ".jpg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tiff": "TIFF",
}

# (name, (width, height), save options); the format follows from the extension.
_Spec = tuple[str, tuple[int, int], dict[str, Any]]
_Maker = Callable[[np.random.Generator, int, int], Image.Image]


def _encode(name: str, image: Image.Image, **save: Any) -> ParityImage:
    """Encode ``image`` in the format named by the extension; verify the round trip.

    The file is re-opened and must report the source mode, the format and the
    size; a mismatch raises, so a silent mode change in another Pillow build
    is caught instead of being recorded as coverage.
    """
    fmt = _FORMATS[Path(name).suffix]
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        got = (decoded.mode, decoded.format, decoded.size)
    if got != (image.mode, fmt, image.size):
        raise RuntimeError(f"{name}: decoded as {got}, expected {(image.mode, fmt, image.size)}")
    return ParityImage(name=name, data=data, mode=image.mode, format=fmt, size=image.size)


def _build(seed: int, make: _Maker, specs: list[_Spec]) -> list[ParityImage]:
    """Generate (from the per-name random stream) and encode every spec."""
    return [
        _encode(name, make(_rng(seed, name), width, height), **save) for name, (width, height), save in specs
    ]


# --------------------------------------------------------------------------
# One generator per kind of content
# --------------------------------------------------------------------------

_JPEG_420: dict[str, Any] = {"quality": 90, "subsampling": 2}  # read-only, unpacked per use


def _photo_images(seed: int) -> list[ParityImage]:
    """RGB photo-like images at common and odd sizes in every RGB-capable format."""
    return _build(
        seed,
        _photo,
        [
            ("photo_640x480.jpg", (640, 480), _JPEG_420),
            (
                "photo_480x640_progressive.jpg",
                (480, 640),
                {"quality": 85, "subsampling": 2, "progressive": True},
            ),
            ("photo_1024x768_444.jpg", (1024, 768), {"quality": 95, "subsampling": 0}),
            (
                "photo_500x333_422_progressive.jpg",
                (500, 333),
                {"quality": 90, "subsampling": 1, "progressive": True},
            ),
            ("photo_224x224.png", (224, 224), {}),
            ("photo_225x223.png", (225, 223), {}),
            ("photo_500x333_lossy.webp", (500, 333), {"quality": 80, "method": 4}),
            ("photo_225x223_lossless.webp", (225, 223), {"lossless": True, "quality": 50, "method": 2}),
            ("photo_640x480.bmp", (640, 480), {}),
            ("photo_333x500_lzw.tiff", (333, 500), {"compression": "tiff_lzw"}),
        ],
    )


def _tiny_images(seed: int) -> list[ParityImage]:
    """Images of at most 16 px per side (smaller than the model input on both axes)."""
    return _build(
        seed,
        _photo,
        [
            ("tiny_1x1.png", (1, 1), {}),
            ("tiny_2x2.jpg", (2, 2), _JPEG_420),
            ("tiny_7x5.png", (7, 5), {}),
            ("tiny_16x16.jpg", (16, 16), {"quality": 90, "subsampling": 0}),
        ],
    )


def _thin_images(seed: int) -> list[ParityImage]:
    """Images exactly 1 or 3 px high or wide (documented resize edge cases)."""
    return _build(
        seed,
        _photo,
        [
            ("strip_50x1.png", (50, 1), {}),
            ("strip_40x3.jpg", (40, 3), _JPEG_420),
            ("strip_1x50.png", (1, 50), {}),
            ("strip_3x40.jpg", (3, 40), _JPEG_420),
        ],
    )


def _aspect_images(seed: int) -> list[ParityImage]:
    """Extreme aspect ratios (100:1 both ways, and 10:1)."""
    return _build(
        seed,
        _photo,
        [
            ("wide_2000x20.jpg", (2000, 20), _JPEG_420),
            ("tall_20x2000.png", (20, 2000), {}),
            ("wide_1000x100_lossy.webp", (1000, 100), {"quality": 75, "method": 4}),
        ],
    )


def _huge_images(seed: int) -> list[ParityImage]:
    """Images with a side of at least 4000 px."""
    return _build(
        seed,
        _photo,
        [
            ("huge_4000x3000.jpg", (4000, 3000), {"quality": 85, "subsampling": 2}),
            ("huge_4096x64.png", (4096, 64), {"compress_level": 1}),
        ],
    )


def _gray_images(seed: int) -> list[ParityImage]:
    """Greyscale ("L") images."""

    def gray(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return _photo(rng, width, height, "L")

    return _build(
        seed,
        gray,
        [
            ("gray_320x240.png", (320, 240), {}),
            ("gray_320x240.jpg", (320, 240), {"quality": 90}),
        ],
    )


def _gray_alpha_images(seed: int) -> list[ParityImage]:
    """Greyscale + alpha ("LA") images."""

    def gray_alpha(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return _with_alpha(rng, _photo(rng, width, height, "L"))

    return _build(
        seed,
        gray_alpha,
        [
            ("gray_alpha_200x150.png", (200, 150), {}),
            ("gray_alpha_200x150_deflate.tiff", (200, 150), {"compression": "tiff_deflate"}),
        ],
    )


def _palette_images(seed: int) -> list[ParityImage]:
    """Palette ("P") images; PNG/GIF carry ``transparency`` (one index, or a PNG
    per-index alpha table)."""
    alpha_table = bytes([0, 64, 128, 192] + [255] * 252)  # PNG tRNS: per-index alpha
    return _build(
        seed,
        _palette,
        [
            ("palette_200x150_tindex.png", (200, 150), {"transparency": 255}),
            ("palette_200x150_talpha.png", (200, 150), {"transparency": alpha_table}),
            ("palette_200x150.gif", (200, 150), {"transparency": 255, "optimize": False}),
            ("palette_160x120.bmp", (160, 120), {}),
        ],
    )


def _rgba_images(seed: int) -> list[ParityImage]:
    """RGBA images with smooth, fully clear and fully opaque alpha regions."""

    def rgba(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return _with_alpha(rng, _photo(rng, width, height))

    return _build(
        seed,
        rgba,
        [
            ("rgba_256x192.png", (256, 192), {}),
            (
                "rgba_256x192_lossless.webp",
                (256, 192),
                {"lossless": True, "exact": True, "quality": 50, "method": 2},
            ),
            ("rgba_256x192_lossy.webp", (256, 192), {"quality": 80, "method": 4}),
            ("rgba_256x192_deflate.tiff", (256, 192), {"compression": "tiff_deflate"}),
        ],
    )


def _cmyk_images(seed: int) -> list[ParityImage]:
    """CMYK images (random K channel, unlike a naive RGB->CMYK convert where K = 0)."""

    def cmyk(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return _photo(rng, width, height, "CMYK")

    return _build(
        seed,
        cmyk,
        [
            ("cmyk_300x200.jpg", (300, 200), {"quality": 90}),
            ("cmyk_300x200.tiff", (300, 200), {}),
        ],
    )


def _sixteen_bit_images(seed: int) -> list[ParityImage]:
    """16-bit greyscale ("I;16") images."""
    return _build(
        seed,
        _sixteen_bit,
        [
            ("depth16_256x256.png", (256, 256), {}),
            ("depth16_255x257_lzw.tiff", (255, 257), {"compression": "tiff_lzw"}),
        ],
    )


def _bilevel_images(seed: int) -> list[ParityImage]:
    """Bilevel ("1") images: Floyd-Steinberg-dithered photos (very high frequency)."""

    def bilevel(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return _photo(rng, width, height, "L").convert("1")

    return _build(
        seed,
        bilevel,
        [
            ("bilevel_200x100.png", (200, 100), {}),
            ("bilevel_201x99.bmp", (201, 99), {}),
            ("bilevel_200x100_group4.tiff", (200, 100), {"compression": "group4"}),
        ],
    )


_GENERATORS: tuple[Callable[[int], list[ParityImage]], ...] = (
    _photo_images,
    _tiny_images,
    _thin_images,
    _aspect_images,
    _gray_images,
    _gray_alpha_images,
    _palette_images,
    _rgba_images,
    _cmyk_images,
    _sixteen_bit_images,
    _bilevel_images,
)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def parity_images(seed: int = 0, *, include_huge: bool = True) -> list[ParityImage]:
    """Build the parity image set; the same ``seed`` always yields byte-identical files.

    ``seed`` must be a non-negative integer.  ``include_huge=False`` skips the
    images with a side of 4000 px or more (they dominate the generation time).
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    generators = _GENERATORS + ((_huge_images,) if include_huge else ())
    images = [image for generate in generators for image in generate(seed)]
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        raise RuntimeError(f"duplicate image names in parity set: {sorted(names)}")
    return images


def write_parity_images(directory: Path, seed: int = 0, *, include_huge: bool = True) -> list[Path]:
    """Write every image of the set to ``directory`` (created if missing) under its name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in parity_images(seed, include_huge=include_huge):
        path = directory / image.name
        path.write_bytes(image.data)
        paths.append(path)
    return paths


def photo_jpegs(seed: int, prefix: str, sizes: Sequence[tuple[int, int]]) -> list[ParityImage]:
    """Photo-like JPEGs (quality 90, 4:2:0) at `sizes`, named `{prefix}_{i}_{w}x{h}.jpg`, each from its
    own stream of `seed`: more images of the parity set's photo kind, for sets that must not share
    images with it (the int8 calibration set)."""
    specs: list[_Spec] = [(f"{prefix}_{i}_{w}x{h}.jpg", (w, h), _JPEG_420) for i, (w, h) in enumerate(sizes)]
    return _build(seed, _photo, specs)


def encoded(name: str, image: Image.Image, **save: Any) -> ParityImage:
    """`image` encoded in the format its name's extension names, the round trip verified."""
    return _encode(name, image, **save)
