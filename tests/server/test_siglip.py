"""SigLIP served end to end (issue 24): the tiny export behind a real server, gRPC Embed and
EmbedText and HTTP /v1/embeddings, against PyTorch written here from the model's public API
(transformers' tokenizer on the lowercased text, padded to 64, `get_text_features(input_ids)`;
the slow processor and `get_image_features`), with none of the exporter's code on the way."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel

from embedder.client import build_request, to_numpy
from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from export.architectures import architecture
from export.families import save_random_init
from tests.http.conftest import data_uri, embeddings
from tests.support.images import photo_jpeg
from tests.support.inprocess import Served, serving
from tests.support.models import make_models_dir

SIGLIP = "tiny-siglip"
TOLERANCE = 1e-6  # the project's promise, restated
TEXTS = [
    "a photo of a cat",
    "",
    "A DOG ON THE BEACH",
    "ΟΔΥΣΣΕΥΣ",  # final sigma: Python's lowercasing
    "東京の夜景 and 🐕",
    "word " * 100,  # over 64 tokens: cut, the end token kept
]


@pytest.fixture(scope="module")
def served(tiny_siglip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = make_models_dir(tmp_path_factory.mktemp("siglip-models"), tiny_siglip_dir)
    with serving(models, http_address="127.0.0.1:0", preload=True) as served:
        yield served


@pytest.fixture(scope="module")
def pytorch(tiny_siglip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, object]:
    """(tokenizer, processor, model) of the checkpoint the export was made from, rebuilt from its
    recorded provenance (seeded random-init)."""
    provenance = load_spec(tiny_siglip_dir / SPEC_FILE).provenance
    assert provenance is not None and provenance.seed is not None
    checkpoint = tmp_path_factory.mktemp("tiny-siglip-checkpoint")
    save_random_init(architecture(provenance.source), provenance.seed, checkpoint)
    return (
        AutoTokenizer.from_pretrained(checkpoint),
        SiglipImageProcessor.from_pretrained(checkpoint),
        SiglipModel.from_pretrained(checkpoint).eval(),
    )


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def torch_texts(pytorch: tuple[object, object, object], texts: list[str]) -> np.ndarray:
    tokenizer, _, model = pytorch
    ids = tokenizer(  # type: ignore[operator]
        [t.lower() for t in texts], padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        return model.get_text_features(input_ids=ids).numpy()  # type: ignore[attr-defined, no-any-return]


def torch_images(pytorch: tuple[object, object, object], images: list[bytes]) -> np.ndarray:
    _, processor, model = pytorch
    pils = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    pixels = processor(images=pils, return_tensors="pt")["pixel_values"]  # type: ignore[operator]
    with torch.no_grad():
        return model.get_image_features(pixel_values=pixels).numpy()  # type: ignore[attr-defined, no-any-return]


def test_embed_text_is_pytorchs(served: Served, pytorch: tuple[object, object, object]) -> None:
    expected = unit(torch_texts(pytorch, TEXTS))
    batched = served.texts(SIGLIP, *TEXTS, normalize=True)
    singles = np.concatenate([served.texts(SIGLIP, text, normalize=True) for text in TEXTS])
    assert batched.shape == expected.shape == (len(TEXTS), 32)
    assert np.abs(batched - expected).max() <= TOLERANCE
    assert np.abs(singles - expected).max() <= TOLERANCE


def test_embed_images_is_pytorchs(served: Served, pytorch: tuple[object, object, object]) -> None:
    jpegs = [photo_jpeg(300 + 40 * seed, 200, seed) for seed in range(3)]  # not square: no aspect kept
    got = to_numpy(served.call(build_request(SIGLIP, jpegs, normalize=True))).embeddings
    assert got.shape == (3, 32)
    assert np.abs(got - unit(torch_images(pytorch, jpegs))).max() <= TOLERANCE


def test_http_embeddings_equal_grpc_bitwise(served: Served) -> None:
    jpeg = photo_jpeg(320, 240, 5)
    answer = embeddings(served, {"model": SIGLIP, "input": [TEXTS[0], data_uri(jpeg, "jpeg"), TEXTS[3]]})
    assert answer.status == 200, answer.body
    got = np.array([item["embedding"] for item in answer.json()["data"]], dtype=np.float32)
    texts = served.texts(SIGLIP, TEXTS[0], TEXTS[3], normalize=True)
    image = to_numpy(served.call(build_request(SIGLIP, [jpeg], normalize=True))).embeddings
    assert got.tobytes() == np.stack([texts[0], image[0], texts[1]]).tobytes()


def test_list_models_shows_both_modalities_self_checked(served: Served) -> None:
    status = served.models()[SIGLIP]
    assert (status.info.family, status.info.pooling) == ("siglip", "head")
    assert list(status.info.modalities) == ["image", "text"]
    assert status.info.parity_verified and status.info.text_parity_verified
    assert status.state == status.text.state == pb.MODEL_STATE_SERVING
    assert status.self_check.state == status.text.self_check.state == "passed"
    assert status.text.self_check.inputs >= 4


def test_external_data_files_are_part_of_the_graph(tiny_siglip_dir: Path, tmp_path: Path) -> None:
    """The tiny export keeps its weights in .onnx.data files (--external-data, as graphs over 2 GB
    must); model.json names each with its sha256, and a data file altered or missing makes that
    graph alone UNAVAILABLE with the reason, the other one serving."""
    spec = load_spec(tiny_siglip_dir / SPEC_FILE)
    assert spec.onnx_data is not None and spec.text is not None and spec.text.onnx_data is not None
    assert (spec.onnx_data.file, spec.text.onnx_data.file) == ("model.onnx.data", "text.onnx.data")
    models = make_models_dir(tmp_path / "models", tiny_siglip_dir)
    text_data = models / SIGLIP / "text.onnx.data"
    altered = bytearray(text_data.read_bytes())
    altered[len(altered) // 2] ^= 1
    text_data.write_bytes(bytes(altered))
    with serving(models) as served:
        error = served.error(pb.EmbedTextRequest(model=SIGLIP, texts=["a photo of a cat"]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "text.onnx.data sha256" in (
            error.details() or ""
        )
        assert served.vectors(photo_jpeg(64, 48, 1), model=SIGLIP).shape == (1, 32)  # the image graph serves
        status = served.models()[SIGLIP]
        assert status.text.state == pb.MODEL_STATE_UNAVAILABLE and "text.onnx.data" in status.text.error
    (models / SIGLIP / "model.onnx.data").unlink()
    with serving(models) as served:
        status = served.models()[SIGLIP]
        assert status.state == pb.MODEL_STATE_UNAVAILABLE
        assert "graph data file missing" in status.error and "model.onnx.data" in status.error
