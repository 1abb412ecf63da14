"""The golden set an export leaves beside its graphs, for the server's self-check at load and
`embedder verify` (embedder/golden.py reads it).

Four of the gate's images (a camera-like JPEG, an RGBA PNG, a greyscale JPEG, a lossy WebP: the
decoders a pipeline feeds) and, for a model with a text tower, four of its texts, each with the vector the
gate's reference gave: PyTorch for an fp32 graph. An int8 graph is held to its fp32 graph by the
gate (cosine >= 0.995), so its golden vectors are the fp32 graph's and a deployment must reach
that cosine to them: its own vectors are not reproducible to 1e-6 on another CPU (other kernels
reorder the float steps, and a value at a rounding edge then quantises one step off). Four of each keeps the check at load within 0.5 s on 2 cores (measured:
docs/operations.md, "Verifying a deployment"; the format: docs/models.md, "The golden set").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedder.cpus import plan_threads
from embedder.golden import GoldenSet, write_golden
from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, Golden, file_sha256, load_spec, write_spec

from .criteria import INT8_MIN_COSINE, Reference
from .families import Loaded
from .images import ParityImage
from .parity import hf_pixels, torch_reference
from .parity_texts import parity_texts
from .text import hf_encode, text_hooks, torch_text_vector

GOLDEN_FILE = "golden.npz"
IMAGES = ("photo_640x480.jpg", "rgba_256x192.png", "gray_320x240.jpg", "photo_500x333_lossy.webp")
TEXT_CATEGORIES = ("captions", "accents_and_combining_marks", "cjk", "emoji")


def golden_images(images: list[ParityImage]) -> list[ParityImage]:
    chosen = [item for item in images if item.name in IMAGES]
    return chosen if len(chosen) == len(IMAGES) else images[: len(IMAGES)]


def golden_texts() -> list[str]:
    texts = parity_texts()
    return [next(t.text for t in texts if t.category == category) for category in TEXT_CATEGORIES]


def write_golden_set(
    model_dir: Path, loaded: Loaded, images: list[ParityImage], fp32_graph: Path | None = None
) -> Golden:
    """Writes golden.npz and model.json's `golden`. The references are PyTorch's vectors, or for a
    quantised variant (`fp32_graph`: the fp32 graph the gate held it to) that graph's vectors on
    the same pixels, with the gate's cosine as the rule."""
    spec = load_spec(model_dir / SPEC_FILE)
    chosen = golden_images(images)
    if fp32_graph is not None:
        session = open_session(fp32_graph, plan_threads().intra_op)
        pre = Preprocessor(spec.preprocessing)
        vectors = run(session, np.stack([pre.from_bytes(item.data) for item in chosen]))
    else:
        vectors = np.stack([_torch_image(loaded, torch_reference(loaded), item) for item in chosen])
    texts = golden_texts() if spec.text is not None else []
    text_vectors = np.zeros((0, spec.embedding_dim))
    if spec.text is not None:  # never a quantised variant's: --quantize covers the image graph
        tower = spec.text
        fast = text_hooks(loaded).tokenizer(loaded.source)
        tokenized = (hf_encode(fast, text, tower) for text in texts)
        text_vectors = np.stack([torch_text_vector(loaded, hf, tower.input_names) for hf in tokenized])
    path = model_dir / GOLDEN_FILE
    write_golden(
        path, GoldenSet([i.name for i in chosen], [i.data for i in chosen], vectors, texts, text_vectors)
    )
    golden = Golden(
        file=GOLDEN_FILE,
        sha256=file_sha256(path),
        images=len(chosen),
        texts=len(texts),
        min_cosine=INT8_MIN_COSINE if fp32_graph is not None else None,
    )
    write_spec(spec.model_copy(update={"golden": golden}), model_dir / SPEC_FILE)
    return golden


def _torch_image(loaded: Loaded, reference: Reference, item: ParityImage) -> np.ndarray:
    pixels, _, _ = hf_pixels(item, loaded.processor)
    return reference(pixels, np.zeros(0))
