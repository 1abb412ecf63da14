"""The metrics docs/operations.md lists that no other test reads: the `model="unknown"` label that
keeps the label set bounded, `embedder_models_resident`, `embedder_batch_seconds` and
`embedder_model_load_seconds`, each checked against what the server did or reports itself."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from embedder.v1 import embedder_pb2 as pb
from tests.support.images import encode, picture
from tests.support.inprocess import Served, serving
from tests.support.models import CLIP, DINO

JPEG = encode(picture(64, 48, 9), "JPEG")


def label_values(served: Served, label: str) -> set[str]:
    """Every value `label` takes in any sample of the server's registry."""
    return {
        sample.labels[label]
        for family in served.server.telemetry.registry.collect()
        for sample in family.samples
        if label in sample.labels
    }


def loaded_graphs(served: Served) -> int:
    """Graphs ListModels reports loaded (a CLIP model's text graph counts on its own)."""
    return sum(
        int(status.loaded) + int(status.HasField("text") and status.text.loaded)
        for status in served.models().values()
    )


def test_unknown_models_and_unparsed_requests_count_as_model_unknown(tiny_models: Path) -> None:
    with serving(tiny_models) as served:
        served.vectors(JPEG, model=CLIP)
        for name in ("no-such-model", "another/one", "x" * 300):
            assert served.error(pb.EmbedRequest(model=name, images=[pb.Image(data=JPEG)])).code() == (
                grpc.StatusCode.NOT_FOUND
            )
        error = served.error(pb.EmbedTextRequest(model="nor-this", texts=["a"]))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        raw = served.channel.unary_unary(
            "/embedder.v1.Embedder/Embed", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\x0a\x02\xff\xfe", timeout=30)  # model: invalid UTF-8, so the request does not parse
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        unknown = {"model": "unknown"}
        assert served.metric("embedder_requests_total", **unknown, modality="image", code="NOT_FOUND") == 3
        assert served.metric("embedder_requests_total", **unknown, modality="text", code="NOT_FOUND") == 1
        assert served.metric("embedder_requests_total", **unknown, code="INVALID_ARGUMENT") == 1
        assert served.metric("embedder_images_total", **unknown) == 3  # counted, under the bounded label
        # Whatever callers named, the label holds only the served models' names and "unknown".
        assert label_values(served, "model") == {CLIP, "unknown"}


def test_models_resident_follows_loads_and_evictions(tiny_models: Path) -> None:
    with serving(tiny_models, max_loaded=2) as served:
        steps = []

        def record() -> None:
            steps.append((served.metric("embedder_models_resident"), loaded_graphs(served)))

        record()
        served.vectors(JPEG, model=CLIP)
        record()
        served.texts(CLIP, "a dog")
        record()
        served.vectors(JPEG, model=DINO)  # a third graph over max_loaded=2: the LRU one goes
        record()
        assert steps == [(0, 0), (1, 1), (2, 2), (2, 2)], steps
        assert served.metric("embedder_evictions_total") == 1
        assert served.metric("embedder_evictions_total", model=CLIP, modality="image") == 1
        assert not served.models()[CLIP].loaded and served.models()[DINO].loaded


def test_batch_seconds_times_each_run_within_its_request(tiny_models: Path) -> None:
    """One histogram observation per `session.run` (as many as `embedder_batch_size` counts), and a
    run's time lies inside its call's: over serial calls, the sum of run times is at most the sum
    of OK call times, measured by the same server."""
    with serving(tiny_models) as served:
        served.vectors(JPEG, model=CLIP)
        served.texts(CLIP, "warm")

        def totals(modality: str) -> tuple[float, float, float, float]:
            labels = {"model": CLIP, "modality": modality}
            return (
                served.metric("embedder_batch_seconds_count", **labels),
                served.metric("embedder_batch_size_count", **labels),
                served.metric("embedder_batch_seconds_sum", **labels),
                served.metric("embedder_request_seconds_sum", **labels),
            )

        image_before, text_before = totals("image"), totals("text")
        for seed in range(5):
            served.vectors(encode(picture(64, 48, seed), "JPEG"), model=CLIP)
            served.texts(CLIP, f"text {seed}", f"another text {seed}")
        for before, after in ((image_before, totals("image")), (text_before, totals("text"))):
            runs, batches, run_s, call_s = (a - b for a, b in zip(after, before, strict=True))
            assert runs == batches == 5, (runs, batches)
            assert 0 < run_s <= call_s, (run_s, call_s)


def test_model_load_seconds_is_the_last_load_of_each_graph(tiny_models: Path) -> None:
    with serving(tiny_models, max_loaded=1) as served:
        assert served.metric("embedder_model_load_seconds") == 0

        def first_call(call: object) -> float:
            started = time.perf_counter()
            call()  # type: ignore[operator]
            return time.perf_counter() - started

        image_call = first_call(lambda: served.vectors(JPEG, model=DINO))
        image_gauge = served.metric("embedder_model_load_seconds", model=DINO, modality="image")
        # The load ran inside this first call: it took longer than the load alone.
        assert 0 < image_gauge < image_call, (image_gauge, image_call)
        assert served.models()[DINO].load_seconds == pytest.approx(image_gauge, rel=1e-9)

        text_call = first_call(lambda: served.texts(CLIP, "a dog"))  # evicts DINO (max_loaded=1)
        text_gauge = served.metric("embedder_model_load_seconds", model=CLIP, modality="text")
        assert 0 < text_gauge < text_call, (text_gauge, text_call)
        assert served.models()[CLIP].text.load_seconds == pytest.approx(text_gauge, rel=1e-9)

        # DINO loads again: the gauge is that load's time, and there were two loads.
        served.vectors(JPEG, model=DINO)
        again = served.metric("embedder_model_load_seconds", model=DINO, modality="image")
        assert served.loads(DINO) == 2
        assert served.models()[DINO].load_seconds == pytest.approx(again, rel=1e-9)
