"""Every error status Embed documents, each followed by a correct answer from the same server."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from embedder.wire import MiB
from export.images import ParityImage
from tests.support.inprocess import Served, serving

MAX_IMAGES = 4
MAX_IMAGE_BYTES = 200_000
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Limited:
    """A server with small limits, the model it serves and one image's known vector."""

    served: Served
    model: str
    other_model: str
    good: bytes
    expected: np.ndarray

    def still_serves(self) -> None:
        np.testing.assert_array_equal(self.served.embed(self.model, [self.good]), self.expected)


@pytest.fixture(scope="module")
def limited(
    tiny_models: Path,
    tiny_clip_dir: Path,
    tiny_dinov2_dir: Path,
    parity_set: list[ParityImage],
) -> Iterator[Limited]:
    settings = {
        "max_images_per_request": MAX_IMAGES,
        "max_image_bytes": MAX_IMAGE_BYTES,
        "max_message_bytes": MiB,
    }
    with serving(tiny_models, **settings) as served:
        model = load_spec(tiny_clip_dir / SPEC_FILE).name
        other = load_spec(tiny_dinov2_dir / SPEC_FILE).name
        good = by_name(parity_set, "photo_640x480.jpg")
        yield Limited(served, model, other, good, served.embed(model, [good]))


def by_name(images: list[ParityImage], name: str) -> bytes:
    return next(item.data for item in images if item.name == name)


def encoded(fmt: str) -> bytes:
    """A real image in a format Pillow reads but the server does not allow."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8" fill="red"/></svg>'


def expect(limited: Limited, request: pb.EmbedRequest, code: grpc.StatusCode, *fragments: str) -> str:
    error = limited.served.error(request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details(), f"{fragment!r} not in {error.details()!r}"
    limited.still_serves()
    return str(error.details())


def images(*data: bytes) -> list[pb.Image]:
    return [pb.Image(data=d) for d in data]


def test_unknown_model_is_not_found_and_lists_the_models(limited: Limited) -> None:
    request = pb.EmbedRequest(model="no-such-model", images=images(limited.good))
    expect(limited, request, grpc.StatusCode.NOT_FOUND, "'no-such-model'", limited.model, limited.other_model)


def test_truncated_image_names_its_index_and_reason(limited: Limited, parity_set: list[ParityImage]) -> None:
    jpeg = by_name(parity_set, "photo_500x333_422_progressive.jpg")
    request = pb.EmbedRequest(
        model=limited.model, images=images(limited.good, limited.good, jpeg[: len(jpeg) // 2])
    )
    expect(limited, request, INVALID, "image 2:", "cannot decode JPEG", "truncated")


def test_garbage_bytes_name_their_index(limited: Limited) -> None:
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    request = pb.EmbedRequest(model=limited.model, images=images(limited.good, limited.good, garbage))
    expect(limited, request, INVALID, "image 2:", "not a supported image")


@pytest.mark.parametrize(
    "data",
    [PDF, SVG, encoded("ICO"), encoded("PPM"), encoded("TGA")],
    ids=["pdf", "svg", "ico", "ppm", "tga"],
)
def test_formats_outside_the_allow_list_are_refused(limited: Limited, data: bytes) -> None:
    request = pb.EmbedRequest(model=limited.model, images=images(data))
    expect(limited, request, INVALID, "image 0:", "not a supported image", "allowed formats: JPEG")


def test_empty_image_data_is_refused(limited: Limited) -> None:
    request = pb.EmbedRequest(model=limited.model, images=[pb.Image(data=b""), pb.Image()])
    expect(limited, request, INVALID, "image 0: empty image data", "image 1: empty image data")


def test_several_bad_images_are_all_named(limited: Limited) -> None:
    request = pb.EmbedRequest(model=limited.model, images=images(SVG, limited.good, PDF))
    expect(limited, request, INVALID, "2 images rejected", "image 0:", "image 2:")


def test_request_without_images_is_invalid(limited: Limited) -> None:
    expect(limited, pb.EmbedRequest(model=limited.model), INVALID, "no images")


def test_too_many_images_names_the_limit(limited: Limited) -> None:
    request = pb.EmbedRequest(model=limited.model, images=images(*[limited.good] * (MAX_IMAGES + 1)))
    expect(limited, request, INVALID, f"max_images_per_request={MAX_IMAGES}")
    ok = pb.EmbedRequest(model=limited.model, images=images(*[limited.good] * MAX_IMAGES))
    assert len(limited.served.call(ok).embeddings) == MAX_IMAGES  # the limit itself is allowed


def test_image_over_max_image_bytes_names_the_limit(limited: Limited, parity_set: list[ParityImage]) -> None:
    big = by_name(parity_set, "photo_1024x768_444.jpg")
    assert MAX_IMAGE_BYTES < len(big) < MiB  # over our limit, under the transport's
    request = pb.EmbedRequest(model=limited.model, images=images(limited.good, big))
    expect(limited, request, INVALID, "image 1:", f"max_image_bytes={MAX_IMAGE_BYTES}")


def test_message_over_max_message_bytes_is_refused_by_grpc(limited: Limited) -> None:
    request = pb.EmbedRequest(model=limited.model, images=images(b"\xff\xd8" + bytes(2 * MiB)))
    expect(limited, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert limited.served.health() == "SERVING"


def test_path_input_without_image_root_is_refused(limited: Limited) -> None:
    request = pb.EmbedRequest(model=limited.model, images=[pb.Image(path="photo.jpg")])
    expect(limited, request, INVALID, "image 0:", "path inputs are disabled", "image_root")


def test_path_inputs_under_an_image_root(
    serve: Callable[..., Served],
    tiny_models: Path,
    tiny_clip_dir: Path,
    tmp_path: Path,
    parity_set: list[ParityImage],
) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    data = by_name(parity_set, "gray_320x240.png")
    (root / "sub" / "gray.png").write_bytes(data)
    (tmp_path / "outside.png").write_bytes(data)
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    served = serve(tiny_models, image_root=root)
    model = load_spec(tiny_clip_dir / SPEC_FILE).name

    by_path = served.call(pb.EmbedRequest(model=model, images=[pb.Image(path="sub/gray.png")]))
    np.testing.assert_array_equal(by_path.embeddings[0].values, served.embed(model, [data])[0])
    for path, reason in [
        ("../outside.png", "without '..'"),
        (str(root / "sub" / "gray.png"), "must be relative"),
        ("escape.png", "escapes the image root"),
        ("sub/none.png", "not found"),
        ("sub", "not a regular file"),
    ]:
        error = served.error(pb.EmbedRequest(model=model, images=[pb.Image(path=path)]))
        assert error.code() == INVALID and reason in error.details(), (path, error.details())
