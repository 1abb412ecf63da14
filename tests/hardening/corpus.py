"""A hostile-input corpus for the decode path, generated in code (nothing binary is committed).

Each `Case` is bytes a client might send as `Image.data`, with what the server must answer:

- ``ok``:      a valid (if unusual) image; the vector must equal the offline pipeline's, and
               `same_as` / `differs_from` pin which frame or which pixels were embedded;
- ``invalid``: INVALID_ARGUMENT naming the image and, where given, a reason fragment;
- ``either``:  Pillow's leniency decides (a bad IDAT checksum, a corrupt scan); whichever the
               server answers must be a correct vector or INVALID_ARGUMENT with a reason.

Never INTERNAL or UNKNOWN, and never a server that stops answering. Bombs are built so that
decoding them would cost gigabytes: only a refusal from the header keeps the server alive.

`python -m tests.hardening.corpus` prints every case with its size and the offline decode answer.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from tests.support.images import chunk, encode, picture, png

Expect = Literal["ok", "invalid", "either"]
UNSUPPORTED = "not a supported image"
TOO_LARGE = ("exceeds max_", "decompression bomb")  # our header check, or Pillow's own
ZIP_BOMB_SIDE = 20_000  # 400 Mpx of zeros, deflated to ~400 KB: over Pillow's own bomb limit too
SMALL_BOMB_SIDE = 8_000  # 64 Mpx: under Pillow's limit (89 Mpx), so only max_image_pixels stops it


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: Expect
    reasons: tuple[str, ...] = ()  # an INVALID_ARGUMENT message must contain one of these
    same_as: bytes | None = None  # an OK vector must equal this file's (e.g. the first frame alone)
    differs_from: bytes | None = None  # ... and differ from this one's (e.g. the second frame)


# --- building blocks (plain images: tests/support/images.py) ---------------------------------


def first_frame_png(data: bytes) -> bytes:
    """What the server must embed for a multi-frame file: frame 0, converted to RGB, lossless."""
    return encode(Image.open(io.BytesIO(data)).convert("RGB"), "PNG")


def frame_png(data: bytes, index: int) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.seek(index)
    return encode(image.convert("RGB"), "PNG")


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


@functools.cache
def zip_bomb_png(side: int = ZIP_BOMB_SIDE) -> bytes:
    """A side x side 8-bit grey PNG of zeros: ~side^2/1000 bytes on the wire, side^2 once decoded."""
    compressor = zlib.compressobj(9)
    rows = (b"\x00" * (side + 1)) * 500  # filter byte + row, 500 rows at a time
    parts = [compressor.compress(rows) for _ in range(side // 500)]
    return png(side, side, b"".join(parts) + compressor.flush(), color=0)


def gif_with_screen(width: int, height: int) -> bytes:
    """A 1x1 frame on a logical screen of the given size (bytes 6..9 of the GIF header)."""
    data = bytearray(encode(Image.new("P", (1, 1), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_header(width: int, height: int, bpp: int = 24, pixels: bytes = b"") -> bytes:
    """BITMAPINFOHEADER BMP claiming any size, followed by whatever pixel bytes are given."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def tiff(entries: list[tuple[int, int, int, int]], tail: bytes = b"", next_ifd: int = 0) -> bytes:
    """Little-endian TIFF with one IFD at offset 8: (tag, type, count, value) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in sorted(entries))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", next_ifd) + tail


def grey_tiff_entries(width: int, height: int, offset: int, count: int) -> list[tuple[int, int, int, int]]:
    short, long = 3, 4
    return [
        (256, long, 1, width),
        (257, long, 1, height),
        (258, short, 1, 8),
        (259, short, 1, 1),
        (262, short, 1, 1),
        (273, long, 1, offset),
        (277, short, 1, 1),
        (278, long, 1, height),
        (279, long, 1, count),
    ]


def jpeg_marker_body(data: bytes, marker: bytes) -> int:
    """Offset of the first byte after a marker's 2-byte length."""
    return data.index(marker) + 4


def jpeg_with_sof_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    body = jpeg_marker_body(data, b"\xff\xc0")
    out[body + 1 : body + 5] = struct.pack(">HH", height, width)
    return bytes(out)


def jpeg_bogus_huffman(data: bytes) -> bytes:
    """The first DHT's 16 code-length counts all 255: a table of 4080 codes, which cannot exist."""
    out = bytearray(data)
    body = jpeg_marker_body(data, b"\xff\xc4")
    out[body + 1 : body + 17] = b"\xff" * 16
    return bytes(out)


def jpeg_scribbled_scan(data: bytes) -> bytes:
    """Entropy-coded data overwritten in the middle; libjpeg often warns and decodes anyway."""
    out = bytearray(data)
    start = data.index(b"\xff\xda") + 64
    rng = np.random.default_rng(5)
    for position in rng.integers(start, len(data) - 8, 12):
        out[position] = int(rng.integers(0, 255)) & 0xFE  # never 0xFF: no accidental markers
    return bytes(out)


def psd_header() -> bytes:
    """An 8x8 RGB Photoshop header with empty sections and raw zero pixels."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x00" * (8 * 8 * 3)


def exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 (the pipeline, like HF, does not apply it)
    exif[0x010F] = "Hostile Cameras Inc." * 10
    exif[0x9286] = b"ASCII\x00\x00\x00" + b"x" * 60_000  # UserComment filling most of APP1
    return encode(picture(80, 60, 3), "JPEG", exif=exif.tobytes(), quality=90)


def random_bytes(seed: int, size: int, prefix: bytes = b"") -> bytes:
    return prefix + np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# --- the corpus ------------------------------------------------------------------------------


def _animated(fmt: str, **params: object) -> bytes:
    frames = [picture(64, 48, seed) for seed in range(3)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def _garbage_cases() -> list[Case]:
    magics = {
        "png": b"\x89PNG\r\n\x1a\n",
        "jpeg": b"\xff\xd8\xff\xe0",
        "gif": b"GIF89a",
        "bmp": b"BM",
        "tiff": b"II*\x00",
        "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    }
    cases = [Case("empty", b"", "invalid", ("empty",)), Case("one_byte", b"\xff", "invalid")]
    for seed, size in ((0, 16), (1, 1024), (2, 65_536), (3, 1 << 20)):
        cases.append(Case(f"random_{size}B", random_bytes(seed, size), "invalid", (UNSUPPORTED,)))
    cases += [
        Case(f"random_after_{name}_magic", random_bytes(10 + i, 4096, magic), "invalid")
        for i, (name, magic) in enumerate(magics.items())
    ]
    cases.append(Case("zeros_1MiB", bytes(1 << 20), "invalid", (UNSUPPORTED,)))
    return cases


def _truncated_cases() -> list[Case]:
    photo = picture(320, 240, 1)
    return [
        Case("truncated_jpeg", cut(encode(photo, "JPEG", quality=95)), "invalid", ("truncated",)),
        Case("truncated_png", cut(encode(photo, "PNG")), "invalid", ("truncated",)),
        Case("truncated_webp", cut(encode(photo, "WEBP", quality=90)), "invalid"),
        Case("truncated_gif", cut(encode(photo.convert("P"), "GIF")), "invalid"),
        Case("truncated_tiff", cut(encode(photo, "TIFF")), "invalid"),
        Case("truncated_bmp", cut(encode(photo, "BMP")), "invalid"),
        Case("jpeg_soi_eoi_only", b"\xff\xd8\xff\xd9", "invalid"),
        Case("png_signature_only", b"\x89PNG\r\n\x1a\n", "invalid"),
    ]


def _bomb_cases() -> list[Case]:
    tiny_idat = zlib.compress(b"\x00" * 16)
    return [
        Case("png_header_50000x50000", png(50_000, 50_000, tiny_idat), "invalid", TOO_LARGE),
        Case("png_zip_bomb_20000x20000", zip_bomb_png(), "invalid", TOO_LARGE),
        Case("png_zip_bomb_8000x8000", zip_bomb_png(SMALL_BOMB_SIDE), "invalid", ("exceeds max_",)),
        Case("gif_canvas_65535x65535", gif_with_screen(65_535, 65_535), "invalid", TOO_LARGE),
        Case("bmp_header_30000x30000", bmp_header(30_000, 30_000), "invalid", TOO_LARGE),
        Case("bmp_header_8000x8000", bmp_header(8_000, 8_000), "invalid", ("exceeds max_",)),
        Case("bmp_width_2147483647", bmp_header(0x7FFFFFFF, 1), "invalid"),
        Case("bmp_negative_width", bmp_header(-16, 16, pixels=bytes(16 * 16 * 3)), "invalid"),
        Case(
            "jpeg_sof_65500x65500",
            jpeg_with_sof_size(encode(picture(), "JPEG"), 65_500, 65_500),
            "invalid",
            TOO_LARGE,
        ),
        Case("png_zero_width", png(0, 16, tiny_idat), "invalid"),
        Case(
            "png_extreme_aspect_1x1000000",
            png(1, 1_000_000, zlib.compress(bytes(2 * 1_000_000), 9), color=0),
            "invalid",
            ("aspect ratio",),
        ),
        Case("tiff_absurd_strip_offsets", tiff(grey_tiff_entries(8, 8, 0xFFFFFF00, 0x7FFFFFFF)), "invalid"),
        Case("tiff_ifd_points_past_eof", b"II*\x00" + struct.pack("<I", 0x7FFFFFF0), "invalid"),
        Case("tiff_ifd_loop", tiff(grey_tiff_entries(8, 8, 8, 64), next_ifd=8), "either"),
    ]


def _format_cases() -> list[Case]:
    small = picture(16, 16)
    html = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
    zip_tail = (
        b"PK\x03\x04\x14\x00\x00\x00\x00\x00" + b"\x00" * 20 + b"evil.jsp<% exec %>PK\x05\x06" + b"\x00" * 18
    )
    gif = encode(picture(32, 24, 2).convert("P"), "GIF")
    return [
        Case(
            "pdf",
            b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
            "invalid",
            (UNSUPPORTED,),
        ),
        Case(
            "svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>',
            "invalid",
            (UNSUPPORTED,),
        ),
        Case("plain_text", b"hello, this is not an image\n" * 10, "invalid", (UNSUPPORTED,)),
        Case("html", html, "invalid", (UNSUPPORTED,)),
        Case("ico", encode(small, "ICO"), "invalid", (UNSUPPORTED,)),
        Case("psd", psd_header(), "invalid", (UNSUPPORTED,)),
        Case("tga", encode(small, "TGA"), "invalid", (UNSUPPORTED,)),
        Case("ppm", encode(small, "PPM"), "invalid", (UNSUPPORTED,)),
        Case("pcx", encode(small, "PCX"), "invalid", (UNSUPPORTED,)),
        Case("polyglot_gif_header_html", b"GIF89a" + html, "invalid"),
        Case("gifar_gif_plus_zip", gif + zip_tail, "ok", same_as=gif),
    ]


def _first_frame_case(name: str, data: bytes) -> Case:
    """A valid file of several frames: the vector is its first frame's, not its second's."""
    return Case(name, data, "ok", same_as=first_frame_png(data), differs_from=frame_png(data, 1))


def _odd_but_valid_cases() -> list[Case]:
    photo = picture(96, 72, 4)
    jpeg = encode(photo, "JPEG", quality=92)
    gif, webp, pages = (
        _animated("GIF", duration=100, loop=0),
        _animated("WEBP", lossless=True),
        _animated("TIFF"),
    )
    top_down = bmp_header(16, -16, pixels=np.asarray(picture(16, 16, 5))[:, :, ::-1].tobytes())
    return [
        _first_frame_case("animated_gif_3_frames", gif),
        _first_frame_case("animated_webp_3_frames", webp),
        _first_frame_case("multipage_tiff_3_pages", pages),
        Case("cmyk_jpeg", encode(photo.convert("CMYK"), "JPEG", quality=92), "ok"),
        Case(
            "png_16bit_grey",
            encode(Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257), "PNG"),
            "ok",
        ),
        Case("png_1bit", encode(photo.convert("1"), "PNG"), "ok"),
        Case("png_palette_with_transparency", encode(photo.convert("P"), "PNG", transparency=0), "ok"),
        Case("png_interlaced_la", encode(photo.convert("LA"), "PNG", interlace=1), "ok"),
        Case("png_1x1", encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "ok"),
        Case("jpeg_progressive", encode(photo, "JPEG", progressive=True), "ok"),
        Case("jpeg_trailing_garbage", jpeg + random_bytes(7, 50_000), "ok", same_as=jpeg),
        Case("jpeg_exif_laden", exif_jpeg(), "ok"),
        Case("bmp_top_down_negative_height", top_down, "ok"),
        Case(
            "tiff_float32",
            encode(Image.fromarray(np.asarray(photo.convert("L"), np.float32) / 255), "TIFF"),
            "either",
        ),
    ]


def _corrupt_cases() -> list[Case]:
    photo = picture(128, 96, 6)
    jpeg, clean_png = encode(photo, "JPEG", quality=90), encode(photo, "PNG")
    ihdr_end, idat_at = 8 + 8 + 13, clean_png.index(b"IDAT") - 4
    idat_len = struct.unpack(">I", clean_png[idat_at : idat_at + 4])[0]
    idat_crc_at = idat_at + 8 + idat_len
    ihdr_bad = bytearray(clean_png)
    ihdr_bad[ihdr_end] ^= 0xFF  # the first byte of IHDR's CRC
    idat_bad = bytearray(clean_png)
    idat_bad[idat_crc_at] ^= 0xFF
    idat_garbage = png(128, 96, random_bytes(8, 4000))
    big_itxt = chunk(b"iTXt", b"Comment\x00\x00\x00\x00\x00" + b"A" * (16 << 20))
    itxt_bomb = chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + zlib.compress(bytes(200 << 20), 9))
    rows = zlib.compress(b"".join(b"\x00" + bytes(np.asarray(photo)[y].tobytes()) for y in range(96)))
    return [
        Case("jpeg_bogus_huffman_table", jpeg_bogus_huffman(jpeg), "invalid"),
        Case("jpeg_scribbled_scan_data", jpeg_scribbled_scan(jpeg), "either"),
        Case("png_bad_crc_ihdr", bytes(ihdr_bad), "either"),
        Case("png_bad_crc_idat", bytes(idat_bad), "either"),
        Case("png_idat_random", idat_garbage, "invalid"),
        Case("png_16MiB_itxt", png(128, 96, rows, big_itxt), "either"),
        Case("png_itxt_zlib_bomb_200MiB", png(128, 96, rows, itxt_bomb), "either"),
        Case("gif_lzw_garbage", _gif_garbage_lzw(), "either"),
        Case("webp_riff_size_lies", _webp_lying_riff(), "either"),
    ]


def _gif_garbage_lzw() -> bytes:
    data = encode(picture(64, 48, 7).convert("P"), "GIF")
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")  # image descriptor at (0, 0)
    start = descriptor + 10 + 2  # past the descriptor, the LZW minimum code size and the first length
    return data[:start] + random_bytes(9, len(data) - start - 2) + data[-2:]


def _webp_lying_riff() -> bytes:
    data = bytearray(encode(picture(64, 48, 8), "WEBP", quality=80))
    data[4:8] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


@functools.cache
def corpus() -> tuple[Case, ...]:
    cases = (
        *_garbage_cases(),
        *_truncated_cases(),
        *_bomb_cases(),
        *_format_cases(),
        *_odd_but_valid_cases(),
        *_corrupt_cases(),
    )
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def main() -> None:
    """Each case through decode + a CLIP-sized Preprocessor with the server's default limits."""
    from embedder.errors import InvalidImage
    from embedder.preprocess import DecodeLimits, Preprocessor
    from embedder.settings import Settings
    from embedder.spec import CropSize, Preprocessing, Resize

    settings = Settings()
    spec = Preprocessing(
        processor_class="CLIPImageProcessor",
        resize=Resize(shortest_edge=224),
        resample="bicubic",
        center_crop=CropSize(height=224, width=224),
        rescale_factor=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    preprocessor = Preprocessor(spec, DecodeLimits(settings.max_image_pixels, settings.max_resized_pixels))
    for case in corpus():
        try:
            answer = f"OK {tuple(preprocessor.from_bytes(case.data).shape)}"
        except InvalidImage as exc:
            answer = f"InvalidImage: {exc.reason}"
        print(f"{case.name:34} {len(case.data):>10} B  expect {case.expect:7} {answer[:110]}")


if __name__ == "__main__":
    main()
