"""Request fields a client controls, other than the image bytes: never INTERNAL or UNKNOWN.

Malformed protobuf, enum numbers the proto does not define, strings of megabytes echoed into an
error message (the status message travels as a header, refused by clients past 16 KiB), and a
request with several bad images of different kinds, each counted under its own reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from embedder.v1 import embedder_pb2 as pb
from tests.hardening.conftest import image_request
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HUGE = 2_000_000  # characters: far over any header limit


@pytest.fixture(scope="module")
def served(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("image-root")
    with serving(tiny_models, image_root=root) as served:
        yield served


def raw_call(served: Served, method: str, data: bytes) -> grpc.RpcError:
    call = served.channel.unary_unary(
        f"/embedder.v1.Embedder/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(data, timeout=30)
    return caught.value


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        ("Embed", b"\xff\xff\xff\xff", "EmbedRequest"),
        ("Embed", b"\x0a\x02\xff\xfe", "EmbedRequest"),  # model: invalid UTF-8
        ("Embed", b"\x12\x04\x12\x02\xff\xfe", "EmbedRequest"),  # images[0].path: invalid UTF-8
        ("ListModels", b"\x0a\xff", "ListModelsRequest"),  # truncated field
    ],
)
def test_malformed_protobuf_is_invalid_argument(
    served: Served, good_jpeg: bytes, method: str, data: bytes, message: str
) -> None:
    error = raw_call(served, method, data)
    assert error.code() == INVALID, (error.code(), error.details())
    assert str(error.details()).startswith(f"malformed {message}: "), error.details()
    assert served.health() == "SERVING"
    assert served.vectors(good_jpeg, model=CLIP).shape == (1, 16)


@pytest.mark.parametrize("number", [2, 7, -1])
def test_an_aggregation_the_proto_does_not_define_is_refused(
    served: Served, good_jpeg: bytes, number: int
) -> None:
    request = image_request(good_jpeg)
    request.aggregate = number  # type: ignore[assignment]  # proto3 enums keep unknown numbers
    error = served.error(request)
    assert error.code() == INVALID
    assert f"aggregate={number} is not a known Aggregation" in str(error.details())


def test_a_huge_model_name_gets_a_short_not_found(served: Served, good_jpeg: bytes) -> None:
    error = served.error(pb.EmbedRequest(model="m" * HUGE, images=[pb.Image(data=good_jpeg)]))
    assert error.code() == grpc.StatusCode.NOT_FOUND, (error.code(), error.details())
    details = str(error.details())
    assert details.startswith("unknown model 'mmm") and f"({HUGE} characters)" in details
    assert len(details) < 400


@pytest.mark.parametrize("path", ["a" * HUGE, "a/" * 10_000, "\u202e\U0001f600" * 5_000])
def test_a_huge_path_gets_a_short_invalid_argument(served: Served, path: str) -> None:
    error = served.error(pb.EmbedRequest(model=CLIP, images=[pb.Image(path=path)]))
    assert error.code() == INVALID, (error.code(), error.details())
    details = str(error.details())
    assert details.startswith("image 0: path '") and len(details) < 400
    assert details.isascii()


def test_many_long_refusals_stay_within_the_status_message_limit(served: Served) -> None:
    request = pb.EmbedRequest(model=CLIP, images=[pb.Image(path="x" * 50_000 + str(i)) for i in range(200)])
    error = served.error(request)
    assert error.code() == INVALID
    assert "200 images rejected" in str(error.details()) and len(str(error.details())) <= 2048


def test_each_bad_image_of_a_request_is_counted_under_its_own_reason(
    served: Served, good_jpeg: bytes
) -> None:
    reasons = ("empty", "format", "truncated")

    def counts() -> list[float]:
        return [served.metric("embedder_decode_failures_total", reason=r) for r in reasons]

    before = counts()
    error = served.error(
        image_request(good_jpeg, b"", b"%PDF-1.4 not an image", good_jpeg[: len(good_jpeg) // 2])
    )
    assert error.code() == INVALID and "3 images rejected" in str(error.details())
    assert [after - b for after, b in zip(counts(), before, strict=True)] == [1, 1, 1]
