"""The lifecycle as seen by probes: gRPC health per server and per model, and reflection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from embedder.spec import SPEC_FILE, load_spec
from embedder.v1 import embedder_pb2 as pb
from export.images import ParityImage

if TYPE_CHECKING:
    from tests.support.inprocess import Served

SERVICE = "embedder.v1.Embedder"


def names(*model_dirs: Path) -> list[str]:
    return [load_spec(d / SPEC_FILE).name for d in model_dirs]


def test_models_are_not_serving_until_their_lazy_load(
    serve: Callable[..., Served],
    tiny_models: Path,
    tiny_clip_dir: Path,
    tiny_dinov2_dir: Path,
    parity_set: list[ParityImage],
) -> None:
    served = serve(tiny_models)
    clip, dino = names(tiny_clip_dir, tiny_dinov2_dir)
    assert served.health("") == "SERVING"
    assert served.health(SERVICE) == "SERVING"
    assert (served.health(clip), served.health(dino)) == ("NOT_SERVING", "NOT_SERVING")
    assert served.models()[clip].state == pb.MODEL_STATE_AVAILABLE and not served.models()[clip].loaded

    served.embed(clip, [parity_set[0].data])

    assert (served.health(clip), served.health(dino)) == ("SERVING", "NOT_SERVING")
    status = served.models()[clip]
    assert status.state == pb.MODEL_STATE_SERVING and status.loaded and status.load_seconds > 0


def test_unknown_service_name_is_not_found(tiny_server: Served) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        tiny_server.health("no-such-model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_preload_serves_every_available_model_at_start(
    serve: Callable[..., Served], tiny_models: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> None:
    served = serve(tiny_models, preload=True)
    for name in names(tiny_clip_dir, tiny_dinov2_dir):
        assert served.health(name) == "SERVING"
        assert served.models()[name].loaded
        assert served.loads(name) == 1


def test_after_stop_health_fails_or_reports_not_serving(
    serve: Callable[..., Served], tiny_models: Path, tiny_clip_dir: Path, parity_set: list[ParityImage]
) -> None:
    served = serve(tiny_models)
    (clip,) = names(tiny_clip_dir)
    served.embed(clip, [parity_set[0].data])
    assert served.health(clip) == "SERVING"

    served.server.stop(0)

    for service in ("", SERVICE, clip):
        try:
            status = served.health(service)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        else:
            assert status == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as caught:
        served.embed(clip, [parity_set[0].data])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_the_services(tiny_server: Served) -> None:
    database = ProtoReflectionDescriptorDatabase(tiny_server.channel)
    services = set(database.get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    embed = database.FindFileContainingSymbol(SERVICE)
    assert embed.name == "embedder/v1/embedder.proto"
    assert [m.name for m in embed.service[0].method] == ["Embed", "ListModels", "EmbedText"]
