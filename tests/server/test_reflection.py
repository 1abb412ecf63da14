"""Server reflection is reachable without a bearer token (as `grpcurl ADDR list` needs), while
the Embedder calls still require one."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from embedder.client import EmbedderClient
from tests.support.images import encode, picture
from tests.support.inprocess import serving
from tests.support.models import CLIP

TOKEN = "reflection-test-token-1234"
SERVICE = "embedder.v1.Embedder"


def test_reflection_answers_without_a_token_while_embed_requires_one(tiny_models: Path) -> None:
    jpeg = encode(picture(64, 48, 5), "JPEG")
    with serving(tiny_models, auth_tokens=TOKEN) as served:
        # served.channel carries no token at all.
        database = ProtoReflectionDescriptorDatabase(served.channel)
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
            database.get_services()
        )
        described = database.FindFileContainingSymbol(SERVICE)
        assert [m.name for m in described.service[0].method] == ["Embed", "ListModels", "EmbedText"]
        with pytest.raises(grpc.RpcError) as caught:
            served.vectors(jpeg, model=CLIP)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with EmbedderClient(served.address, retries=0, timeout=30.0, token=TOKEN) as client:
            vector = client.embed(CLIP, [jpeg]).embeddings
        assert vector.shape == (1, 16) and np.isfinite(vector).all()
