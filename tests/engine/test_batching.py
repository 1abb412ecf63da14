"""Dynamic batching through a real server: batched == one-at-a-time, order, mixed bursts,
a bad image failing only its own request."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import EmbedderClient
from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import load_spec
from export.images import parity_images

IMAGES = parity_images(include_huge=False)
BAD = b"GIF89a this is not really a gif"


class Offline:
    """The same model computed one image per session.run, outside the server."""

    def __init__(self, model_dir: Path) -> None:
        self.spec = load_spec(model_dir / "model.json")
        self.pre = Preprocessor(self.spec.preprocessing)
        self.session = open_session(model_dir / self.spec.onnx_file, 1)

    def __call__(self, data: bytes) -> np.ndarray:
        return run(self.session, self.pre.from_bytes(data)[None])[0]


@pytest.fixture
def server(models_root: Path):
    settings = Settings(
        address="127.0.0.1:0",
        models_dir=models_root,
        preload=True,
        max_batch_size=16,
        max_batch_delay_ms=25.0,
    )
    server = EmbedderServer(settings)
    port = server.start()
    yield server, f"127.0.0.1:{port}"
    server.stop(0)


def _batch_stats(server: EmbedderServer, model: str) -> tuple[float, float]:
    registry = server.telemetry.registry
    count = (
        registry.get_sample_value("embedder_batch_size_count", {"model": model, "modality": "image"}) or 0.0
    )
    total = registry.get_sample_value("embedder_batch_size_sum", {"model": model, "modality": "image"}) or 0.0
    return count, total


def test_concurrent_singles_are_batched_and_equal_one_at_a_time(server, models_root: Path) -> None:
    srv, address = server
    offline = Offline(models_root / "tiny-clip")
    images = [item.data for item in IMAGES[:24]]
    barrier = threading.Barrier(len(images))
    with EmbedderClient(address) as client:

        def one(data: bytes) -> np.ndarray:
            barrier.wait()
            return client.embed("tiny-clip", [data]).embeddings[0]

        with ThreadPoolExecutor(len(images)) as pool:
            served = list(pool.map(one, images))
    count, total = _batch_stats(srv, "tiny-clip")
    assert total > count, f"no batch held more than one image ({count} runs, {total} images)"
    for data, vector in zip(images, served):
        assert np.abs(vector - offline(data)).max() <= 1e-6


def test_burst_of_mixed_models_and_sizes_returns_correct_vectors(server, models_root: Path) -> None:
    _, address = server
    offline = {name: Offline(models_root / name) for name in ("tiny-clip", "tiny-dinov2")}
    rng = random.Random(7)
    jobs = [(rng.choice(list(offline)), rng.sample(IMAGES, rng.randint(1, 5))) for _ in range(40)]
    with EmbedderClient(address) as client, ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda job: client.embed(job[0], [i.data for i in job[1]]), jobs))
    for (model, items), result in zip(jobs, results):
        assert result.model.name == model
        assert result.embeddings.shape == (len(items), offline[model].spec.embedding_dim)
        for item, vector in zip(items, result.embeddings):
            assert np.abs(vector - offline[model](item.data)).max() <= 1e-6, (model, item.name)


def test_bad_image_fails_only_its_own_request(server, models_root: Path) -> None:
    _, address = server
    offline = Offline(models_root / "tiny-dinov2")
    good = [item.data for item in IMAGES[:10]]
    requests = [[g] for g in good] + [[good[0], BAD, good[1]], [BAD]]
    barrier = threading.Barrier(len(requests))
    with EmbedderClient(address) as client:

        def send(images: list[bytes]):
            barrier.wait()
            try:
                return client.embed("tiny-dinov2", images)
            except grpc.RpcError as exc:
                return exc

        with ThreadPoolExecutor(len(requests)) as pool:
            outcomes = list(pool.map(send, requests))
    for images, outcome in zip(requests, outcomes):
        if BAD in images:
            assert isinstance(outcome, grpc.RpcError)
            assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"image {images.index(BAD)}" in outcome.details()
        else:
            assert not isinstance(outcome, grpc.RpcError), outcome
            assert np.abs(outcome.embeddings[0] - offline(images[0])).max() <= 1e-6
