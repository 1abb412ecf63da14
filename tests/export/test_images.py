"""Tests for the seeded parity image set (export/images.py)."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from export.images import ParityImage, parity_images, write_parity_images

REQUIRED_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"}
REQUIRED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
# The (mode, format) pairs the set promises to cover; each one round-trips its mode in Pillow.
REQUIRED_PAIRS = {
    ("RGB", "JPEG"),
    ("RGB", "PNG"),
    ("RGB", "WEBP"),
    ("RGB", "BMP"),
    ("RGB", "TIFF"),
    ("L", "PNG"),
    ("L", "JPEG"),
    ("LA", "PNG"),
    ("LA", "TIFF"),
    ("P", "PNG"),
    ("P", "GIF"),
    ("P", "BMP"),
    ("RGBA", "PNG"),
    ("RGBA", "WEBP"),
    ("RGBA", "TIFF"),
    ("CMYK", "JPEG"),
    ("CMYK", "TIFF"),
    ("I;16", "PNG"),
    ("I;16", "TIFF"),
    ("1", "PNG"),
    ("1", "BMP"),
    ("1", "TIFF"),
}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


@pytest.fixture(scope="module")
def images() -> list[ParityImage]:
    return parity_images()


@pytest.fixture(scope="module")
def by_name(images: list[ParityImage]) -> dict[str, ParityImage]:
    return {image.name: image for image in images}


def _open(image: ParityImage) -> Image.Image:
    return Image.open(io.BytesIO(image.data))


def test_same_seed_gives_byte_identical_set(images: list[ParityImage]) -> None:
    again = parity_images()
    assert [i.name for i in again] == [i.name for i in images]
    for first, second in zip(images, again):
        assert first == second, first.name  # dataclass equality compares the bytes too


def test_other_seed_changes_content(images: list[ParityImage]) -> None:
    other = {i.name: i for i in parity_images(1, include_huge=False)}
    changed = [i.name for i in images if i.name in other and other[i.name].data != i.data]
    assert len(changed) == len(other)


def test_without_huge_is_the_same_subset(images: list[ParityImage]) -> None:
    small = parity_images(include_huge=False)
    full = {i.name: i for i in images}
    assert all(full[i.name] == i for i in small)
    dropped = set(full) - {i.name for i in small}
    assert dropped and all(max(full[name].size) >= 4000 for name in dropped)
    assert all(max(i.size) < 4000 for i in small)


def test_negative_seed_rejected() -> None:
    with pytest.raises(ValueError):
        parity_images(-1, include_huge=False)


def test_parity_image_is_frozen(images: list[ParityImage]) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        images[0].name = "other.png"  # type: ignore[misc]


def test_set_size(images: list[ParityImage]) -> None:
    assert 30 <= len(images) <= 45


def test_names_unique_and_filename_like(images: list[ParityImage]) -> None:
    names = [i.name for i in images]
    assert len(set(names)) == len(names)
    for image in images:
        assert re.fullmatch(r"[a-z0-9_]+\.[a-z]+", image.name), image.name
        assert Path(image.name).suffix == EXTENSIONS[image.format], image.name


# Pillow warns when a "P" image whose transparency is a per-index alpha table is converted to
# RGB (it drops the alpha); that conversion is exactly what the pipeline does, so it is expected.
@pytest.mark.filterwarnings("ignore:Palette images with Transparency expressed in bytes")
def test_every_image_decodes_as_declared(images: list[ParityImage]) -> None:
    for image in images:
        with _open(image) as decoded:
            assert (decoded.mode, decoded.format, decoded.size) == (image.mode, image.format, image.size), (
                image.name
            )
            decoded.load()
            rgb = decoded.convert("RGB")
        assert rgb.mode == "RGB" and rgb.size == image.size, image.name


def test_modes_formats_and_pairs_covered(images: list[ParityImage]) -> None:
    assert REQUIRED_MODES <= {i.mode for i in images}
    assert REQUIRED_FORMATS <= {i.format for i in images}
    missing = REQUIRED_PAIRS - {(i.mode, i.format) for i in images}
    assert not missing


def test_size_edge_cases_covered(images: list[ParityImage]) -> None:
    sizes = [i.size for i in images]
    assert any(max(s) <= 16 for s in sizes)
    assert (1, 1) in sizes
    assert any(max(s) >= 4000 for s in sizes)
    assert any(h == 1 for _, h in sizes) and any(w == 1 for w, _ in sizes)
    assert any(h == 3 for _, h in sizes) and any(w == 3 for w, _ in sizes)
    assert any(w >= 10 * h for w, h in sizes) and any(h >= 10 * w for w, h in sizes)
    assert any(w % 2 and h % 2 for w, h in sizes)  # odd on both axes


def test_jpeg_variants_covered(images: list[ParityImage]) -> None:
    samplings, progressive = set(), set()
    for image in images:
        if image.format == "JPEG" and image.mode == "RGB":
            with _open(image) as decoded:
                samplings.add(JpegImagePlugin.get_sampling(decoded))
                progressive.add(bool(decoded.info.get("progressive")))
    assert {0, 2} <= samplings  # 4:4:4 and 4:2:0
    assert progressive == {True, False}


def test_webp_lossy_and_lossless_covered(images: list[ParityImage]) -> None:
    webps = [i for i in images if i.format == "WEBP"]
    assert any(b"VP8L" in i.data for i in webps)  # lossless bitstream
    assert any(b"VP8 " in i.data for i in webps)  # lossy bitstream
    assert any(b"VP8 " in i.data and i.mode == "RGBA" for i in webps)  # lossy + alpha


def test_palette_transparency_carried(images: list[ParityImage]) -> None:
    kinds = set()
    for image in images:
        if image.mode == "P":
            with _open(image) as decoded:
                transparency = decoded.info.get("transparency")
            if transparency is not None:
                kinds.add((image.format, type(transparency)))
    assert {("PNG", int), ("PNG", bytes), ("GIF", int)} <= kinds


def test_photos_have_smooth_areas_and_sharp_edges(images: list[ParityImage]) -> None:
    photos = [i for i in images if i.name.startswith("photo_")]
    assert len(photos) >= 6
    for image in photos:
        with _open(image) as decoded:
            rgb = np.asarray(decoded.convert("RGB"), dtype=np.int32)
        step = np.abs(np.diff(rgb, axis=1))  # horizontal neighbour differences per channel
        assert np.median(step.mean(axis=2)) <= 8, image.name  # mostly smooth (grain only)
        assert step.max() >= 100, image.name  # but with hard edges
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        assert len(np.unique(packed)) > 1000, image.name  # a real colour field, not flat fills


def test_alpha_has_clear_opaque_and_partial_pixels(by_name: dict[str, ParityImage]) -> None:
    for name in ("rgba_256x192.png", "gray_alpha_200x150.png"):
        with _open(by_name[name]) as decoded:
            alpha = np.asarray(decoded.getchannel("A"))
        assert alpha.min() == 0 and alpha.max() == 255, name
        assert ((alpha > 0) & (alpha < 255)).mean() > 0.1, name


def test_sixteen_bit_uses_more_than_eight_bits(by_name: dict[str, ParityImage]) -> None:
    for name in ("depth16_256x256.png", "depth16_255x257_lzw.tiff"):
        with _open(by_name[name]) as decoded:
            values = np.asarray(decoded)
        assert values.dtype == np.uint16, name
        assert values.max() > 255 and np.count_nonzero(values < 255) > 0, name
        assert len(np.unique(values)) > 256, name


def test_cmyk_has_real_black_channel(by_name: dict[str, ParityImage]) -> None:
    for name in ("cmyk_300x200.jpg", "cmyk_300x200.tiff"):
        with _open(by_name[name]) as decoded:
            black = np.asarray(decoded.getchannel("K"))
        assert black.std() > 10, name


def test_write_parity_images_round_trips(tmp_path: Path) -> None:
    expected = parity_images(include_huge=False)
    target = tmp_path / "nested" / "set"
    paths = write_parity_images(target, include_huge=False)
    assert [p.name for p in paths] == [i.name for i in expected]
    assert all(p.parent == target for p in paths)
    assert sorted(p.name for p in target.iterdir()) == sorted(i.name for i in expected)
    for path, image in zip(paths, expected):
        assert path.read_bytes() == image.data, image.name
