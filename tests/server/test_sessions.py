"""Session lifecycle through the server: lazy load once, LRU and idle eviction, and a broken graph
that stays its own model's problem."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Broken:
    """Both tiny models and a copy of tiny-dinov2 named `broken`, for a test to break."""

    models: Path
    folder: Path  # models/broken
    image: bytes
    expected: dict[str, np.ndarray]  # each healthy model's vector for `image`

    def replace_graph(self, graph: bytes, *, record_sha256: bool) -> None:
        """`graph` in place of broken's; `record_sha256`: model.json names the new file's sha256,
        so the load gets past the sha check and fails (or not) later."""
        (self.folder / "model.onnx").write_bytes(graph)
        if record_sha256:
            spec = load_spec(self.folder / SPEC_FILE)
            sha256 = file_sha256(self.folder / "model.onnx")
            write_spec(spec.model_copy(update={"onnx_sha256": sha256}), self.folder / SPEC_FILE)

    def refused_alone(self, served: Served, *fragments: str) -> None:
        """`broken` is UNAVAILABLE for the reasons named, and the other models still serve."""
        unavailable(served, "broken", self.image, *fragments)
        self.others_serve(served)

    def others_serve(self, served: Served) -> None:
        for model, vector in self.expected.items():
            np.testing.assert_array_equal(served.embed(model, [self.image]), vector)
            assert served.health(model) == "SERVING"


@pytest.fixture
def broken(
    tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path, image: bytes, expected: dict[str, np.ndarray]
) -> Broken:
    models = make_models_dir(tmp_path / "models", tiny_clip_dir, tiny_dinov2_dir, (tiny_dinov2_dir, "broken"))
    return Broken(models, models / "broken", image, expected)


def unavailable(served: Served, model: str, image: bytes, *fragments: str) -> None:
    error = served.error(pb.EmbedRequest(model=model, images=[pb.Image(data=image)]))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())
    status = served.models()[model]
    assert status.state == pb.MODEL_STATE_UNAVAILABLE and not status.loaded
    assert all(f in status.error for f in fragments), status.error
    assert served.health(model) == "NOT_SERVING"


def test_garbage_graph_with_the_old_sha_is_refused_then_retried_when_fixed(
    serve: Callable[..., Served], broken: Broken, tiny_dinov2_dir: Path
) -> None:
    good_graph = (broken.folder / "model.onnx").read_bytes()
    broken.replace_graph(GARBAGE, record_sha256=False)
    served = serve(broken.models)

    broken.refused_alone(served, "sha256", "does not match model.json", "refusing")

    broken.replace_graph(good_graph, record_sha256=False)
    np.testing.assert_array_equal(
        served.embed("broken", [broken.image]), broken.expected[name_of(tiny_dinov2_dir)]
    )
    assert served.health("broken") == "SERVING"
    assert served.models()["broken"].state == pb.MODEL_STATE_SERVING


def test_garbage_graph_with_its_own_sha_fails_to_load(serve: Callable[..., Served], broken: Broken) -> None:
    broken.replace_graph(GARBAGE, record_sha256=True)
    served = serve(broken.models)
    # The gate verified another file: the model is listed as not parity-verified.
    assert not served.models()["broken"].info.parity_verified

    broken.refused_alone(served, "'broken' failed to load")
    unavailable(served, "broken", broken.image, "'broken' failed to load")  # tried again, still refused


def test_graph_of_another_model_is_refused_by_its_output_size(
    serve: Callable[..., Served], broken: Broken, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> None:
    broken.replace_graph(
        (tiny_clip_dir / "model.onnx").read_bytes(), record_sha256=True
    )  # valid, 16-d not 32-d
    served = serve(broken.models)

    dim = load_spec(tiny_dinov2_dir / SPEC_FILE).embedding_dim
    broken.refused_alone(served, f"model.json says {dim}")


def test_missing_graph_is_listed_unavailable_and_served_once_restored(
    serve: Callable[..., Served], broken: Broken, tiny_dinov2_dir: Path
) -> None:
    graph = broken.folder / "model.onnx"
    graph.unlink()
    served = serve(broken.models)

    status = served.models()["broken"]
    assert status.state == pb.MODEL_STATE_UNAVAILABLE and "graph file missing" in status.error
    assert status.onnx_bytes == 0
    broken.refused_alone(served, "graph file missing")

    shutil.copyfile(tiny_dinov2_dir / "model.onnx", graph)
    np.testing.assert_array_equal(
        served.embed("broken", [broken.image]), broken.expected[name_of(tiny_dinov2_dir)]
    )


def test_graph_deleted_while_serving_only_fails_once_evicted(
    serve: Callable[..., Served], broken: Broken
) -> None:
    served = serve(broken.models, max_loaded=1)
    served.embed("broken", [broken.image])
    (broken.folder / "model.onnx").unlink()
    served.embed("broken", [broken.image])  # the resident session does not need the file

    broken.others_serve(served)  # evicts `broken`

    unavailable(served, "broken", broken.image, "graph file missing")
