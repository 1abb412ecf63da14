"""EmbedText on a real server over the tiny CLIP export (its text tower, its real-vocabulary
tokenizer): the served vectors are the offline pipeline's, in request order, batched across
callers like images, and every rule of Embed applies (limits, statuses, health, metrics, logs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from embedder.engine import l2_normalize
from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from export.architectures import architecture
from export.families import save_random_init
from export.parity_texts import parity_texts
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO
from tests.support.polling import wait_until

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
def pytorch(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], np.ndarray]:
    """The pipeline being replaced, with none of our code on the way: transformers' fast tokenizer
    and PyTorch's `CLIPModel.get_text_features`, on the checkpoint the export was made from (its
    seeded random-init weights, saved again from the provenance in model.json)."""
    provenance = load_spec(tiny_clip_dir / SPEC_FILE).provenance
    assert provenance is not None and provenance.weights == "random-init" and provenance.seed is not None
    checkpoint = tmp_path_factory.mktemp("tiny-clip-checkpoint")
    save_random_init(architecture(provenance.source), provenance.seed, checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.is_fast
    model = CLIPModel.from_pretrained(checkpoint).eval()

    def embed(text: str) -> np.ndarray:
        encoded = tokenizer(text, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            features = model.get_text_features(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            )
        vector: np.ndarray = features[0].numpy()
        return vector

    return embed


def unit(vector: np.ndarray) -> np.ndarray:
    return vector.astype(np.float64) / np.linalg.norm(vector.astype(np.float64))


def test_served_text_vectors_are_pytorchs(serve: object, pytorch: Callable[[str], np.ndarray]) -> None:
    """These texts and the gate's 224, through EmbedText 8 at a time (each request one batch padded
    to its longest text), against PyTorch one text at a time: 1e-6 after L2 normalisation, the
    project's promise (docs/models.md)."""
    texts = TEXTS + [item.text for item in parity_texts()]
    served = serve(max_text_chars=max(map(len, texts)))  # type: ignore[operator]  # the gate's longest fit
    served_vectors = np.concatenate([served.texts(CLIP, *texts[i : i + 8]) for i in range(0, len(texts), 8)])
    assert served_vectors.shape == (len(texts), 16) and served_vectors.dtype == np.float32
    diffs = np.array(
        [
            np.abs(unit(got) - unit(pytorch(text))).max()
            for text, got in zip(texts, served_vectors, strict=True)
        ]
    )
    worst = int(diffs.argmax())
    print(f"\n{len(texts)} texts through EmbedText vs PyTorch: normalised max-abs {diffs.max():.2e}")
    assert diffs.max() <= 1e-6, f"{texts[worst][:80]!r}: {diffs[worst]:.2e} from PyTorch"


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


def texts_run(served: Served) -> float:
    """Texts that went through the text graph's `session.run` (the batch-size histogram's sum)."""
    return served.metric("embedder_batch_size_sum", model=CLIP, modality="text")


def text_calls_ended(served: Served) -> dict[str, float]:
    codes = ("OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "INTERNAL")
    return {
        code: served.metric("embedder_requests_total", model=CLIP, modality="text", code=code)
        for code in codes
    }


def test_an_expired_deadline_never_reaches_the_text_graph(serve: object) -> None:
    """256 texts of 77 tokens take far longer to tokenize than a 1 ms deadline. The client ends the
    call DEADLINE_EXCEEDED by itself whatever the server does; what the server must do is drop
    the texts before `session.run`, and count the call as expired, not served."""
    roomy = serve()  # type: ignore[operator]  # the default limits: 256 texts a request
    roomy.texts(CLIP, "load the text graph first")
    long_texts = [f"{i} " + "many words " * 60 for i in range(256)]
    before_run, before = texts_run(roomy), text_calls_ended(roomy)

    def handled() -> float:
        return sum(text_calls_ended(roomy).values()) - sum(before.values())

    sent = 0
    for _round in range(6):  # a call may die in transit, before any handler: retry a few rounds
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as caught:
                roomy.stub.EmbedText(pb.EmbedTextRequest(model=CLIP, texts=long_texts), timeout=0.001)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            sent += 1
        if wait_until(lambda: handled() > 0, 2.0):
            break
    # Let the server finish what it received: the count stops moving once every handler returned.
    settled = -1.0
    while (now := handled()) != settled:
        settled = now
        time.sleep(0.5)
    ended = {code: n - before[code] for code, n in text_calls_ended(roomy).items() if n != before[code]}
    print(f"\n{sent} EmbedText calls with a 1 ms deadline: the server handled {settled:.0f}, ending {ended}")
    assert settled >= 1, "no call reached the handler: nothing was tested"
    assert set(ended) <= {"DEADLINE_EXCEEDED", "CANCELLED"}, ended
    assert texts_run(roomy) == before_run, "texts of an expired call went through session.run"
    assert roomy.texts(CLIP, "still serving").shape == (1, 16)
    assert texts_run(roomy) == before_run + 1  # and the count does move when a text runs


def test_a_cancelled_text_call_leaves_the_queue(serve: object) -> None:
    """A call cancelled once its texts are queued: the texts not yet run never run."""
    served = serve(max_text_batch_size=1, max_batch_delay_ms=0)  # type: ignore[operator]
    served.texts(CLIP, "load the text graph first")
    texts = [f"{i} " + "many words " * 60 for i in range(256)]
    before = texts_run(served)
    call = served.stub.EmbedText.future(pb.EmbedTextRequest(model=CLIP, texts=texts), timeout=120.0)
    queued = wait_until(lambda: served.server.engine.queue_depths().get((CLIP, "text"), 0) > 0, 60.0, 0.001)
    assert queued, "the texts never queued"
    call.cancel()
    assert call.cancelled() or call.code() == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: served.server.engine.queue_depths()[(CLIP, "text")] == 0, 5.0)
    ran = texts_run(served) - before
    print(f"\ncancelled a 256-text call once queued: {ran:.0f} of its texts had run, queue back to 0")
    assert ran < len(texts), "every text ran: the cancellation dropped nothing"
    time.sleep(0.5)  # nothing left behind runs later either
    assert texts_run(served) - before == ran
