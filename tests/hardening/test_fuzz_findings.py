"""The regression corpus (fuzz_findings/): every input any fuzzer has found, replayed on every run.

Each must be refused by the decode path with `InvalidImage`, and by a real server with
INVALID_ARGUMENT naming `image 0` (counted as a decode failure), the server still SERVING and
answering a good image correctly afterwards.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from embedder.errors import InvalidImage
from embedder.preprocess import decode
from tests.hardening.conftest import image_request
from tests.hardening.fuzz_target import FINDINGS, INDEX, findings, fuzz_preprocessor
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP

# The TIFF of issue 14: Pillow raised TypeError on it, and a caller got INTERNAL.
ISSUE_14_TIFF = "20ff68b940ad6eb8c195f5bc6637464defd0f952bba2d94745ecc0dcb9241558"
FOUND = findings()


@pytest.fixture(scope="module")
def served(tiny_models: Path) -> Iterator[Served]:
    with serving(tiny_models) as served:
        yield served


def test_the_corpus_holds_every_known_finding() -> None:
    assert ISSUE_14_TIFF in {hashlib.sha256(data).hexdigest() for data in FOUND.values()}
    index = (FINDINGS / INDEX).read_text(encoding="utf-8")
    for name in FOUND:  # each file is explained in the index
        assert f"`{name}`" in index, name


@pytest.mark.parametrize("name", sorted(FOUND))
def test_decode_refuses_it_as_invalid_image(name: str) -> None:
    preprocessor = fuzz_preprocessor()
    with pytest.raises(InvalidImage) as refused:
        preprocessor(decode(FOUND[name], preprocessor.limits))
    assert refused.value.reason and refused.value.failure


@pytest.mark.parametrize("name", sorted(FOUND))
def test_a_server_answers_invalid_argument_and_keeps_serving(
    served: Served, good_jpeg: bytes, name: str
) -> None:
    expected = served.vectors(good_jpeg, model=CLIP)
    failures = served.metric("embedder_decode_failures_total", reason="undecodable") + served.metric(
        "embedder_decode_failures_total", reason="truncated"
    )
    error = served.error(image_request(FOUND[name]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert str(error.details()).startswith("image 0: "), error.details()
    after = served.metric("embedder_decode_failures_total", reason="undecodable") + served.metric(
        "embedder_decode_failures_total", reason="truncated"
    )
    assert after == failures + 1
    assert served.health() == "SERVING"
    np.testing.assert_array_equal(served.vectors(good_jpeg, model=CLIP), expected)


def test_the_traceback_goes_to_the_log_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    tiff = next(data for data in FOUND.values() if hashlib.sha256(data).hexdigest() == ISSUE_14_TIFF)
    with caplog.at_level(logging.INFO, logger="embedder"), pytest.raises(InvalidImage) as refused:
        decode(tiff)
    assert not caplog.records
    assert refused.value.failure == "undecodable"
    assert "TypeError" in refused.value.reason  # the exception's type is named
    with caplog.at_level(logging.DEBUG, logger="embedder"), pytest.raises(InvalidImage):
        decode(tiff)
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [TypeError]


def test_preprocessing_refuses_an_image_it_cannot_handle() -> None:
    """The same rule after decoding: a 16-bit greyscale image (which `decode` would have
    converted) has no channel axis, and the failure is the image's, not the server's."""
    with pytest.raises(InvalidImage) as refused:
        fuzz_preprocessor()(Image.new("I;16", (40, 30)))
    assert refused.value.reason.startswith("cannot preprocess: IndexError")
