"""Image bytes -> Embed over gRPC -> the vector PyTorch computes (the issue's end-to-end figure).

Each served vector must equal, bit for bit, the exported graph run directly in ONNX Runtime on our
preprocessing, and must equal the PyTorch model on the HF slow processor's pixels within 1e-6
max-abs after L2 normalisation. The PyTorch side is written here, with transformers called
directly, and holds its own tolerance: nothing comes from the export gate (export/parity.py), so
a fault shared by the gate and the server still shows.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, Dinov2Model

from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, load_spec
from export.architectures import architecture
from export.families import save_random_init
from export.images import ParityImage
from tests.support.inprocess import Served, serving
from tests.support.models import make_models_dir

TOLERANCE = 1e-6  # the project's promise: max-abs of the L2-normalised vectors (README, docs/models.md)


def pytorch_vectors(model_dir: Path, images: list[ParityImage], scratch: Path) -> np.ndarray:
    """The pipeline being replaced, for every image: PIL decode to RGB, the checkpoint's slow HF
    processor, the PyTorch model (CLIP's `get_image_features`; DINOv2's last hidden state, pooled
    as model.json says). The checkpoint is the export's: its seeded random-init weights, saved
    again from the provenance in model.json."""
    spec = load_spec(model_dir / SPEC_FILE)
    assert spec.provenance is not None and spec.provenance.weights == "random-init"
    assert spec.provenance.seed is not None
    save_random_init(architecture(spec.provenance.source), spec.provenance.seed, scratch)
    processor = AutoImageProcessor.from_pretrained(scratch, use_fast=False)
    if spec.family == "clip":
        clip = CLIPModel.from_pretrained(scratch).eval()

        def forward(pixels: torch.Tensor) -> torch.Tensor:
            return clip.get_image_features(pixel_values=pixels)
    else:
        dino = Dinov2Model.from_pretrained(scratch).eval()

        def forward(pixels: torch.Tensor) -> torch.Tensor:
            tokens = dino(pixel_values=pixels).last_hidden_state
            cls, mean = tokens[:, 0], tokens[:, 1:].mean(dim=1)
            return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[spec.pooling]

    rows = []
    for item in images:
        pil = Image.open(io.BytesIO(item.data)).convert("RGB")  # the pipeline's own decode
        # A PIL image is height x width x channels; said explicitly, HF cannot take a 1 or 3 px
        # high image for channels-first (docs/models.md).
        pixels = processor(images=pil, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        with torch.no_grad():
            rows.append(forward(pixels)[0].numpy())
    return np.stack(rows)


def unit(vector: np.ndarray) -> np.ndarray:
    vector = vector.astype(np.float64)
    return vector / np.linalg.norm(vector)


def ort_vectors(model_dir: Path, images: list[ParityImage], intra_op_threads: int) -> np.ndarray:
    """The exported graph run directly, one image at a time, on our preprocessing."""
    spec = load_spec(model_dir / SPEC_FILE)
    session = open_session(model_dir / spec.onnx_file, intra_op_threads)
    preprocessor = Preprocessor(spec.preprocessing)
    return np.stack([run(session, preprocessor.from_bytes(item.data)[None])[0] for item in images])


def normalized_diffs(served: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image max-abs difference of the L2-normalised vectors."""
    return np.array([np.abs(unit(s) - unit(r)).max() for s, r in zip(served, reference)])


def worst(diffs: np.ndarray, images: list[ParityImage]) -> str:
    order = np.argsort(diffs)[::-1][:5]
    return ", ".join(f"{images[i].name}={diffs[i]:.3e}" for i in order)


Reference = Callable[[Path], tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def references(
    tmp_path_factory: pytest.TempPathFactory, parity_set: list[ParityImage], tiny_server: Served
) -> Iterator[Reference]:
    """model dir -> (direct ORT vectors, PyTorch vectors) over the parity set, computed once."""
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def get(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        if model_dir not in cache:
            scratch = tmp_path_factory.mktemp("reference")
            threads = tiny_server.server.plan.intra_op  # the server's own session configuration
            cache[model_dir] = (
                ort_vectors(model_dir, parity_set, threads),
                pytorch_vectors(model_dir, parity_set, scratch),
            )
        return cache[model_dir]

    yield get


FAMILIES = ["tiny_clip_dir", "tiny_dinov2_dir"]
# Pillow's note when the reference side converts a palette PNG with byte transparency; expected.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")


@pytest.mark.parametrize("family_dir", FAMILIES)
def test_one_image_per_request_equals_ort_and_pytorch(
    request: pytest.FixtureRequest,
    family_dir: str,
    tiny_server: Served,
    references: Reference,
    parity_set: list[ParityImage],
) -> None:
    model_dir: Path = request.getfixturevalue(family_dir)
    name = load_spec(model_dir / SPEC_FILE).name
    direct, pytorch = references(model_dir)

    served = np.stack([tiny_server.embed(name, [item.data])[0] for item in parity_set])

    assert served.shape == direct.shape == pytorch.shape
    mismatched = [item.name for item, s, d in zip(parity_set, served, direct) if not np.array_equal(s, d)]
    assert not mismatched, f"served != direct ORT for {mismatched}"
    diffs = normalized_diffs(served, pytorch)
    assert diffs.max() <= TOLERANCE, f"{name}: over {TOLERANCE} vs PyTorch: {worst(diffs, parity_set)}"


@pytest.mark.parametrize("family_dir", FAMILIES)
def test_all_images_in_one_request_equal_ort_and_pytorch(
    request: pytest.FixtureRequest,
    family_dir: str,
    tiny_server: Served,
    references: Reference,
    parity_set: list[ParityImage],
) -> None:
    model_dir: Path = request.getfixturevalue(family_dir)
    name = load_spec(model_dir / SPEC_FILE).name
    direct, pytorch = references(model_dir)

    served = tiny_server.embed(name, [item.data for item in parity_set])

    assert served.shape == direct.shape
    # Batched rows run in one session.run with other images; the contract is the gate's: equal
    # to one-at-a-time within the tolerance after normalisation.
    batch_vs_single = normalized_diffs(served, direct)
    assert batch_vs_single.max() <= TOLERANCE, worst(batch_vs_single, parity_set)
    diffs = normalized_diffs(served, pytorch)
    assert diffs.max() <= TOLERANCE, f"{name}: over {TOLERANCE} vs PyTorch: {worst(diffs, parity_set)}"


def test_both_families_answer_from_one_server(
    tiny_server: Served, tiny_clip_dir: Path, tiny_dinov2_dir: Path, parity_set: list[ParityImage]
) -> None:
    image = [parity_set[0].data]
    clip_spec, dino_spec = (load_spec(d / SPEC_FILE) for d in (tiny_clip_dir, tiny_dinov2_dir))
    clip = tiny_server.client.embed(clip_spec.name, image)
    dino = tiny_server.client.embed(dino_spec.name, image)
    assert (clip.model.family, clip.embeddings.shape) == ("clip", (1, clip_spec.embedding_dim))
    assert (dino.model.family, dino.embeddings.shape) == ("dinov2", (1, dino_spec.embedding_dim))


@pytest.mark.slow
def test_full_size_models_equal_pytorch_end_to_end(
    tmp_path: Path,
    clip_b32_dir: Path,
    dinov2_small_dir: Path,
    parity_set: list[ParityImage],
) -> None:
    """The issue's figure: image bytes -> Embed -> vector == PyTorch reference within 1e-6."""
    models = make_models_dir(tmp_path / "models", clip_b32_dir, dinov2_small_dir)
    with serving(models) as served:
        for model_dir in (clip_b32_dir, dinov2_small_dir):
            spec = load_spec(model_dir / SPEC_FILE)
            pytorch = pytorch_vectors(model_dir, parity_set, tmp_path / f"scratch-{spec.name}")
            singles = np.stack([served.embed(spec.name, [item.data])[0] for item in parity_set])
            batch = served.embed(spec.name, [item.data for item in parity_set])
            single_diffs, batch_diffs = normalized_diffs(singles, pytorch), normalized_diffs(batch, pytorch)
            print(
                f"\n{spec.name}: {len(parity_set)} images, max-abs after L2 normalisation vs PyTorch: "
                f"one per request {single_diffs.max():.3e}, one request {batch_diffs.max():.3e}"
            )
            assert single_diffs.max() <= TOLERANCE, worst(single_diffs, parity_set)
            assert batch_diffs.max() <= TOLERANCE, worst(batch_diffs, parity_set)
