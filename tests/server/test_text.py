"""EmbedText on a real server over the tiny CLIP export (its text tower, its real-vocabulary
tokenizer): the served vectors are the offline pipeline's, in request order, batched across
callers like images, and every rule of Embed applies (limits, statuses, health, metrics, logs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.engine import l2_normalize
from embedder.runtime import open_session, run_text
from embedder.spec import SPEC_FILE, load_spec
from embedder.text import TextTokenizer, collate
from embedder.v1 import embedder_pb2 as pb
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TEXTS = [
    "a dog running on a beach",
    "",
    "Ünïcödé façade, 東京の夜景, and 🐕‍🦺",
    "word " * 120,  # far over 77 tokens: cut, the end-of-text token kept
    "x",
    "a photo of a cat",
]


@pytest.fixture(scope="module")
def served(tiny_models: Path) -> Iterator[Served]:
    with serving(tiny_models, max_texts_per_request=8, max_text_chars=1000, max_queue_texts=16) as served:
        yield served


@pytest.fixture(scope="module")
def offline(tiny_clip_dir: Path, served: Served) -> object:
    """The served text path without the server: the same tokenizer file and a session configured
    as the server configures its own."""
    spec = load_spec(tiny_clip_dir / SPEC_FILE)
    assert spec.text is not None
    tokenizer = TextTokenizer.load(tiny_clip_dir / spec.text.tokenizer_file, spec.text)
    session = open_session(tiny_clip_dir / spec.text.onnx_file, served.server.plan.intra_op)

    def embed(text: str) -> np.ndarray:
        ids, mask = collate(tokenizer.encode([text]), spec.text.pad_id)
        return run_text(session, ids, mask)[0]

    return embed


def test_served_text_vectors_are_the_offline_pipelines(served: Served, offline: object) -> None:
    vectors = served.texts(CLIP, *TEXTS)
    assert vectors.shape == (len(TEXTS), 16) and vectors.dtype == np.float32
    for text, vector in zip(TEXTS, vectors, strict=True):
        expected = offline(text)  # type: ignore[operator]
        # Served in one batch padded to the longest text; the gate holds batch == alone to 1e-6.
        np.testing.assert_allclose(l2_normalize(vector), l2_normalize(expected), rtol=0, atol=1e-6)


def test_order_normalisation_and_concurrent_batching(served: Served) -> None:
    alone = np.stack([served.texts(CLIP, text)[0] for text in TEXTS])
    np.testing.assert_array_equal(served.texts(CLIP, *TEXTS[::-1]), served.texts(CLIP, *TEXTS)[::-1])
    normalized = served.texts(CLIP, *TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=0, atol=1e-6)
    batches_before = served.metric("embedder_batch_size_count", model=CLIP, modality="text")
    texts_before = served.metric("embedder_batch_size_sum", model=CLIP, modality="text")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda text: served.texts(CLIP, text)[0], TEXTS * 4))
    batches = served.metric("embedder_batch_size_count", model=CLIP, modality="text") - batches_before
    assert (
        served.metric("embedder_batch_size_sum", model=CLIP, modality="text") - texts_before == len(TEXTS) * 4
    )
    assert batches < len(TEXTS) * 4, "eight callers at once were never batched together"
    np.testing.assert_allclose(
        l2_normalize(np.stack(together)), l2_normalize(np.concatenate([alone] * 4)), rtol=0, atol=1e-6
    )


def test_the_response_names_the_text_graph_and_tokenizer(served: Served, tiny_clip_dir: Path) -> None:
    spec = load_spec(tiny_clip_dir / SPEC_FILE)
    assert spec.text is not None
    info = served.call(pb.EmbedTextRequest(model=CLIP, texts=["a"])).model
    assert list(info.modalities) == ["image", "text"]
    assert (
        info.text_onnx_sha256 == spec.text.onnx_sha256 and info.tokenizer_sha256 == spec.text.tokenizer_sha256
    )
    assert info.text_parity_verified and info.onnx_sha256 == spec.onnx_sha256
    listed = served.models()
    assert listed[CLIP].text.loaded and listed[CLIP].text.state == pb.MODEL_STATE_SERVING
    assert list(listed[DINO].info.modalities) == ["image"] and not listed[DINO].HasField("text")
    assert served.health(f"{CLIP}/text") == "SERVING"


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        (pb.EmbedTextRequest(model=DINO, texts=["a"]), INVALID, f"model '{DINO}' has no text tower"),
        (pb.EmbedTextRequest(model=CLIP), INVALID, "request has no texts"),
        (
            pb.EmbedTextRequest(model=CLIP, texts=["a"] * 9),
            INVALID,
            "9 texts exceeds max_texts_per_request=8",
        ),
        (
            pb.EmbedTextRequest(model=CLIP, texts=["ok", "y" * 1001]),
            INVALID,
            "text 1: 1001 characters exceeds max_text_chars=1000",
        ),
        (pb.EmbedTextRequest(model="nope", texts=["a"]), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    ],
    ids=["no-text-tower", "no-texts", "too-many", "too-long", "unknown-model"],
)
def test_bad_requests_are_refused_with_the_reason(
    served: Served, request_: pb.EmbedTextRequest, code: grpc.StatusCode, says: str
) -> None:
    error = served.error(request_)
    assert error.code() == code and says in str(error.details()), (error.code(), error.details())
    assert served.texts(CLIP, "still serving").shape == (1, 16)


def test_malformed_bytes_are_invalid_argument(served: Served) -> None:
    call = served.channel.unary_unary(
        "/embedder.v1.Embedder/EmbedText", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\x12\x02\xff\xfe", timeout=30)  # texts[0]: invalid UTF-8
    assert caught.value.code() == INVALID
    assert str(caught.value.details()).startswith("malformed EmbedTextRequest: ")


def test_a_request_larger_than_the_text_queue_is_told_to_split(serve: object) -> None:
    small = serve(max_queue_texts=4)  # type: ignore[operator]
    error = small.error(pb.EmbedTextRequest(model=CLIP, texts=["a"] * 5))
    assert error.code() == INVALID and "5 texts exceeds max_queue_texts=4: split the request" in str(
        error.details()
    )


def test_metrics_and_access_log_carry_the_modality(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    before = served.metric("embedder_requests_total", model=CLIP, modality="text", code="OK")
    texts_before = served.metric("embedder_texts_total", model=CLIP, code="OK")
    with caplog.at_level(logging.INFO, logger="embedder.access"):
        served.texts(CLIP, "one", "two", "three")
    assert served.metric("embedder_requests_total", model=CLIP, modality="text", code="OK") == before + 1
    assert served.metric("embedder_texts_total", model=CLIP, code="OK") == texts_before + 3
    assert served.metric("embedder_request_seconds_count", model=CLIP, modality="text") >= 1
    assert any(f"EmbedText model={CLIP} texts=3 status=OK" in r.getMessage() for r in caplog.records)


def test_an_expired_deadline_is_deadline_exceeded(serve: object) -> None:
    """256 texts of 77 tokens take far longer to tokenize and run than a 1 ms deadline."""
    roomy = serve()  # type: ignore[operator]  # the default limits: 256 texts a request
    long_texts = [f"{i} " + "many words " * 60 for i in range(256)]
    with pytest.raises(grpc.RpcError) as caught:
        roomy.stub.EmbedText(pb.EmbedTextRequest(model=CLIP, texts=long_texts), timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert roomy.texts(CLIP, "still serving").shape == (1, 16)
