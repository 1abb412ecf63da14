"""int8 variants are served batched like fp32 models: their rows do not depend on their
batch-mates (per-token scales, export/quantize.py), so a vector is the same whether its image ran
alone, in one request with others, or batched with other callers' images."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedder.client import build_request, to_numpy
from embedder.spec import SPEC_FILE, load_spec
from export.images import parity_images
from tests.conftest import export_or_fail
from tests.support.inprocess import Served, serving

FAMILIES = {"tiny-clip-int8": "clip", "tiny-dinov2-int8": "dinov2"}


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny architectures exported with --quantize int8 into one models dir."""
    root = tmp_path_factory.mktemp("int8-models")
    for name, family in FAMILIES.items():
        export_or_fail(
            family,
            name.removesuffix("-int8"),
            root / name,
            "--random-init",
            "--quantize",
            "int8",
            "--no-huge",
        )
    return root


def batches(served: Served, name: str) -> tuple[float, float]:
    """(session.run calls, images run) for `name` so far."""
    labels = {"model": name, "modality": "image"}
    return served.metric("embedder_batch_size_count", **labels), served.metric(
        "embedder_batch_size_sum", **labels
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_int8_images_are_batched_and_a_row_is_the_same_alone_or_in_a_batch(
    int8_models: Path, name: str
) -> None:
    assert load_spec(int8_models / name / SPEC_FILE).batch_invariant
    images = [item.data for item in parity_images(include_huge=False)[:12]]
    with serving(int8_models, preload=True, max_batch_delay_ms=50.0) as served:
        alone = np.stack([served.vectors(data, model=name)[0] for data in images])
        runs, ran = batches(served, name)
        response = served.call(build_request(name, images[:8]))
        together = to_numpy(response).embeddings
        after_runs, after_ran = batches(served, name)
        assert after_ran - ran == 8 and after_runs - runs < 8  # one request of 8: not 8 runs of one
        with ThreadPoolExecutor(len(images)) as pool:
            callers = np.stack(list(pool.map(lambda data: served.vectors(data, model=name)[0], images)))
        assert np.array_equal(callers, alone)
    assert np.array_equal(together, alone[:8])
    assert response.model.batch_invariant and response.model.quantization
