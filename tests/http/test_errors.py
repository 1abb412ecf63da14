"""Bad requests over HTTP: OpenAI's error envelope, the status of the error's kind, the same
words as the gRPC status message; never a 500, and the server keeps serving. The hostile image
corpus sent as data URIs gets exactly gRPC's answer for the same bytes."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import build_request, to_numpy
from tests.hardening.corpus import Case, corpus
from tests.http.conftest import Answer, Serve, data_uri, embeddings, openai_client, request
from tests.support.images import encode, photo_jpeg, picture
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO
from tests.support.polling import wait_until

PNG = encode(picture(48, 32, 2), "PNG")


def refused(answer: Answer, status: int, *fragments: str) -> str:
    assert answer.status == status, (answer.status, answer.body[:500])
    message = answer.message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert answer.headers["x-request-id"], "every answer names its request"
    return message


def test_malformed_and_wrongly_typed_bodies(http_server: Served) -> None:
    cases: list[tuple[bytes | dict[str, object], str]] = [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe\x00", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        ({"input": "a cat"}, "model must be a non-empty string, not null"),
        ({"model": 7, "input": "a cat"}, "model must be a non-empty string, not a number"),
        ({"model": CLIP}, "input must be a string or an array of strings, not null"),
        (
            {"model": CLIP, "input": {"text": "a"}},
            "input must be a string or an array of strings, not an object",
        ),
        ({"model": CLIP, "input": []}, "input is empty"),
        ({"model": CLIP, "input": ["a", None]}, "input[1] must be a string, not null"),
        ({"model": CLIP, "input": [101, 102]}, "token ids"),
        ({"model": CLIP, "input": [[101, 102]]}, "token ids"),
        (
            {"model": CLIP, "input": "a", "encoding_format": "int8"},
            "encoding_format must be 'float' or 'base64'",
        ),
        ({"model": CLIP, "input": "a", "dimensions": "16"}, "dimensions must be an integer"),
        ({"model": CLIP, "input": "a", "normalize": "yes"}, "normalize must be true or false"),
        ({"model": CLIP, "input": "a", "modality": "audio"}, "modality must be 'text' or 'image'"),
        ({"model": CLIP, "input": "a", "normalise": False}, "unknown field 'normalise'"),
    ]
    for body, fragment in cases:
        answer = embeddings(http_server, body)
        refused(answer, 400, fragment)
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_deeply_nested_json_is_a_clear_400(http_server: Served) -> None:
    deep = b'{"model": "tiny-clip", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused(embeddings(http_server, deep), 400, "nested too deeply")
    assert embeddings(http_server, {"model": CLIP, "input": "a cat"}).status == 200


def test_bad_data_uris_name_the_item(http_server: Served) -> None:
    good = data_uri(PNG)
    cases = [
        ("data:image/png;base64,@@@@", "input[1]: invalid base64"),
        ("data:text/plain;base64,aGVsbG8=", "input[1]: an image must be a data URI"),
        ("data:image/png,rawbytes", "input[1]: an image must be a data URI"),
        ("data:image/png;base64," + "aGVsbG8gd29ybGQ=", "image 1: not a supported image"),
    ]
    for item, fragment in cases:
        answer = embeddings(http_server, {"model": DINO, "input": [good, item]})
        message = refused(answer, 400, fragment)
        assert answer.json()["error"]["param"] in ("input", None), message


def test_image_errors_use_grpc_words_and_mixed_requests_place_them(http_server: Served) -> None:
    garbage = b"GIF89a not really"
    grpc_error = http_server.error(build_request(CLIP, [PNG, garbage]))
    assert grpc_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    answer = embeddings(http_server, {"model": CLIP, "input": [data_uri(PNG), data_uri(garbage, "gif")]})
    assert refused(answer, 400) == grpc_error.details()  # word for word
    mixed = embeddings(
        http_server, {"model": CLIP, "input": ["a cat", data_uri(PNG), "a dog", data_uri(garbage)]}
    )
    message = refused(mixed, 400, "input[3] (image 1):")
    assert grpc_error.details().split(": ", 1)[1] in message


def test_image_urls_are_never_fetched(http_server: Served) -> None:
    """A listener stands where the URL points: the server must refuse without connecting to it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png"
        for item in (url, url.replace("http", "HTTPS", 1)):
            for body in (
                {"model": CLIP, "input": [item]},
                {"model": CLIP, "input": [item], "modality": "image"},
            ):
                refused(
                    embeddings(http_server, body), 400, "input[0]: image URLs are not fetched", "data URI"
                )
        with pytest.raises(TimeoutError):
            listener.accept()


def test_unknown_model_is_404_listing_the_models(http_server: Served) -> None:
    answer = embeddings(http_server, {"model": "gpt-embeddings", "input": "a cat"})
    message = refused(answer, 404, "unknown model 'gpt-embeddings'", CLIP, DINO)
    assert http_server.error(build_request("gpt-embeddings", [PNG])).details() == message
    error = answer.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_text_to_an_image_only_model_uses_grpc_words(http_server: Served) -> None:
    answer = embeddings(http_server, {"model": DINO, "input": "a cat"})
    refused(answer, 400, f"model '{DINO}' has no text tower")


def test_limits_name_the_item_and_the_limit(serve: Serve) -> None:
    served = serve(
        http_address="127.0.0.1:0",
        max_images_per_request=2,
        max_image_bytes=4096,
        max_texts_per_request=2,
        max_text_chars=10,
    )
    refused(
        embeddings(served, {"model": DINO, "input": [data_uri(PNG)] * 3}),
        400,
        "3 images exceeds max_images_per_request=2",
    )
    big = photo_jpeg(640, 480, 1)
    assert len(big) > 4096
    refused(
        embeddings(served, {"model": DINO, "input": [data_uri(PNG), data_uri(big)]}),
        400,
        f"image 1: {len(big)} bytes exceeds max_image_bytes=4096",
    )
    refused(
        embeddings(served, {"model": CLIP, "input": ["a", "b", "c"]}),
        400,
        "3 texts exceeds max_texts_per_request=2",
    )
    refused(
        embeddings(served, {"model": CLIP, "input": ["a cat", "a very long text"]}),
        400,
        "text 1: 16 characters exceeds max_text_chars=10",
    )
    mixed = embeddings(served, {"model": CLIP, "input": [data_uri(PNG), "a cat", "a very long text"]})
    refused(mixed, 400, "input[2] (text 1): 16 characters exceeds max_text_chars=10")


def test_body_over_the_limit_is_413(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", http_max_body_bytes=64 * 1024)
    body = {"model": DINO, "input": [data_uri(photo_jpeg(512, 512, 3, quality=100))]}
    payload = json.dumps(body).encode()
    assert len(payload) > 64 * 1024
    answer = embeddings(served, payload)
    refused(answer, 413, "request body exceeds http_max_body_bytes=65536")
    assert answer.json()["error"]["code"] == "request_too_large"
    # Without a content-length (chunked), the count while reading stops it too.
    chunked = _chunked_post(served, payload, 64 * 1024)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    assert embeddings(served, {"model": DINO, "input": [data_uri(PNG)]}).status == 200


def _chunked_post(served: Served, payload: bytes, limit: int) -> bytes:
    """Sends `payload` chunked, stopping a little past `limit` (the rest would only meet a closed
    connection), and returns what the server answered."""
    port = served.server.http_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for start in range(0, limit + 8192, 8192):
            piece = payload[start : start + 8192]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_auth_tokens_apply_to_the_api_not_the_probes(serve: Serve) -> None:
    served = serve(http_address="127.0.0.1:0", auth_tokens="s3cret,other")
    body = {"model": CLIP, "input": "a cat"}
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic s3cret"},
        {"authorization": "Bearer "},
    ):
        answer = request(served, "POST", "/v1/embeddings", body, headers)
        refused(answer, 401, "missing or invalid bearer token")
        assert answer.json()["error"]["code"] == "invalid_api_key"
    refused(request(served, "GET", "/v1/models"), 401, "missing or invalid bearer token")
    assert request(served, "POST", "/v1/embeddings", body, {"authorization": "Bearer other"}).status == 200
    assert len(openai_client(served, api_key="s3cret").embeddings.create(model=CLIP, input="a cat").data) == 1
    assert len(openai_client(served, api_key="s3cret").models.list().data) == 2
    assert request(served, "GET", "/health/live").status == 200
    assert request(served, "GET", "/health/ready").status == 200


def test_overload_is_429_with_retry_after(serve: Serve) -> None:
    """Sixteen requests of four images each against room for four: every answer is 200 or 429,
    and the 429s say when to retry, in gRPC's words for RESOURCE_EXHAUSTED."""
    served = serve(http_address="127.0.0.1:0", max_queue_images=4, max_batch_size=1)
    body = {"model": CLIP, "input": [data_uri(photo_jpeg(640, 480, seed)) for seed in range(4)]}
    answers: list[Answer] = []
    for _round in range(5):
        threads = [
            threading.Thread(target=lambda: answers.append(embeddings(served, body))) for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        if any(a.status == 429 for a in answers):
            break
    statuses = Counter(a.status for a in answers)
    assert set(statuses) == {200, 429}, statuses
    for answer in answers:
        if answer.status == 429:
            refused(answer, 429, f"model '{CLIP}' is overloaded", "max_queue_images=4", "retry later")
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["type"] == "rate_limit_error"
    assert (
        served.metric("embedder_requests_total", frontend="http", code="RESOURCE_EXHAUSTED") == statuses[429]
    )


def test_model_that_cannot_load_is_503(serve: Serve, models_root: Path) -> None:
    (models_root / DINO / "model.onnx").write_bytes(b"not an onnx graph")
    served = serve(models_dir=models_root, http_address="127.0.0.1:0")
    answer = embeddings(served, {"model": DINO, "input": [data_uri(PNG)]})
    message = refused(answer, 503, DINO)
    assert answer.headers["retry-after"] == "1"
    assert http_server_error(served, DINO) == message  # the same words as gRPC's UNAVAILABLE
    assert embeddings(served, {"model": CLIP, "input": [data_uri(PNG)]}).status == 200


def http_server_error(served: Served, model: str) -> str:
    error = served.error(build_request(model, [PNG]))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    return str(error.details())


def test_deadline_passed_is_504(http_server: Served) -> None:
    big = photo_jpeg(2400, 1800, 4, quality=95)  # its base64 alone takes longer than 1 ms to read
    body = {"model": CLIP, "input": [data_uri(big)]}
    before = http_server.metric("embedder_batch_size_sum", model=CLIP)
    answer = embeddings(http_server, body, x_request_timeout="0.001")
    refused(answer, 504, "deadline")
    assert answer.json()["error"]["type"] == "server_error"
    assert http_server.metric("embedder_batch_size_sum", model=CLIP) == before, "expired work ran"
    assert embeddings(http_server, body, x_request_timeout="60").status == 200
    for bad in ("soon", "-1", "0", "nan"):
        refused(
            embeddings(http_server, body, x_request_timeout=bad),
            400,
            "X-Request-Timeout must be a positive number",
        )


def test_request_ids_in_and_out(http_server: Served) -> None:
    given = embeddings(http_server, {"model": CLIP, "input": "a"}, x_request_id="abc-123")
    assert given.headers["x-request-id"] == "abc-123"
    made = [embeddings(http_server, {"model": CLIP, "input": "a"}).headers["x-request-id"] for _ in range(2)]
    assert made[0] != made[1] and all(made)
    long = embeddings(http_server, {"model": "nope", "input": "a"}, x_request_id="x" * 500)
    assert long.headers["x-request-id"] == "x" * 128


def test_unknown_paths_and_methods_use_the_envelope(http_server: Served) -> None:
    assert request(http_server, "GET", "/v1/nothing").json()["error"]["message"] == "Not Found"
    wrong = request(http_server, "GET", "/v1/embeddings")
    assert wrong.status == 405 and wrong.json()["error"]["message"] == "Method Not Allowed"


def test_http_requests_are_counted_under_their_front_end(http_server: Served) -> None:
    def count(modality: str, code: str) -> float:
        return http_server.metric("embedder_requests_total", frontend="http", modality=modality, code=code)

    before = (count("text", "OK"), count("image", "OK"), count("image", "INVALID_ARGUMENT"))
    embeddings(http_server, {"model": CLIP, "input": ["a", "b"]})
    embeddings(http_server, {"model": CLIP, "input": ["a", data_uri(PNG)]})
    embeddings(http_server, {"model": CLIP, "input": [data_uri(b"junk")]})
    after = (count("text", "OK"), count("image", "OK"), count("image", "INVALID_ARGUMENT"))
    assert np.subtract(after, before).tolist() == [2, 1, 1]


# -- the hostile image corpus, as data URIs ------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_server(tiny_models: Path) -> Iterator[Served]:
    with serving(tiny_models, http_address="127.0.0.1:0") as served:  # default limits
        yield served


@pytest.mark.parametrize("case", corpus(), ids=lambda case: case.name)
def test_hostile_image_gets_grpcs_answer(corpus_server: Served, case: Case) -> None:
    answer = embeddings(corpus_server, {"model": CLIP, "input": [data_uri(case.data)], "normalize": False})
    try:
        expected = to_numpy(corpus_server.call(build_request(CLIP, [case.data]), timeout=120)).embeddings[0]
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert case.expect != "ok"
        assert refused(answer, 400) == exc.details(), case.name
    else:
        assert case.expect != "invalid"
        assert answer.status == 200, (case.name, answer.body[:300])
        got = np.array(answer.json()["data"][0]["embedding"], np.float32)
        assert got.tobytes() == expected.tobytes(), case.name
    still = embeddings(corpus_server, {"model": CLIP, "input": [data_uri(PNG)]})
    assert still.status == 200, "the server stopped serving"


def test_corpus_cases_expected_invalid_are_400(corpus_server: Served) -> None:
    invalid = [case for case in corpus() if case.expect == "invalid"]
    assert len(invalid) >= 10
    for case in invalid:
        message = refused(
            embeddings(corpus_server, {"model": CLIP, "input": [data_uri(case.data)]}), 400, "image 0: "
        )
        if case.reasons:
            assert any(reason in message for reason in case.reasons), (case.name, message)
    assert wait_until(lambda: corpus_server.server.engine.queue_depths().get((CLIP, "image"), 0) == 0, 5.0)
