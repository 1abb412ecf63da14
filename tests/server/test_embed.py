"""Embed's options and invariants over the wire: normalize, mean aggregation, request order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from embedder.client import build_request, to_numpy
from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from export.images import ParityImage

if TYPE_CHECKING:
    from tests.support.inprocess import Served

FAMILIES = ["tiny_clip_dir", "tiny_dinov2_dir"]
UNIT_TOLERANCE = 1e-6


@pytest.fixture(params=FAMILIES)
def model(request: pytest.FixtureRequest) -> str:
    model_dir: Path = request.getfixturevalue(request.param)
    return load_spec(model_dir / SPEC_FILE).name


@pytest.fixture(scope="module")
def images(parity_set: list[ParityImage]) -> list[bytes]:
    """Eight distinct images of different formats, modes and sizes."""
    picked = [parity_set[i] for i in (0, 4, 8, 11, 18, 21, 29, 35)]
    return [item.data for item in picked]


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows.astype(np.float64), axis=-1, keepdims=True)


def test_normalize_gives_unit_vectors_equal_to_normalised_raw(
    tiny_server: Served, model: str, images: list[bytes]
) -> None:
    raw = tiny_server.embed(model, images)
    normalized = tiny_server.embed(model, images, normalize=True)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # else the check below is vacuous
    np.testing.assert_allclose(
        np.linalg.norm(normalized.astype(np.float64), axis=1), 1.0, rtol=0, atol=UNIT_TOLERANCE
    )
    np.testing.assert_allclose(normalized, unit(raw), rtol=0, atol=1e-7)


@pytest.mark.parametrize("normalize", [False, True])
def test_mean_aggregate_equals_mean_of_singles(
    tiny_server: Served, model: str, images: list[bytes], normalize: bool
) -> None:
    singles = np.stack([tiny_server.embed(model, [image], normalize=normalize)[0] for image in images])
    result = tiny_server.client.embed(model, images, normalize=normalize, aggregate="mean")
    assert result.aggregate is not None and result.aggregate.shape == (singles.shape[1],)
    np.testing.assert_array_equal(result.embeddings, singles)
    np.testing.assert_allclose(result.aggregate, singles.astype(np.float64).mean(axis=0), rtol=0, atol=1e-6)
    if normalize:  # the mean of unit vectors is shorter than 1 and is not re-normalised unless asked
        assert np.linalg.norm(result.aggregate) < 1 - 1e-4


def test_normalize_aggregate_gives_a_unit_mean(tiny_server: Served, model: str, images: list[bytes]) -> None:
    plain = tiny_server.client.embed(model, images, aggregate="mean")
    result = tiny_server.client.embed(model, images, aggregate="mean", normalize_aggregate=True)
    assert result.aggregate is not None and plain.aggregate is not None
    assert np.linalg.norm(result.aggregate.astype(np.float64)) == pytest.approx(1.0, abs=UNIT_TOLERANCE)
    np.testing.assert_allclose(result.aggregate, unit(plain.aggregate), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(result.embeddings, plain.embeddings)  # per-image vectors untouched


def test_aggregate_only_returns_only_the_aggregate(
    tiny_server: Served, model: str, images: list[bytes]
) -> None:
    full = to_numpy(tiny_server.call(build_request(model, images, aggregate="mean")))
    request = build_request(model, images, aggregate="mean")
    request.aggregate_only = True
    response = tiny_server.call(request)
    assert len(response.embeddings) == 0
    assert response.HasField("aggregate")
    assert full.aggregate is not None
    np.testing.assert_array_equal(np.array(response.aggregate.values, dtype=np.float32), full.aggregate)


@pytest.mark.parametrize("flag", ["aggregate_only", "normalize_aggregate"])
def test_aggregate_flags_without_mean_are_invalid(
    tiny_server: Served, model: str, images: list[bytes], flag: str
) -> None:
    request = build_request(model, images[:2])
    setattr(request, flag, True)
    error = tiny_server.error(request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert flag in error.details() and "AGGREGATION_MEAN" in error.details()
    assert tiny_server.embed(model, images[:1]).shape[0] == 1


def test_no_aggregate_field_unless_asked(tiny_server: Served, model: str, images: list[bytes]) -> None:
    response = tiny_server.call(pb.EmbedRequest(model=model, images=[pb.Image(data=images[0])]))
    assert not response.HasField("aggregate")


def test_request_order_is_preserved(tiny_server: Served, model: str, images: list[bytes]) -> None:
    singles = np.stack([tiny_server.embed(model, [image])[0] for image in images])
    # Distinct images give distinct vectors, so a permutation of rows cannot pass unnoticed.
    assert len({row.tobytes() for row in singles}) == len(images)

    forward = tiny_server.embed(model, images)
    backward = tiny_server.embed(model, images[::-1])

    np.testing.assert_array_equal(forward, singles)
    np.testing.assert_array_equal(backward, singles[::-1])


def test_concurrent_requests_each_get_their_own_rows(
    tiny_server: Served, model: str, images: list[bytes]
) -> None:
    """Requests batched together by the server still receive their own images' vectors."""
    singles = {image: tiny_server.embed(model, [image])[0] for image in images}
    requests = [images[i:] + images[:i] for i in range(len(images))]  # rotations, each distinct
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda batch: tiny_server.embed(model, batch), requests))
    for batch, rows in zip(requests, results):
        np.testing.assert_array_equal(rows, np.stack([singles[image] for image in batch]))
