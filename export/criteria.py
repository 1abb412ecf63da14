"""What the gate holds a graph to, shared by the gate (export/parity.py) and the int8 variant
(export/quantize.py): the criteria, a per-image result, and the reference's type. Its own module
so that both import it and neither imports the other's gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

TOLERANCE = 1e-6
INT8_MIN_COSINE = 0.995
INT8_BATCH_SIZES = (2, 3, 5, 8, 16)

Reference = Callable[[torch.Tensor, np.ndarray], np.ndarray]  # (HF pixels, our pixels) -> vector


@dataclass
class ImageResult:
    name: str
    mode: str
    format: str
    size: tuple[int, int]
    pixel_max_abs: float
    raw_max_abs: float
    relative_error: float
    cosine: float
    normalized_max_abs: float
    hf_input_data_format: str = "inferred"
    hf_default_behaviour: str = ""
    passed: bool = False


@dataclass(frozen=True)
class Criterion:
    """What an image must reach. Pixels are always bit-identical; the embedding bar differs:
    fp32 graphs against PyTorch at 1e-6, quantised graphs against their fp32 graph by cosine."""

    description: str
    reference: str
    max_normalized_abs: float | None = TOLERANCE
    min_cosine: float | None = None
    # A row in a batch against the same row alone: fp32, the whole set as one batch within 1e-6
    # (normalised); int8, bit-identical (raw max-abs 0) in that batch and in shuffled batches of
    # `batch_sizes`, as the server batches an int8 model like any other.
    batch_exact: bool = False
    batch_sizes: tuple[int, ...] = ()

    def passes(self, result: ImageResult) -> bool:
        ok = result.pixel_max_abs == 0.0
        if self.max_normalized_abs is not None:
            ok = ok and result.normalized_max_abs <= self.max_normalized_abs
        if self.min_cosine is not None:
            ok = ok and result.cosine >= self.min_cosine
        return ok


FP32 = Criterion(
    "pixels bit-identical; max-abs of L2-normalised embeddings <= 1e-6", "PyTorch (HF processor + model)"
)
INT8 = Criterion(
    f"pixels bit-identical; cosine >= {INT8_MIN_COSINE} to the fp32 graph; every row of a batch "
    f"bit-identical to the row alone (the whole set and batches of {', '.join(map(str, INT8_BATCH_SIZES))})",
    "fp32 ONNX graph on the same pixels",
    max_normalized_abs=None,
    min_cosine=INT8_MIN_COSINE,
    batch_exact=True,
    batch_sizes=INT8_BATCH_SIZES,
)
