"""POST /v1/embeddings through the official `openai` SDK: texts, images as data URIs, both mixed,
float and base64; the vectors are the gRPC front end's, bit for bit, for the same inputs; and
GET /v1/models, the health probes, /openapi.json and /docs."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from embedder.client import build_request, to_numpy
from embedder.v1 import embedder_pb2 as pb
from tests.http.conftest import Serve, data_uri, embeddings, openai_client, request
from tests.support.images import encode, photo_jpeg, picture
from tests.support.inprocess import Served
from tests.support.models import CLIP, DINO

TEXTS = ["a photo of a cat", "a red bicycle leaning on a wall", "", "ünïcödé and emoji 🚲"]


def grpc_images(served: Served, images: list[bytes], model: str = CLIP, normalize: bool = True) -> np.ndarray:
    return to_numpy(served.call(build_request(model, images, normalize=normalize))).embeddings


def grpc_texts(served: Served, texts: list[str], normalize: bool = True) -> np.ndarray:
    return to_numpy(served.call(pb.EmbedTextRequest(model=CLIP, texts=texts, normalize=normalize))).embeddings


def sdk_vectors(response: object) -> np.ndarray:
    data = response.data
    assert [item.index for item in data] == list(range(len(data)))
    return np.array([item.embedding for item in data], dtype=np.float32)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [photo_jpeg(96 + 16 * seed, 80, seed) for seed in range(3)]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_texts_through_the_sdk_equal_grpc_bitwise(http_server: Served, encoding: str) -> None:
    response = openai_client(http_server).embeddings.create(model=CLIP, input=TEXTS, encoding_format=encoding)
    expected = grpc_texts(http_server, TEXTS)
    if encoding == "base64":  # the SDK hands back the string it was asked for
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])
    else:
        got = sdk_vectors(response)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(TEXTS), 16)
    assert got.tobytes() == expected.tobytes()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    assert response.model == CLIP and response.object == "list"


def test_sdk_default_request_decodes_base64_as_the_server_sent_it(http_server: Served) -> None:
    """The SDK asks for base64 when no format is given and decodes it itself (numpy, little-endian
    float32): what it returns must be gRPC's vectors exactly."""
    response = openai_client(http_server).embeddings.create(model=CLIP, input=TEXTS[:2])
    assert sdk_vectors(response).tobytes() == grpc_texts(http_server, TEXTS[:2]).tobytes()


def test_images_as_data_uris_equal_grpc_bitwise(http_server: Served, jpegs: list[bytes]) -> None:
    client = openai_client(http_server)
    for model in (CLIP, DINO):
        response = client.embeddings.create(
            model=model, input=[data_uri(j, "jpeg") for j in jpegs], encoding_format="float"
        )
        assert sdk_vectors(response).tobytes() == grpc_images(http_server, jpegs, model).tobytes()


def test_normalize_false_gives_the_raw_vectors(http_server: Served, jpegs: list[bytes]) -> None:
    raw = embeddings(http_server, {"model": CLIP, "input": [data_uri(jpegs[0])], "normalize": False})
    assert raw.status == 200, raw.body
    got = np.array(raw.json()["data"][0]["embedding"], np.float32)
    assert got.tobytes() == grpc_images(http_server, jpegs[:1], normalize=False)[0].tobytes()
    assert abs(float(np.linalg.norm(got)) - 1.0) > 1e-3, "raw CLIP vectors are not unit length"
    texts = embeddings(http_server, {"model": CLIP, "input": TEXTS[:1], "normalize": False})
    got_text = np.array(texts.json()["data"][0]["embedding"], np.float32)
    assert got_text.tobytes() == grpc_texts(http_server, TEXTS[:1], normalize=False)[0].tobytes()


def test_mixed_texts_and_images_keep_their_order(http_server: Served, jpegs: list[bytes]) -> None:
    mixed = [TEXTS[0], data_uri(jpegs[0], "jpeg"), data_uri(jpegs[1], "jpeg"), TEXTS[1], data_uri(jpegs[2])]
    response = openai_client(http_server).embeddings.create(model=CLIP, input=mixed, encoding_format="float")
    got = sdk_vectors(response)
    images, texts = grpc_images(http_server, jpegs), grpc_texts(http_server, TEXTS[:2])
    expected = np.stack([texts[0], images[0], images[1], texts[1], images[2]])
    assert got.tobytes() == expected.tobytes()


def test_modality_forces_one_reading(http_server: Served, jpegs: list[bytes]) -> None:
    uri = data_uri(encode(picture(8, 8, 1), "PNG"))  # short: under max_text_chars as a text
    as_text = embeddings(http_server, {"model": CLIP, "input": [uri], "modality": "text"})
    assert as_text.status == 200, as_text.body
    got = np.array(as_text.json()["data"][0]["embedding"], np.float32)
    assert got.tobytes() == grpc_texts(http_server, [uri])[0].tobytes()  # the URI's characters, as text
    as_image = embeddings(http_server, {"model": CLIP, "input": ["a cat"], "modality": "image"})
    assert as_image.status == 400 and "input[0]: an image must be a data URI" in as_image.message


def test_usage_counts_the_tokenizers_ids_and_no_image_tokens(http_server: Served, jpegs: list[bytes]) -> None:
    tokenizer = http_server.server.engine.cache.get(
        http_server.server.repository.entries[CLIP], "text"
    ).tokenizer
    assert tokenizer is not None
    texts = ["a cat", "a photo of a red bicycle " * 10]  # the second is cut at 77 tokens
    counted = sum(len(ids) for ids in tokenizer.encode(texts))
    assert 2 < counted <= 2 * 77
    response = openai_client(http_server).embeddings.create(model=CLIP, input=[*texts, data_uri(jpegs[0])])
    assert response.usage.prompt_tokens == response.usage.total_tokens == counted
    images_only = openai_client(http_server).embeddings.create(model=DINO, input=data_uri(jpegs[0]))
    assert images_only.usage.prompt_tokens == 0


def test_provenance_extension_matches_grpc_model_info(http_server: Served, jpegs: list[bytes]) -> None:
    answer = embeddings(http_server, {"model": CLIP, "input": ["a cat"]}, x_request_id="trace-42")
    assert answer.status == 200 and answer.headers["x-request-id"] == "trace-42"
    extension = answer.json()["embedder"]
    assert extension["request_id"] == "trace-42"
    info = MessageToDict(
        to_numpy(http_server.call(build_request(CLIP, jpegs[:1]))).model,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    for key in (
        "name",
        "dim",
        "onnx_sha256",
        "preprocessing_sha256",
        "text_onnx_sha256",
        "tokenizer_sha256",
        "weights",
    ):
        assert extension["model"][key] == info[key], key
    assert len(extension["model"]["onnx_sha256"]) == 64 and len(extension["model"]["tokenizer_sha256"]) == 64


def test_dimensions_must_be_the_models_own(http_server: Served) -> None:
    same = embeddings(http_server, {"model": CLIP, "input": "a cat", "dimensions": 16})
    assert same.status == 200, same.body
    other = embeddings(http_server, {"model": CLIP, "input": "a cat", "dimensions": 8})
    assert other.status == 400 and other.json()["error"]["param"] == "dimensions"
    assert "dimensions=8" in other.message and "dimension 16" in other.message and CLIP in other.message


def test_alias_and_user_are_accepted(http_server: Served) -> None:
    response = openai_client(http_server).embeddings.create(model=CLIP, input="a cat", user="someone")
    assert len(response.data[0].embedding) > 0


def test_models_lists_every_model_with_its_details(http_server: Served) -> None:
    models = openai_client(http_server).models.list()
    by_id = {m.id: m.model_dump() for m in models.data}
    assert set(by_id) == {CLIP, DINO}
    clip, dino = by_id[CLIP], by_id[DINO]
    assert clip["object"] == "model" and clip["dimension"] == 16 and dino["dimension"] == 32
    assert clip["modalities"] == ["image", "text"] and dino["modalities"] == ["image"]
    assert clip["family"] == "clip" and dino["family"] == "dinov2" and clip["precision"] == "fp32"
    grpc_states = {name: pb.ModelState.Name(s.state) for name, s in http_server.models().items()}
    for name, model in by_id.items():
        assert grpc_states[name] == "MODEL_STATE_" + model["state"].upper()
        assert model["info"]["onnx_sha256"] == http_server.models()[name].info.onnx_sha256
    assert set(clip["graphs"]) == {"image", "text"}


def test_health_live_and_ready(http_server: Served) -> None:
    live = request(http_server, "GET", "/health/live")
    assert live.status == 200 and live.json() == {"status": "live"}
    ready = request(http_server, "GET", "/health/ready")
    assert ready.status == 200 and ready.json()["status"] == "ready"
    assert set(ready.json()["models"]) == {CLIP, DINO}


def test_ready_only_when_every_preloaded_model_serves(serve: Serve, models_root: Path) -> None:
    """With --preload, a model that cannot load (its graph deleted) keeps /health/ready at 503,
    naming it; live stays 200, and the other model still answers."""
    (models_root / DINO / "model.onnx").unlink()
    served = serve(models_dir=models_root, preload=True, http_address="127.0.0.1:0")
    ready = request(served, "GET", "/health/ready")
    assert ready.status == 503 and ready.json()["status"] == "not ready"
    assert ready.json()["models"][DINO]["image"]["state"] == "unavailable"
    assert ready.json()["models"][DINO]["image"]["error"]
    assert request(served, "GET", "/health/live").status == 200
    assert embeddings(served, {"model": CLIP, "input": "a cat"}).status == 200


def test_openapi_and_docs_are_served(http_server: Served) -> None:
    spec = request(http_server, "GET", "/openapi.json")
    assert spec.status == 200
    paths = spec.json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/health/live", "/health/ready"} <= set(paths)
    body = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "input", "encoding_format", "dimensions", "normalize", "modality"} <= set(
        body["properties"]
    )
    docs = request(http_server, "GET", "/docs")
    assert docs.status == 200 and b"/openapi.json" in docs.body


def test_many_concurrent_sdk_calls_all_match(http_server: Served, jpegs: list[bytes]) -> None:
    expected = grpc_images(http_server, jpegs)
    client = openai_client(http_server)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            i = seed % len(jpegs)
            response = client.embeddings.create(
                model=CLIP, input=[data_uri(jpegs[i])], encoding_format="float"
            )
            results.append(sdk_vectors(response)[0].tobytes() == expected[i].tobytes())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert results == [True] * 24


def test_png_and_other_formats_in_data_uris(http_server: Served) -> None:
    image = picture(64, 48, 3)
    for fmt, subtype in (("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp")):
        data = encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        answer = embeddings(http_server, {"model": DINO, "input": [data_uri(data, subtype)]})
        assert answer.status == 200, (fmt, answer.body)
        got = np.array(answer.json()["data"][0]["embedding"], np.float32)
        assert got.tobytes() == grpc_images(http_server, [data], DINO)[0].tobytes(), fmt
