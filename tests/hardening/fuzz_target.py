"""The decode path's fuzz invariant, and an atheris (libFuzzer) entry point for it.

Invariant: `decode` + `Preprocessor` either give an RGB image within the pixel limit and a finite
float32 [3, H, W] tensor of the model's input size, or raise `InvalidImage`. Any other exception
(struct.error, IndexError, ZeroDivisionError, a Pillow error nobody translated...) would reach a
client as INTERNAL, so it is a bug.

Run by test_fuzz.py as a bounded subprocess; by hand, for longer:

    python -m tests.hardening.fuzz_target SEED_DIR -atheris_runs=200000 -artifact_prefix=/tmp/

Imports of Pillow and `embedder` happen inside `main`, under `atheris.instrument_imports`, so
libFuzzer gets coverage feedback from Pillow's Python plugins and from the decode path.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedder.preprocess import Preprocessor

# Small limits and a small input keep each run fast; the code paths are the served ones.
FUZZ_MAX_PIXELS = 4_000_000
FUZZ_MAX_RESIZED_PIXELS = 1_000_000
FUZZ_SIDE = 32


def fuzz_preprocessor() -> Preprocessor:
    """A CLIP-style pipeline (shortest-edge bicubic resize, center crop, normalise) at 32 px."""
    from embedder.preprocess import DecodeLimits, Preprocessor
    from embedder.spec import CropSize, Preprocessing, Resize

    spec = Preprocessing(processor_class="CLIPImageProcessor", resize=Resize(shortest_edge=FUZZ_SIDE),
                         resample="bicubic", center_crop=CropSize(height=FUZZ_SIDE, width=FUZZ_SIDE),
                         rescale_factor=1 / 255, mean=(0.48145466, 0.4578275, 0.40821073),
                         std=(0.26862954, 0.26130258, 0.27577711))  # fmt: skip
    return Preprocessor(spec, DecodeLimits(max_pixels=FUZZ_MAX_PIXELS, max_resized_pixels=FUZZ_MAX_RESIZED_PIXELS))


def seed_images() -> dict[str, bytes]:
    """Small valid files of every allowed format and the variants that take other code paths
    (palette, alpha, 16-bit, CMYK, progressive, animated, multi-page, each TIFF compression)."""
    from PIL import Image

    from tests.hardening.corpus import encode, picture

    photo = picture(24, 18, 1)
    frames = [picture(24, 18, seed) for seed in (2, 3)]
    seeds = {
        "baseline.jpg": encode(photo, "JPEG", quality=85),
        "progressive.jpg": encode(photo, "JPEG", progressive=True),
        "cmyk.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "rgb.png": encode(photo, "PNG"),
        "palette.png": encode(photo.convert("P"), "PNG", transparency=3),
        "la_interlaced.png": encode(photo.convert("LA"), "PNG", interlace=1),
        "bilevel.png": encode(photo.convert("1"), "PNG"),
        "grey16.png": encode(Image.new("I;16", (24, 18), 4000), "PNG"),
        "animated.gif": encode(frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")]),
        "rgb.bmp": encode(photo, "BMP"),
        "palette.bmp": encode(photo.convert("P"), "BMP"),
        "lossy.webp": encode(photo, "WEBP", quality=70),
        "lossless_alpha.webp": encode(photo.convert("RGBA"), "WEBP", lossless=True),
        "animated.webp": encode(frames[0], "WEBP", save_all=True, append_images=[frames[1]]),
        "pages.tiff": encode(frames[0], "TIFF", save_all=True, append_images=[frames[1]]),
        "g4.tiff": encode(photo.convert("1"), "TIFF", compression="group4"),
    }
    for compression in ("tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        seeds[f"{compression}.tiff"] = encode(photo, "TIFF", compression=compression)
    return seeds


def check_decode(data: bytes, preprocessor: Preprocessor) -> bool:
    """True if decoded and preprocessed, False if refused with InvalidImage; raises on a bug."""
    import numpy as np

    from embedder.errors import InvalidImage
    from embedder.preprocess import decode

    try:
        image = decode(data, preprocessor.limits)
        tensor = preprocessor(image)
    except InvalidImage as exc:
        assert exc.reason, "an InvalidImage must say why"
        return False
    assert image.mode == "RGB", image.mode
    assert 0 < image.width * image.height <= preprocessor.limits.max_pixels, image.size
    assert tensor.shape == (3, *preprocessor.spec.input_size()), tensor.shape
    assert tensor.dtype == np.float32 and bool(np.isfinite(tensor).all())
    return True


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["PIL", "embedder"]):
        # The allowed formats' plugins too: Pillow would otherwise import them lazily, uninstrumented.
        for plugin in ("Bmp", "Gif", "Jpeg", "Png", "Tiff", "WebP"):
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
        importlib.import_module("embedder.preprocess")
    preprocessor = fuzz_preprocessor()

    def one_input(data: bytes) -> None:
        check_decode(data, preprocessor)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
