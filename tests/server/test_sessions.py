"""Session lifecycle through the server: lazy load once, LRU and idle eviction, and a broken graph
that stays its own model's problem."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from embedder.spec import SPEC_FILE, file_sha256, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from export.images import ParityImage
from tests.support.models import make_models_dir

if TYPE_CHECKING:
    from tests.support.inprocess import Served

GARBAGE = b"this is not an onnx graph\x00" * 64


def name_of(model_dir: Path) -> str:
    return load_spec(model_dir / SPEC_FILE).name


@pytest.fixture(scope="module")
def image(parity_set: list[ParityImage]) -> bytes:
    return parity_set[0].data


@pytest.fixture(scope="module")
def expected(
    tiny_server: Served, tiny_clip_dir: Path, tiny_dinov2_dir: Path, image: bytes
) -> dict[str, np.ndarray]:
    """Each tiny model's vector for `image`, from a healthy server of its own."""
    return {name_of(d): tiny_server.embed(name_of(d), [image]) for d in (tiny_clip_dir, tiny_dinov2_dir)}


def test_concurrent_first_requests_load_a_cold_model_once(
    serve: Callable[..., Served],
    tiny_models: Path,
    tiny_clip_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    served = serve(tiny_models)
    model = name_of(tiny_clip_dir)
    assert served.loads(model) == 0
    threads, barrier = 16, threading.Barrier(16)
    results: list[np.ndarray | BaseException] = [RuntimeError("not run")] * threads

    def first_request(index: int) -> None:
        barrier.wait()
        try:
            results[index] = served.embed(model, [image])
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = exc

    workers = [threading.Thread(target=first_request, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    for result in results:
        np.testing.assert_array_equal(result, expected[model])
    assert served.loads(model) == 1
    assert sum(served.loads(name) for name in served.server.repository.entries) == 1  # the other stayed cold


def test_lru_evicts_and_reloads_with_identical_results(
    serve: Callable[..., Served],
    tiny_models: Path,
    tiny_clip_dir: Path,
    tiny_dinov2_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    served = serve(tiny_models, max_loaded=1)
    a, b = name_of(tiny_clip_dir), name_of(tiny_dinov2_dir)
    first = served.embed(a, [image])
    served.embed(b, [image])

    assert served.server.cache.resident() == [(b, "image")]
    models = served.models()
    assert (models[a].loaded, models[a].state) == (False, pb.MODEL_STATE_AVAILABLE)
    assert (models[b].loaded, models[b].state) == (True, pb.MODEL_STATE_SERVING)
    assert (served.health(a), served.health(b)) == ("NOT_SERVING", "SERVING")

    again = served.embed(a, [image])

    assert (served.loads(a), served.loads(b)) == (2, 1)
    evictions = [served.metric("embedder_evictions_total", model=m) for m in (a, b)]
    assert evictions == [1, 1]  # a for b, then b for a
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, expected[a])
    assert (served.health(a), served.health(b)) == ("SERVING", "NOT_SERVING")


def test_idle_model_is_evicted_then_still_serves(
    serve: Callable[..., Served],
    tiny_models: Path,
    tiny_clip_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    served = serve(tiny_models, idle_ttl_s=0.5)
    model = name_of(tiny_clip_dir)
    served.embed(model, [image])
    assert served.server.cache.resident() == [(model, "image")]

    deadline = time.monotonic() + 1.5
    while (model, "image") in served.server.cache.resident() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert served.server.cache.resident() == []
    assert served.health(model) == "NOT_SERVING"
    assert served.models()[model].state == pb.MODEL_STATE_AVAILABLE
    np.testing.assert_array_equal(served.embed(model, [image]), expected[model])
    assert served.loads(model) == 2


@pytest.fixture
def with_broken(tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> tuple[Path, Path]:
    """A models dir holding both tiny models and a copy of tiny-dinov2 named `broken`."""
    models = make_models_dir(tmp_path / "models", tiny_clip_dir, tiny_dinov2_dir, (tiny_dinov2_dir, "broken"))
    return models, models / "broken"


def unavailable(served: Served, model: str, image: bytes, *fragments: str) -> None:
    error = served.error(pb.EmbedRequest(model=model, images=[pb.Image(data=image)]))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())
    status = served.models()[model]
    assert status.state == pb.MODEL_STATE_UNAVAILABLE and not status.loaded
    assert all(f in status.error for f in fragments), status.error
    assert served.health(model) == "NOT_SERVING"


def others_serve(served: Served, image: bytes, expected: dict[str, np.ndarray]) -> None:
    for model, vector in expected.items():
        np.testing.assert_array_equal(served.embed(model, [image]), vector)
        assert served.health(model) == "SERVING"


def test_garbage_graph_with_the_old_sha_is_refused_then_retried_when_fixed(
    serve: Callable[..., Served],
    with_broken: tuple[Path, Path],
    tiny_dinov2_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    models, broken = with_broken
    good_graph = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(GARBAGE)
    served = serve(models)

    unavailable(served, "broken", image, "sha256", "does not match model.json", "refusing")
    others_serve(served, image, expected)

    (broken / "model.onnx").write_bytes(good_graph)
    np.testing.assert_array_equal(served.embed("broken", [image]), expected[name_of(tiny_dinov2_dir)])
    assert served.health("broken") == "SERVING"
    assert served.models()["broken"].state == pb.MODEL_STATE_SERVING


def test_garbage_graph_with_its_own_sha_fails_to_load(
    serve: Callable[..., Served],
    with_broken: tuple[Path, Path],
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    models, broken = with_broken
    (broken / "model.onnx").write_bytes(GARBAGE)
    spec = load_spec(broken / SPEC_FILE)
    write_spec(
        spec.model_copy(update={"onnx_sha256": file_sha256(broken / "model.onnx")}), broken / SPEC_FILE
    )
    served = serve(models)
    # The gate verified another file: the model is listed as not parity-verified.
    assert not served.models()["broken"].info.parity_verified

    unavailable(served, "broken", image, "'broken' failed to load")
    others_serve(served, image, expected)
    unavailable(served, "broken", image, "'broken' failed to load")  # tried again, still refused


def test_graph_of_another_model_is_refused_by_its_output_size(
    serve: Callable[..., Served],
    with_broken: tuple[Path, Path],
    tiny_clip_dir: Path,
    tiny_dinov2_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    models, broken = with_broken
    shutil.copyfile(tiny_clip_dir / "model.onnx", broken / "model.onnx")  # valid graph, 16-d not 32-d
    spec = load_spec(broken / SPEC_FILE)
    write_spec(
        spec.model_copy(update={"onnx_sha256": file_sha256(broken / "model.onnx")}), broken / SPEC_FILE
    )
    served = serve(models)

    dim = load_spec(tiny_dinov2_dir / SPEC_FILE).embedding_dim
    unavailable(served, "broken", image, f"model.json says {dim}")
    others_serve(served, image, expected)


def test_missing_graph_is_listed_unavailable_and_served_once_restored(
    serve: Callable[..., Served],
    with_broken: tuple[Path, Path],
    tiny_dinov2_dir: Path,
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    models, broken = with_broken
    graph = broken / "model.onnx"
    graph.unlink()
    served = serve(models)

    status = served.models()["broken"]
    assert status.state == pb.MODEL_STATE_UNAVAILABLE and "graph file missing" in status.error
    assert status.onnx_bytes == 0
    unavailable(served, "broken", image, "graph file missing")
    others_serve(served, image, expected)

    shutil.copyfile(tiny_dinov2_dir / "model.onnx", graph)
    np.testing.assert_array_equal(served.embed("broken", [image]), expected[name_of(tiny_dinov2_dir)])


def test_graph_deleted_while_serving_only_fails_once_evicted(
    serve: Callable[..., Served],
    with_broken: tuple[Path, Path],
    image: bytes,
    expected: dict[str, np.ndarray],
) -> None:
    models, broken = with_broken
    served = serve(models, max_loaded=1)
    served.embed("broken", [image])
    (broken / "model.onnx").unlink()
    served.embed("broken", [image])  # the resident session does not need the file

    others_serve(served, image, expected)  # evicts `broken`

    unavailable(served, "broken", image, "graph file missing")
