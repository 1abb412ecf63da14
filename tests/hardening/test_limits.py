"""The request limits at their boundaries: one unit under passes, one over is refused with a
message naming the setting and its value, and the server keeps answering."""

from __future__ import annotations

import io
import tracemalloc
import zlib
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from embedder.client import EmbedderClient
from embedder.settings import Settings
from embedder.wire import DEFAULT_MAX_MESSAGE_BYTES, MiB
from tests.hardening.conftest import image_request, offline_for
from tests.hardening.corpus import random_bytes, zip_bomb_png
from tests.support.images import chunk, encode, picture, png
from tests.support.inprocess import Served
from tests.support.models import CLIP

Serve = Callable[..., Served]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GRPC_DEFAULT_RECEIVE = 4 * MiB
TEXT_CAP = MiB  # Pillow's PngImagePlugin.MAX_TEXT_CHUNK


def padded(data: bytes, size: int) -> bytes:
    """A JPEG padded after its EOI to exactly `size` bytes (still the same image)."""
    assert len(data) <= size
    return data + random_bytes(1, size - len(data))


def grey_png(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 128), "PNG")


def test_max_image_bytes_boundary(serve: Serve, good_jpeg: bytes) -> None:
    served = serve(max_image_bytes=100_000)
    exact = padded(good_jpeg, 100_000)
    np.testing.assert_array_equal(served.vectors(exact, model=CLIP), served.vectors(good_jpeg, model=CLIP))
    error = served.error(image_request(good_jpeg, padded(good_jpeg, 100_001)))
    assert error.code() == INVALID
    assert error.details() == "image 1: 100001 bytes exceeds max_image_bytes=100000"
    served.vectors(good_jpeg, model=CLIP)


def test_max_image_pixels_is_checked_from_the_header(serve: Serve) -> None:
    served = serve(max_image_pixels=10_000)
    served.vectors(grey_png(100, 100), model=CLIP)  # exactly the limit
    error = served.error(image_request(grey_png(100, 101)))
    assert error.code() == INVALID
    assert "100x101 = 10100 pixels exceeds max_image_pixels=10000" in error.details(), error.details()
    # Garbage pixel data behind an over-limit header: the answer is the size, so nothing was inflated.
    header_only = png(1000, 1000, random_bytes(2, 64))
    error = served.error(image_request(header_only))
    assert "exceeds max_image_pixels=10000" in error.details(), error.details()


def test_small_zip_bomb_is_stopped_by_max_image_pixels_not_pillow(serve: Serve) -> None:
    """64 Mpx is under Pillow's own bomb limit (89 Mpx): only the server's setting stands between
    this 62 KB request and 64 MB of inflated zeros."""
    served = serve()
    bomb = zip_bomb_png(8000)
    assert len(bomb) < 100_000
    error = served.error(image_request(bomb))
    assert error.code() == INVALID
    assert f"exceeds max_image_pixels={Settings().max_image_pixels}" in error.details(), error.details()


def test_max_images_per_request_boundary(serve: Serve, good_jpeg: bytes) -> None:
    served = serve(max_images_per_request=4)
    assert served.vectors(*[good_jpeg] * 4, model=CLIP).shape[0] == 4
    error = served.error(image_request(*[good_jpeg] * 5))
    assert error.code() == INVALID
    assert "5 images exceeds max_images_per_request=4" in error.details()
    served.vectors(good_jpeg, model=CLIP)


def ten_megabyte_png() -> bytes:
    """~10 MB of real pixels: stored (level 0) noise, 1830 x 1830 RGB."""
    pixels = np.frombuffer(random_bytes(3, 1830 * 1830 * 3), np.uint8).reshape(1830, 1830, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def test_client_and_server_defaults_agree_and_carry_a_10_mb_image(serve: Serve) -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == Settings().max_message_bytes > 2 * GRPC_DEFAULT_RECEIVE
    served = serve()  # every limit at its default
    data = ten_megabyte_png()
    assert len(data) > 10_000_000
    with EmbedderClient(served.address, retries=0, timeout=120.0) as client:
        got = client.embed(CLIP, [data]).embeddings[0]
    np.testing.assert_array_equal(got, offline_for(served).vector(data))


def test_message_over_max_message_bytes_is_refused_on_both_sides(serve: Serve, good_jpeg: bytes) -> None:
    served = serve(max_message_bytes=MiB)
    big = padded(good_jpeg, 2 * MiB)
    # A client with the default (64 MiB) sends it; the server refuses it before any handler runs.
    with EmbedderClient(served.address, retries=0, timeout=30.0) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.embed(CLIP, [big])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A client configured like the server refuses to send it at all.
    with EmbedderClient(served.address, retries=0, timeout=30.0, max_message_bytes=MiB) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.embed(CLIP, [big])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.embed(CLIP, [good_jpeg]).embeddings.shape[0] == 1  # and the server still answers


def text_chunk_png(inflated_bytes: int) -> bytes:
    """A 32x32 photo whose zTXt chunk inflates to `inflated_bytes` zeros."""
    photo = np.asarray(picture(32, 32, 1))
    rows = zlib.compress(b"".join(b"\x00" + photo[y].tobytes() for y in range(32)))
    text = zlib.compress(bytes(inflated_bytes), 9)
    return png(32, 32, rows, chunk(b"zTXt", b"Comment\x00\x00" + text))


def test_compressed_text_bomb_is_capped_by_pillow(serve: Serve) -> None:
    """A zTXt chunk inflates to at most Pillow's MAX_TEXT_CHUNK (1 MiB, as Pillow documents it):
    at the cap the image is served as if the chunk were not there, one byte over it is refused,
    and a 200 MiB zlib stream is refused without being inflated."""
    served = serve()
    assert PngImagePlugin.MAX_TEXT_CHUNK == TEXT_CAP  # the cap the server's Pillow applies
    plain = served.vectors(encode(picture(32, 32, 1), "PNG"), model=CLIP)
    np.testing.assert_array_equal(served.vectors(text_chunk_png(TEXT_CAP), model=CLIP), plain)
    error = served.error(image_request(text_chunk_png(TEXT_CAP + 1)))
    assert error.code() == INVALID and error.details().startswith("image 0: "), error.details()
    assert "MAX_TEXT_CHUNK" in error.details(), error.details()

    bomb = text_chunk_png(200 * MiB)
    assert len(bomb) < MiB
    # Python's allocations in the whole server process while it handles the bomb (zlib's output
    # is a Python bytes object, so an uncapped inflate would show as 200 MiB): the 32 MiB bound
    # leaves room for the request's copies and the 1 MiB cap, and none for the inflated stream.
    tracemalloc.start()
    try:
        error = served.error(image_request(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n200 MiB zTXt bomb ({len(bomb)} bytes): {error.code().name}; Python peak {peak / MiB:.1f} MiB")
    assert error.code() == INVALID and "MAX_TEXT_CHUNK" in error.details(), error.details()
    assert peak < 32 * MiB, f"{peak / MiB:.1f} MiB allocated: the text chunk was inflated past the cap"
    np.testing.assert_array_equal(served.vectors(encode(picture(32, 32, 1), "PNG"), model=CLIP), plain)
